"""Typed configuration: nested dataclasses are the schema, YAML files are overlays.

`load_config("configs/debug.yaml", ["trainer.max_epochs=2"])` merges, in order, the schema
defaults, the YAML file and dotted command-line overrides. An unknown key or a value of
the wrong type raises `ConfigError` naming the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message is one readable line."""


@dataclass
class CheckpointConfig:
    every_n_steps: Optional[int] = None
    """Save every N optimizer steps (None: only at epoch ends, if `every_epoch`)."""
    every_epoch: bool = True
    """Save at the end of every epoch."""
    keep_last: int = 2
    """How many of the newest checkpoints to keep (0 keeps none beyond the best)."""
    keep_best: int = 1
    """How many of the best checkpoints by `monitor` to keep."""
    monitor: str = "val/loss"
    """Metric that ranks checkpoints for `keep_best` (a key of the validation results)."""
    mode: str = "min"
    """`min` or `max`: which direction of `monitor` is better."""


@dataclass
class TrainerConfig:
    output_dir: str = "runs/default"
    """Folder for checkpoints, metrics.jsonl, the resolved config and samples."""
    max_epochs: Optional[int] = 1
    """Stop after this many epochs (None: only `max_steps` limits)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (None: only `max_epochs` limits)."""
    mixed_precision: str = "no"
    """`no`, `bf16` (CPU autocast or CUDA) or `fp16` (CUDA only, with a grad scaler)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    grad_clip_norm: Optional[float] = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    seed: int = 0
    """Seeds model initialisation, data order and every rank's RNG."""
    log_every_n_steps: int = 10
    """Log training scalars every N optimizer steps."""
    val_every_n_epochs: int = 1
    """Validate at the end of every N epochs (0: never at epoch ends)."""
    val_every_n_steps: Optional[int] = None
    """Also validate every N optimizer steps."""
    num_workers: int = 0
    """Data-loading worker processes per rank."""
    progress_bar: bool = True
    """Show a tqdm bar on the main process."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint policy."""


@dataclass
class SynthConfig:
    train: int = 512
    """Number of training sequences to generate."""
    val: int = 64
    """Number of validation sequences."""
    test: int = 64
    """Number of test sequences."""
    seed: int = 0
    """Generator seed: sample i of a split is a function of (seed, split, i)."""
    num_frames: int = 20
    """Frames per sequence."""
    image_size: int = 64
    """Canvas height and width in pixels."""
    num_digits: int = 2
    """Digits per sequence."""
    digits: Optional[str] = None
    """MNIST `train-images-idx3-ubyte(.gz)` to take digits from (None: Pillow glyphs)."""


@dataclass
class DataConfig:
    root: str = "data/moving-digits"
    """Dataset folder holding one sub-folder of shards (+ index.json) per split."""
    train_split: str = "train"
    """Split used by `train`."""
    val_split: str = "val"
    """Split used for validation during `train` and by `validate`."""
    test_split: str = "test"
    """Split used by `predict`."""
    batch_size: int = 8
    """Micro-batch size per process."""
    eval_batch_size: Optional[int] = None
    """Batch size per process for validation/predict (None: `batch_size`)."""
    num_input_frames: int = 10
    """Frames the model sees (T_in), taken from the start of each sequence."""
    num_output_frames: int = 10
    """Frames the model predicts (T_out), following the inputs."""
    shuffle_buffer: int = 256
    """Samples held in the training shuffle buffer per worker."""
    skip_bad_samples: bool = False
    """Skip unreadable samples / truncated shards (counted, reported) instead of failing."""
    url_template: Optional[str] = None
    """Shard location per split, e.g. `pipe:aws s3 cp s3://bucket/ds/{split}/{name} -`
    (None: the local folder `root/<split>/`); index.json is always read from `root`."""
    synthesize: Optional[SynthConfig] = None
    """Generate synthetic moving digits into `root` when it holds no dataset."""


