"""The staged tiny VLM on the synthetic world: text pretraining of the language model and vision pretraining
of the tower → alignment → instruction tuning.

`config.py` holds `StackConfig` and each stage's part of it; `stack.py` the stages (cached through
`segcompass.stages`); `pool.py` the scenes with their token-grid labels; `text.py` stage 0; `labels.py` and
`vision.py` stage 1's objectives; `dialogue.py` and `language.py` the multi-turn data and the language
stages; `evaluate.py` and `probe.py` the held-out figures; `command.py` `segcompass pretrain`. Results:
`results/warmup.md`.
"""

from .config import StackConfig
from .stack import ALIGN, INSTRUCT, TEXT, VISION, build_stack, stack_folder

__all__ = ["ALIGN", "INSTRUCT", "TEXT", "VISION", "StackConfig", "build_stack", "stack_folder"]
