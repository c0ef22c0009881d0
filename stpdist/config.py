"""Typed configuration: nested dataclasses are the schema, YAML files are overlays.

`load_config("configs/debug.yaml", ["trainer.max_epochs=2"])` merges, in order, the schema
defaults, the YAML file and dotted command-line overrides. An unknown key, a value of the
wrong type or outside its field's declared check raises `ConfigError` naming the key and
what is valid. Each section is handed whole to the object that uses it: `trainer` to the
Trainer, `trainer.checkpoint` to the CheckpointManager, `model` to the Forecaster,
`logging` to the Tracker, `data` to the streams.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional  # noqa: UP035 - OmegaConf reads these

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import InputError


class ConfigError(InputError):
    """A configuration that does not match the schema; the message is one readable line."""


def _positive(value: Any) -> str | None:
    return None if value is None or value >= 1 else "a positive integer"


def _non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "a value ≥ 0"


def _positive_number(value: Any) -> str | None:
    ok = value is None or (math.isfinite(value) and value > 0)
    return None if ok else "a positive finite number"


def _probability(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "a probability in [0, 1]"


def _not_empty(value: Any) -> str | None:
    return None if value else "a non-empty value"


def _colormap(value: Any) -> str | None:
    if value is None:
        return None
    import matplotlib

    return None if value in matplotlib.colormaps else "a matplotlib colormap (e.g. viridis)"


def checked(default: Any, rule: Callable[[Any], str | None]) -> Any:
    """A field with a default and a value check, run by `load_config` (`check_values`)."""
    return field(default=default, metadata={"check": rule})


@dataclass
class CheckpointConfig:
    every_n_steps: Optional[int] = checked(None, _positive)
    """Save every N optimizer steps (None: only at epoch ends, if `every_epoch`)."""
    every_epoch: bool = True
    """Save at the end of every epoch."""
    keep_last: int = checked(2, _positive)
    """How many of the newest checkpoints to keep (at least 1, so a run can resume)."""
    keep_best: int = checked(1, _non_negative)
    """How many of the best checkpoints by `monitor` to keep."""
    monitor: str = checked("val/loss", _not_empty)
    """Metric that ranks checkpoints for `keep_best` (a key of the validation results)."""
    mode: Literal["min", "max"] = "min"
    """Which direction of `monitor` is better."""


@dataclass
class TrainerConfig:
    output_dir: str = checked("runs/default", _not_empty)
    """Folder for checkpoints, metrics.jsonl, the resolved config and samples."""
    max_epochs: Optional[int] = checked(1, _positive)
    """Stop after this many epochs (None: only `max_steps` limits)."""
    max_steps: Optional[int] = checked(None, _positive)
    """Stop after this many optimizer steps (None: only `max_epochs` limits)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """`no`, `bf16` (CPU autocast or CUDA) or `fp16` (CUDA only, with a grad scaler)."""
    gradient_accumulation_steps: int = checked(1, _positive)
    """Micro-batches per optimizer step."""
    grad_clip_norm: Optional[float] = checked(None, _positive_number)
    """Clip the global gradient norm to this value (None: no clipping)."""
    seed: int = 0
    """Seeds model initialisation, data order and every rank's RNG."""
    log_every_n_steps: int = checked(10, _positive)
    """Log training scalars every N optimizer steps."""
    val_every_n_epochs: int = checked(1, _non_negative)
    """Validate at the end of every N epochs (0: never at epoch ends)."""
    val_every_n_steps: Optional[int] = checked(None, _positive)
    """Also validate every N optimizer steps."""
    num_workers: int = checked(0, _non_negative)
    """Data-loading worker processes per rank."""
    num_threads: Optional[int] = checked(None, _positive)
    """Intra-op CPU threads per rank (None: `OMP_NUM_THREADS` when set, else the CPUs this
    process may use — `SLURM_CPUS_PER_TASK` or its affinity — divided among the node's
    ranks, so ranks never oversubscribe cores)."""
    compile: bool = False
    """`torch.compile` for training. A Forecaster compiles its backbone region by region
    (one recurrent cell step, compiled once and reused for every frame); scheduled
    sampling stays outside the compiled code, so it causes no recompiles."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """torch.compile's mode (`reduce-overhead`: CUDA graphs, for static shapes on a GPU)."""
    activation_checkpointing: bool = False
    """Recompute each recurrent step's activations in the backward instead of keeping
    all of them: less memory for long sequences and wide cells, more compute."""
    progress_bar: bool = True
    """Show a tqdm bar on the main process."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint policy."""