@dataclass
class ModelConfig:
    name: str = "convlstm"
    """Backbone name from the registry (`stpdist.models.available()`)."""
    backbone: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the backbone."""
    patch_size: int = 1
    """Fold p×p pixel patches into channels before the backbone (H, W divisible by p)."""
    loss: str = "mse"
    """`mse`, `l1` or `mse+l1`."""
    optimizer: str = "adam"
    """`adam` or `adamw`."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay of the optimizer."""
    lr_schedule: str = "none"
    """`none`, `onecycle` or `cosine` (with `warmup_steps`), stepped per optimizer step."""
    warmup_steps: int = 0
    """Linear warm-up steps of the cosine schedule."""
    total_steps: Optional[int] = None
    """Schedule length in optimizer steps (None: taken from the trainer's plan)."""
    clamp_output: bool = True
    """Clamp predictions to [0, 1], the data range after scaling."""
    scheduled_sampling: str = "none"
    """`none`, `linear` (OpenSTL) or `reverse` (PredRNN.V2), for frame-recurrent backbones."""
    sampling_start: float = 1.0
    """linear: probability of a true output frame at step 0."""
    sampling_decay: float = 2e-5
    """linear: decrease of that probability per optimizer step."""
    sampling_stop_step: int = 50_000
    """linear: from this step on, only the model's own predictions are fed back."""
    reverse_sampling_steps: List[int] = field(default_factory=lambda: [25_000, 50_000])
    """reverse: the two steps between which the schedules move."""
    reverse_sampling_alpha: float = 5_000.0
    """reverse: time constant (steps) of the input-frame schedule's rise."""
    metric_thresholds: List[float] = field(default_factory=list)
    """Thresholds in physical (stored) units for CSI/POD/FAR/HSS (e.g. [20, 30, 40] dBZ)."""
    aux_loss_weight: float = 0.1
    """Weight of a backbone's auxiliary loss (PredRNN.V2's decoupling loss, β)."""


@dataclass
class WandbConfig:
    mode: str = "disabled"
    """`online`, `offline` or `disabled`."""
    project: str = "stpdist"
    """wandb project."""
    entity: Optional[str] = None
    """wandb entity (team or user)."""
    name: Optional[str] = None
    """Run name."""
    tags: List[str] = field(default_factory=list)
    """Run tags."""
    log_every_n_steps: Optional[int] = None
    """Send training scalars to wandb every N steps (None: whenever they are logged)."""


@dataclass
class LoggingConfig:
    num_samples: int = 4
    """Validation samples rendered as pictures at each validation (the same keys each time);
    0 renders none."""
    colormap: Optional[str] = None
    """matplotlib colormap for sample pictures (e.g. "viridis" for radar or flows; None:
    gray, or RGB for 3 channels)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases settings."""


@dataclass
class Config:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_CHOICES = {
    "trainer.mixed_precision": ("no", "bf16", "fp16"),
    "trainer.checkpoint.mode": ("min", "max"),
    "model.loss": ("mse", "l1", "mse+l1"),
    "model.optimizer": ("adam", "adamw"),
    "model.lr_schedule": ("none", "onecycle", "cosine"),
    "model.scheduled_sampling": ("none", "linear", "reverse"),
    "logging.wandb.mode": ("online", "offline", "disabled"),
}
_POSITIVE = ("data.batch_size", "trainer.gradient_accumulation_steps", "trainer.log_every_n_steps")


def _valid_keys(schema: DictConfig, full_key: str) -> list[str]:
    """Keys valid beside `full_key` (the fields of its parent section)."""
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _error(schema: DictConfig, exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    first_line = str(exc).splitlines()[0]
    if "not in" in first_line or "Missing key" in first_line:
        valid = ", ".join(_valid_keys(schema, key))
        return ConfigError(f"{origin}: unknown key '{key}'; valid keys there: {valid}")
    return ConfigError(f"{origin}: bad value for '{key}': {first_line}")


def _check_values(cfg: Config) -> None:
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value not in choices:
            raise ConfigError(f"'{key}' is {value!r}; expected one of {', '.join(choices)}")
    for key in _POSITIVE:
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value < 1:
            raise ConfigError(f"'{key}' is {value}; expected a positive integer")
    if cfg.trainer.max_epochs is None and cfg.trainer.max_steps is None:
        raise ConfigError("set 'trainer.max_epochs' or 'trainer.max_steps' (both are None)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Schema defaults ← YAML file at `path` ← dotted `overrides` (`a.b=value`)."""
    schema = OmegaConf.structured(Config)
    merged = schema
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            overlay = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
        if overlay is None or not isinstance(overlay, DictConfig):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        try:
            merged = OmegaConf.merge(merged, overlay)
        except OmegaConfBaseException as exc:
            raise _error(schema, exc, str(path)) from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _error(schema, exc, f"override {item!r}") from exc
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _error(schema, exc, "config") from exc
    _check_values(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved beside every run and in every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts."""
    return dataclasses.asdict(cfg)
