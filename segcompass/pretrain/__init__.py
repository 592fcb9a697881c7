"""The staged tiny VLM: vision pretraining → alignment → instruction tuning on the synthetic world.

`stack.py` holds the stages (cached through `segcompass.stages`) and `StackConfig`; `pool.py` the scenes with
their token-grid labels; `labels.py` and `vision.py` stage 1's objectives; `dialogue.py` and `language.py`
the multi-turn data and the language stages; `evaluate.py` and `probe.py` the held-out figures; `command.py`
`segcompass pretrain`. Results: `results/warmup.md`.
"""

from .stack import ALIGN, INSTRUCT, VISION, StackConfig, build_stack, stack_folder

__all__ = ["ALIGN", "INSTRUCT", "VISION", "StackConfig", "build_stack", "stack_folder"]