@dataclass
class SynthConfig:
    root: Optional[str] = None
    """The folder this synthesis is for: digits are generated only when `data.root` is this
    folder (or on `stpdist train --synthesize`), so a mistyped root is an error, not a run on
    fake data."""
    train: int = checked(512, _positive)
    """Number of training sequences to generate."""
    val: int = checked(64, _non_negative)
    """Number of validation sequences."""
    test: int = checked(64, _non_negative)
    """Number of test sequences."""
    seed: int = 0
    """Generator seed: sample i of a split is a function of (seed, split, i)."""
    num_frames: int = checked(20, _positive)
    """Frames per sequence."""
    image_size: int = checked(64, _positive)
    """Canvas height and width in pixels."""
    num_digits: int = checked(2, _positive)
    """Digits per sequence."""
    digit_size: int = checked(28, _positive)
    """Glyph height and width in pixels (MNIST's 28; smaller on a small canvas lets the
    digits move: the step per frame is 0.1 × (image_size − digit_size))."""
    digits: Optional[str] = None
    """MNIST `train-images-idx3-ubyte(.gz)` to take digits from (None: Pillow glyphs)."""


@dataclass
class DataConfig:
    root: str = checked("data/moving-digits", _not_empty)
    """Dataset folder holding one sub-folder of shards (+ index.json) per split."""
    train_split: str = checked("train", _not_empty)
    """Split used by `train`."""
    val_split: str = checked("val", _not_empty)
    """Split used for validation during `train` and by `validate`."""
    test_split: str = checked("test", _not_empty)
    """Split used by `predict`."""
    batch_size: int = checked(8, _positive)
    """Micro-batch size per process."""
    eval_batch_size: Optional[int] = checked(None, _positive)
    """Batch size per process for validation/predict (None: `batch_size`)."""
    num_input_frames: int = checked(10, _positive)
    """Frames the model sees (T_in), taken from the start of each sequence."""
    num_output_frames: int = checked(10, _positive)
    """Frames the model predicts (T_out), following the inputs."""
    shuffle_buffer: int = checked(256, _positive)
    """Samples held in the training shuffle buffer per worker."""
    normalize: Literal["scale", "none", "standardize", "minmax"] = "scale"
    """What the model sees, per variable (channel), from the training index's statistics,
    applied on the device: `scale`, frames / value_scale (in [0, 1]); `none`, physical
    (stored) units; `standardize`, (x − mean) / std; `minmax`, (x − min) / (max − min).
    Metrics stay in data units; `predict` writes physical units unless `scale`."""
    skip_bad_samples: bool = False
    """Skip unreadable samples / truncated shards (counted, reported) instead of failing."""
    url_template: Optional[str] = None
    """Shard location per split, e.g. `pipe:aws s3 cp s3://bucket/ds/{split}/{name} -`
    (None: the local folder `root/<split>/`); index.json is always read from `root`."""
    synthesize: Optional[SynthConfig] = None
    """Generate synthetic moving digits into `root` when it holds no dataset."""
    train_source: Literal["shards", "moving_digits"] = "shards"
    """Where training batches come from: `shards`, the `train_split` shards; `moving_digits`,
    fresh moving-digit sequences every epoch (OpenSTL's Moving MNIST training), drawn with
    `synthesize`'s settings (`train` sequences per epoch, seed, size, MNIST `digits` file);
    validation and test still read shards."""


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw"] = "adam"
    """The optimizer."""
    lr: float = checked(1e-3, _positive_number)
    """Peak learning rate."""
    weight_decay: float = checked(0.0, _non_negative)
    """Weight decay."""


@dataclass
class ScheduleConfig:
    name: Literal["none", "onecycle", "cosine"] = "none"
    """Learning-rate schedule, stepped per optimizer step (cosine: after `warmup_steps`)."""
    interval: Literal["step", "epoch"] = "step"
    """What the schedule counts: optimizer steps, or epochs (cosine only; OpenSTL's TaxiBJ
    recipe: per epoch, 5 warm-up epochs). With `epoch`, `warmup_steps` and `total_steps`
    count epochs and `total_steps` is required."""
    warmup_steps: int = checked(0, _non_negative)
    """Linear warm-up steps (epochs with `interval: epoch`) of the cosine schedule."""
    total_steps: Optional[int] = checked(None, _positive)
    """Schedule length in optimizer steps, or epochs with `interval: epoch` (None: the
    trainer's planned steps)."""
    min_lr: float = checked(0.0, _non_negative)
    """Learning rate the cosine schedule ends at (OpenSTL's TaxiBJ recipe: 1e-6)."""


