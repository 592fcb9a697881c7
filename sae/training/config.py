"""Configuration of an SAE training run (`segcompass-sae train`); every field is a documented CLI flag.

Defaults are the paper's SAE (docs/design.md §4): a standard ReLU SAE with 65536 atoms, per-token summed squared
error + 5 · Σ_j h_j·‖W_dec,j‖₂, AdamW 5e-5 with 3 % linear warm-up and cosine decay to 0.1×, gradient
clipping at 1.0 (sae-lens's trainer clips at 1.0) and a 5 % document-level validation split.

Fields left at `None` take their value from the `preset`: `paper` (the defaults above, fitted to 7B residual
norms) or `tiny` (tiny backbones: sae-lens's `expected_average_only_in` normalisation, which rescales the
activations to mean norm √d_in during training and folds the factor back into the weights at the end, a
coefficient fitted to that scale, a width and learning rate for runs of minutes). This module imports
neither torch nor sae-lens, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Architecture = Literal["standard", "topk", "batchtopk", "jumprelu"]
NORMALIZATIONS = ("none", "expected_average_only_in", "layer_norm")

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "d_sae": 65536,
        "l1_coefficient": 5.0,
        "lr": 5e-5,
        "batch_size": 4096,
        "normalize_activations": "none",
    },
    "tiny": {
        "d_sae": 2048,
        "l1_coefficient": 2.0,
        "lr": 3e-3,
        "batch_size": 1024,
        "normalize_activations": "expected_average_only_in",
    },
}
"""Values of the `None`-defaulted fields per preset."""

# Fields that do not change what is trained: they are left out of the run's fingerprint, so a run may be
# resumed with other values of them.
_NOT_IN_FINGERPRINT = frozenset(
    {
        "store",
        "out",
        "resume",
        "progress",
        "log_every",
        "checkpoint_every_tokens",
        "keep_checkpoints",
        "keep_final_checkpoints",
        "ev_collapse_threshold",
        "num_threads",
        "wandb",
        "wandb_project",
        "val_max_tokens",
        "device",
        "dist_backend",
    }
)


@dataclass
class TrainConfig:
    """Train a sparse autoencoder on an activation store through sae-lens (resumable, DDP under torchrun)."""

    store: str = ""
    """Activation store folder (written by `segcompass-sae capture`)."""
    out: str = ""
    """Output folder: the final SAE (sae-lens `cfg.json` + `sae_weights.safetensors`), `segcompass_sae.json`
    (backbone, hook layer, store, token-type statistics, validation metrics) and `checkpoints/`."""
    preset: Literal["paper", "tiny"] = "paper"
    """Defaults for the fields left unset: `paper` (7B backbones) or `tiny` (tiny backbones, small norms)."""

    # ---- architecture (sae-lens's own training SAEs) -------------------------------------------------
    architecture: Architecture = "standard"
    """sae-lens architecture: standard (ReLU + decoder-norm-weighted L1), topk, batchtopk or jumprelu."""
    d_sae: int | None = None
    """Number of atoms (paper preset 65536, tiny 2048)."""
    d_in: int | None = None
    """Expected input width; an error if the store's differs (None: take the store's)."""
    l1_coefficient: float | None = None
    """standard: coefficient of Σ_j h_j·‖W_dec,j‖₂ (paper 5.0, which fits 7B residual norms; tiny 2.0 on activations normalised to mean norm √d_in)."""
    l1_warm_up_fraction: float = 0.0
    """standard: fraction of the steps over which the L1 coefficient ramps up linearly from 0."""
    k: float = 64.0
    """topk / batchtopk: active atoms per token (batchtopk: on average over the batch)."""
    sparse_topk: bool = True
    """topk: train with SegCompass's sparse TopK kernels (embedding-bag decoder, index-add encoder backward;
    same maths as sae-lens's dense TopK, O(T·k·d) instead of O(T·d_sae·d) after the encoder)."""
    sparse_chunk_elements: int = 1 << 24
    """topk with sparse_topk: rows are processed in chunks so that a temporary holds at most this many
    floats (bounds the memory of the encoder forward and of the sparse encoder backward)."""
    jumprelu_init_threshold: float = 0.01
    """jumprelu: initial threshold."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: bandwidth of the straight-through estimator."""
    l0_coefficient: float = 1.0
    """jumprelu: coefficient of the L0 sparsity loss."""
    normalize_activations: str | None = None
    """sae-lens activation normalisation: none, expected_average_only_in (scale to mean norm √d_in during
    training, folded into the saved weights at the end) or layer_norm (paper: none; tiny:
    expected_average_only_in)."""
    apply_b_dec_to_input: bool = False
    """Subtract b_dec from the input before encoding (the paper's SAE does not)."""
    decoder_init_norm: float | None = 0.1
    """Initial norm of each decoder row (sae-lens's heuristic initialisation; None: kaiming only)."""

    # ---- optimisation (sae-lens's trainer and scheduler) ---------------------------------------------
    lr: float | None = None
    """Peak learning rate (paper 5e-5; tiny 3e-3)."""
    lr_warm_up_fraction: float = 0.03
    """Fraction of the steps with a linear learning-rate warm-up."""
    lr_end_fraction: float = 0.1
    """The cosine schedule ends at this multiple of the peak learning rate."""
    lr_scheduler: Literal["cosineannealing", "constant"] = "cosineannealing"
    """Schedule after the warm-up (sae-lens's names)."""
    adam_beta1: float = 0.9
    """Adam β1."""
    adam_beta2: float = 0.999
    """Adam β2."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (0: Adam, as sae-lens; identical to AdamW without decay)."""
    fused_optimizer: bool = True
    """Run Adam/AdamW through torch's fused kernel (same update as sae-lens's Adam, several times faster
    on CPU); False keeps sae-lens's own optimizer object."""
    batch_size: int | None = None
    """Tokens per optimisation step over all processes (paper preset 4096; tiny 1024)."""
    total_tokens: int | None = None
    """Training tokens (None: `epochs` passes over the training split)."""
    epochs: float = 1.0
    """Passes over the training split when `total_tokens` is not given."""
    dead_feature_window: int = 1000
    """Steps without firing after which sae-lens counts an atom as dead."""
    feature_sampling_window: int = 2000
    """Steps per sae-lens feature-sparsity window."""

    # ---- data --------------------------------------------------------------------------------------
    token_types: list[str] | None = None
    """Train only on these token types (image, instruction, special, cot, concentration, response);
    None: all."""
    val_fraction: float = 0.05
    """Documents held out for validation (deterministic hash of the document id)."""
    data_slices: int = 0
    """Store slices streamed in parallel, each step taking batch_size/data_slices rows from each; must be a
    multiple of the number of processes (0: the number of processes). Equal values give the same data
    order, so a 1-process run with data_slices=2 reproduces a 2-process run."""
    seed: int = 0
    """Seed of the initialisation and of the data order."""

    # ---- numerics / devices --------------------------------------------------------------------------
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the SAE parameters."""
    autocast: bool = False
    """bf16 autocast of the forward/backward (sae-lens's option)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available; under torchrun each rank takes its local GPU)."""
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend under torchrun (auto: nccl on GPU, gloo on CPU)."""
    num_threads: int = 0
    """CPU threads for torch (0: torch's default)."""

    # ---- checkpoints, logging ------------------------------------------------------------------------
    checkpoint_every_tokens: int = 0
    """Write a resumable checkpoint every this many tokens (0: about every tenth of the run)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep while the run goes (older ones are deleted once a newer one
    is complete)."""
    keep_final_checkpoints: bool = False
    """Keep the resume checkpoints once the run has finished and the SAE is saved (default: delete them —
    with the optimiser state they are several GB at 65536 × 3584; the saved SAE does not need them)."""
    resume: bool = False
    """Continue from the newest checkpoint in `out` (refused if it was written by another configuration)."""
    val_max_tokens: int = 1_000_000
    """Validation tokens evaluated at the end (0: skip the validation evaluation)."""
    l0_collapse_threshold: float = 1.0
    """standard / jumprelu: warn when the L0 of a logged batch falls below this after the warm-up."""
    ev_collapse_threshold: float = 0.05
    """Any architecture: warn when the explained variance of logged batches is at or below this — 3 logged
    batches in a row once 10 % of the steps (and the warm-up) are done, or the last batch; catches a
    coefficient too strong for the activation norms long before L0 falls below 1 (-inf: off)."""
    log_every: int = 20
    """Steps between progress-bar metric updates (loss, L0, explained variance)."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""
    wandb: bool = False
    """Log to Weights & Biases (off unless asked)."""
    wandb_project: str = "segcompass-sae"
    """W&B project when `wandb` is on."""

    extra: dict[str, Any] = field(default_factory=dict, metadata={"cmd": False})
    """Extra fields of sae-lens's SAE or trainer config, passed through unchanged (Python API only)."""

    # ------------------------------------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """A copy with the preset's values filled in and everything validated."""
        preset = PRESETS[self.preset]
        cfg = replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})
        for f in fields(cfg):  # 6 and 6.0 must give one fingerprint (the CLI parses floats)
            value = getattr(cfg, f.name)
            if "float" in str(f.type) and isinstance(value, int) and not isinstance(value, bool):
                setattr(cfg, f.name, float(value))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError on values that cannot work (checked before anything is written)."""
        if self.d_sae is not None and self.d_sae < 1:
            raise ValueError(f"d_sae must be positive, got {self.d_sae}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.lr_warm_up_fraction < 1.0:
            raise ValueError(f"lr_warm_up_fraction must be in [0, 1), got {self.lr_warm_up_fraction}")
        if not 0.0 < self.lr_end_fraction <= 1.0:
            raise ValueError(f"lr_end_fraction must be in (0, 1], got {self.lr_end_fraction}")
        if self.token_types is not None and len(self.token_types) == 0:
            raise ValueError("token_types is empty: name at least one token type, or leave it unset for all")
        if self.architecture in ("topk", "batchtopk") and self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")
        if self.architecture == "topk" and self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} exceeds d_sae={self.d_sae}")
        if self.total_tokens is not None and self.total_tokens < 1:
            raise ValueError(f"total_tokens must be positive, got {self.total_tokens}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.normalize_activations is not None and self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations must be one of {NORMALIZATIONS}, got {self.normalize_activations!r}"
            )
        if self.data_slices < 0:
            raise ValueError(f"data_slices must be >= 0, got {self.data_slices}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def result_fields(self) -> dict[str, Any]:
        """The fields that determine the trained weights (those in the fingerprint)."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_FINGERPRINT}


def fingerprint(cfg: TrainConfig, **context: Any) -> str:
    """sha256 (16 hex) of the result-determining fields of a resolved config plus `context` (store id,
    d_in, data slices): a checkpoint is only resumed by a run with the same fingerprint."""
    blob = json.dumps({"config": cfg.result_fields(), **context}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`name: old -> new` for every key whose value differs."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def run_train_command(cfg: TrainConfig) -> None:
    """`segcompass-sae train`: train, then print where the SAE is and its validation metrics."""
    from .trainer import train_sae

    result = train_sae(cfg)
    if result.metadata:
        print(f"saved SAE to {result.out} ({result.tokens} tokens, {result.steps} steps)")
        if result.validation is not None:
            print(result.validation.to_string(index=False))