@dataclass
class SamplingConfig:
    mode: Literal["none", "linear", "reverse"] = "none"
    """Scheduled sampling of frame-recurrent backbones: `linear` (OpenSTL) or `reverse`
    (PredRNN.V2)."""
    start: float = checked(1.0, _probability)
    """linear: probability of a true output frame at step 0."""
    decay: float = checked(2e-5, _non_negative)
    """linear: decrease of that probability per optimizer step."""
    stop_step: int = checked(50_000, _non_negative)
    """linear: from this step on, only the model's own predictions are fed back."""
    reverse_steps: List[int] = field(default_factory=lambda: [25_000, 50_000])
    """reverse: the two steps between which the schedules move."""
    reverse_alpha: float = checked(5_000.0, _positive_number)
    """reverse: time constant (steps) of the input-frame schedule's rise."""


@dataclass
class EvaluationConfig:
    clamp_output: bool = True
    """Clamp predictions to [0, 1], the data range after scaling (outside training)."""
    metric_thresholds: List[float] = field(default_factory=list)
    """Thresholds in physical (stored) units for CSI/POD/FAR/HSS (e.g. [20, 30, 40] dBZ)."""
    csi_pool_sizes: List[int] = field(default_factory=list)
    """Neighbourhoods (p×p, max-pooled) for pooled CSI at the thresholds, and CSI-M (the mean
    over thresholds) per size (SEVIR: [4, 16]); CSI-M itself is reported with thresholds."""
    fss_sizes: List[int] = field(default_factory=list)
    """Window sizes n (n×n pixels) of the fractions skill score at the thresholds."""
    lpips_weights: Optional[str] = None
    """AlexNet weights for the `lpips` column: a torchvision `alexnet` state dict file (.pth,
    e.g. the IMAGENET1K_V1 alexnet-owt-7be5be79.pth you downloaded); None: no LPIPS. Needs
    the `lpips` extra and frames of at least 31×31; a missing file fails at model build."""


@dataclass
class ModelConfig:
    name: str = "convlstm"
    """Backbone name from the registry (`stpdist.models.available()`), or an import path
    `package.module:Class` of your own backbone or of a whole `EnhancedModule` task."""
    backbone: Dict[str, Any] = field(default_factory=dict)
    """The backbone's arguments: the fields of its `Args` dataclass, checked by name and type."""
    patch_size: int = checked(1, _positive)
    """Fold p×p pixel patches into channels before the backbone (H, W divisible by p)."""
    loss: Literal["mse", "l1", "mse+l1"] = "mse"
    """Training loss on the frames `loss_frames` names."""
    loss_frames: Literal["outputs", "all"] = "outputs"
    """Frames the training loss covers: `outputs`, the T_out predicted frames; `all`, every
    next-frame prediction of a frame-recurrent backbone (frames 1..T_in+T_out−1 from frames
    0..T_in+T_out−2), OpenSTL's objective for ConvLSTM, the PredRNN family, MIM, E3D-LSTM,
    MAU. `all` with a backbone that does not predict frame by frame is an error."""
    divergence_weight: float = checked(0.0, _non_negative)
    """α of TAU's differential divergence regulariser added to the loss (TAU's recipe: 0.1;
    0: off); logged as `train/divergence`."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimisation."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Scheduled sampling."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Output clamping and metrics."""


@dataclass
class WandbConfig:
    mode: Literal["online", "offline"] = "offline"
    """`online`, or `offline` (a local run folder; `wandb sync` uploads it later)."""
    project: str = "stpdist"
    """wandb project."""
    entity: Optional[str] = None
    """wandb entity (team or user)."""
    name: Optional[str] = None
    """Run name."""
    tags: List[str] = field(default_factory=list)
    """Run tags."""


@dataclass
class LoggingConfig:
    trackers: List[Literal["wandb", "tensorboard"]] = field(default_factory=list)
    """Experiment trackers fed through accelerate (metrics.jsonl is always written)."""
    trackers_every_n_steps: Optional[int] = checked(None, _positive)
    """Send training scalars to the trackers every N steps (None: whenever logged)."""
    num_samples: int = checked(4, _non_negative)
    """Validation samples rendered as pictures at each validation (the same keys each time);
    0 renders none."""
    colormap: Optional[str] = checked(None, _colormap)
    """matplotlib colormap for sample pictures (e.g. "viridis" for radar or flows; None:
    gray, or RGB for 3 channels)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases settings (used when `trackers` holds wandb)."""


@dataclass
class Config:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


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


def _yaml_error(origin: str, exc: Exception) -> ConfigError:
    """One line naming the origin and, when YAML knows it, the line and column."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError(f"{origin}: not valid YAML{where}: {problem}")


def check_values(section: Any, prefix: str = "") -> None:
    """Run every field's declared check, depth first; the first failure is a ConfigError
    naming the key, its value and what was expected."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{prefix}{f.name}"
        rule = f.metadata.get("check")
        problem = rule(value) if rule is not None else None
        if problem:
            raise ConfigError(f"'{key}' is {value!r}; expected {problem}")
        if dataclasses.is_dataclass(value):
            check_values(value, key + ".")


def _check_config(cfg: Config) -> None:
    check_values(cfg)
    if cfg.trainer.max_epochs is None and cfg.trainer.max_steps is None:
        raise ConfigError("set 'trainer.max_epochs' or 'trainer.max_steps' (both are None)")
    if cfg.data.train_source == "moving_digits" and cfg.data.synthesize is None:
        raise ConfigError(
            "'data.train_source' is moving_digits; set 'data.synthesize' (its generator "
            "settings: train sequences per epoch, seed, image_size, digits)"
        )
    steps = list(cfg.model.sampling.reverse_steps)
    if len(steps) != 2 or not 0 <= steps[0] < steps[1]:
        raise ConfigError(
            f"'model.sampling.reverse_steps' is {steps}; expected two steps, 0 ≤ first < second"
        )
    backbone_config(cfg.model)


def backbone_config(model: ModelConfig) -> Any:
    """`model.backbone` as the typed `Args` of backbone `model.name` (or, for a class given
    by import path without `Args`, checked against its constructor); an unknown name, key
    or a value of the wrong type is a ConfigError naming the valid ones."""
    from . import plugins
    from .models import BACKBONES, available

    if plugins.is_import_path(model.name):
        try:
            cls = plugins.resolve_model(model.name)
        except (ImportError, TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
    elif model.name not in BACKBONES:
        raise ConfigError(
            f"'model.name' is {model.name!r}; expected one of {', '.join(available())} "
            "or an import path package.module:Class"
        )
    else:
        cls = BACKBONES[model.name]
    args_cls = getattr(cls, "Args", None)
    if not dataclasses.is_dataclass(args_cls):
        leading = () if plugins.is_task(cls) else (None,)  # a backbone gets the FrameSpec first
        try:
            plugins.check_keywords(cls, dict(model.backbone), *leading)
        except TypeError as exc:
            raise ConfigError(f"'model.backbone' does not fit {model.name}: {exc}") from exc
        return dict(model.backbone)
    schema = OmegaConf.structured(args_cls)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(schema, model.backbone))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        first_line = str(exc).splitlines()[0]
        valid = ", ".join(schema.keys())
        raise ConfigError(
            f"'model.backbone.{key}': {first_line} (model '{model.name}' takes: {valid})"
        ) from exc
    check_values(typed, "model.backbone.")
    return typed


_WORDS_YAML_READS_AS_FALSE = {("trainer", "mixed_precision"): "no"}
"""YAML 1.1 reads `no` (and `off`, `false`) as false: `mixed_precision: no` means "no"."""


def _words_back(node: DictConfig) -> DictConfig:
    for (section, key), word in _WORDS_YAML_READS_AS_FALSE.items():
        part = node.get(section) if isinstance(node, DictConfig) else None
        if isinstance(part, DictConfig) and part.get(key, None) is False:
            part[key] = word
    return node


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
            raise _yaml_error(str(path), exc) from exc
        if overlay is None or not isinstance(overlay, DictConfig):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        try:
            merged = OmegaConf.merge(merged, _words_back(overlay))
        except OmegaConfBaseException as exc:
            raise _error(schema, exc, str(path)) from exc
        except (TypeError, ValueError) as exc:  # e.g. a list where a mapping belongs
            raise ConfigError(f"{path}: {exc}") from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        try:
            dotted = OmegaConf.from_dotlist([item])
        except Exception as exc:
            raise _yaml_error(f"override {item!r}", exc) from exc
        try:
            merged = OmegaConf.merge(merged, _words_back(dotted))
        except OmegaConfBaseException as exc:
            raise _error(schema, exc, f"override {item!r}") from exc
        except (TypeError, ValueError) as exc:  # e.g. a list where a mapping belongs
            key = item.partition("=")[0]
            raise ConfigError(f"override {item!r}: bad value for '{key}': {exc}") from exc
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _error(schema, exc, "config") from exc
    _check_config(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved beside every run and in every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts."""
    return dataclasses.asdict(cfg)
