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
import difflib
import functools
import json
import math
import os
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional  # noqa: UP035 - OmegaConf reads these

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import InputError


class ConfigError(InputError):
    """A configuration that does not match the schema; the message is one readable line."""


LARGEST_FRAME_SIDE = 4096
"""Pixels: no frame side of a dataset this package trains on is larger (SEVIR: 384), so a
pooling or window size above it is a typo, not a neighbourhood."""
MOST_FRAMES = 1000
"""Frames per sequence: far above any recipe (20); more is a typo that would hang."""
MOST_ITEMS = 2**20
"""Samples in a batch or a shuffle buffer, sequences to synthesise: beyond it, a typo."""
MOST_DIGITS = 100
"""Digits moving in one synthetic sequence."""
MOST_WORKERS = 1024
"""Worker processes (loader, conversion): a pool starts all of its at once, so a typo of
100000 would fork until the machine runs out of memory."""


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


def split_name(value: Any) -> str | None:
    """A split's name: a sub-folder of `data.root` (no path separator, not `.` or `..`);
    it also names the split's results (`val/mse`, metrics_val.json)."""
    if (
        isinstance(value, str)
        and value.strip()
        and value not in (".", "..")
        and not (set(value) & {"/", "\\"})
    ):
        return None
    return "a split name: a sub-folder of data.root (no '/', not '.' or '..')"


WANDB_PROJECT_FORBIDDEN = "/\\#?%:"


def _wandb_project(value: Any) -> str | None:
    """wandb's own rules for a project name (it refused only at the tracker's start, after
    the data was read, in a line that named no key): at most 128 characters, none of
    / \\ # ? % :; and not blank (which wandb took as a project named by spaces)."""
    ok = isinstance(value, str) and value.strip() and len(value) <= 128
    if ok and not set(value) & set(WANDB_PROJECT_FORBIDDEN):
        return None
    return f"a project name of 1 to 128 characters, none of {' '.join(WANDB_PROJECT_FORBIDDEN)}"


def _wandb_tags(value: Any) -> str | None:
    """wandb's rule for tags: each 1 to 64 characters (else its error at the tracker's start
    was a page of pydantic's)."""
    ok = all(isinstance(tag, str) and 1 <= len(tag.strip()) and len(tag) <= 64 for tag in value)
    return None if ok else "a list of tags of 1 to 64 characters each"


def _none_or_not_empty(value: Any) -> str | None:
    return None if value is None or value else "null or a non-empty value"


BUILT_IN_LOSSES = ("mse", "l1", "mse+l1")


def _loss_name(value: Any) -> str | None:
    """`model.loss`: a built-in loss, or an import path `package.module:name`."""
    if isinstance(value, str) and (
        value in BUILT_IN_LOSSES or (value.count(":") == 1 and all(value.split(":")))
    ):
        return None
    return f"one of {', '.join(BUILT_IN_LOSSES)} or an import path package.module:function"


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    """Integers in [low, high] (None passes: an Optional field's "not set")."""

    def rule(value: Any) -> str | None:
        return None if value is None or low <= value <= high else f"an integer in [{low}, {high}]"

    return rule


def _sizes(value: Any) -> str | None:
    ok = all(1 <= v <= LARGEST_FRAME_SIDE for v in value)
    return None if ok else f"a list of sizes, each in [1, {LARGEST_FRAME_SIDE}] pixels"


def _thresholds(value: Any) -> str | None:
    """A list of thresholds each naming its results apart (csi@X: no two print alike).

    Thresholds name their results (`csi@20`, `{level:g}`): two that print alike would
    write the same keys, one over the other."""
    names = [f"{v:g}" for v in value]
    alike = sorted({n for n in names if names.count(n) > 1})
    if not alike:
        return None
    return f"thresholds that differ in their results' names (csi@X): {', '.join(alike)} repeats"


def _colormap(value: Any) -> str | None:
    if value is None:
        return None
    import matplotlib

    return None if value in matplotlib.colormaps else "a matplotlib colormap (e.g. viridis)"


def _class_names(value: Any) -> str | None:
    ok = value is None or (len(value) > 0 and all(str(v).isidentifier() for v in value))
    return None if ok else "null or a non-empty list of class names (e.g. [ConvLSTMCell])"


_SEED = _between(0, 2**31 - 1)  # numpy's legacy seeding takes [0, 2³²); ranks add their index


def checked(default: Any, rule: Callable[[Any], str | None]) -> Any:
    """A field with a default and a value check, run by `load_config` (`check_values`); a
    list default is copied for every instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": rule})
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


def _open_unit_interval(value: Any) -> str | None:
    return None if 0 < value < 1 else "a number strictly between 0 and 1"


@dataclass
class EmaConfig:
    """An exponential moving average of the weights, kept beside them (`trainer.ema`)."""

    decay: float = checked(0.999, _open_unit_interval)
    """Each update: ema = decay · ema + (1 − decay) · weights."""
    start_step: int = checked(0, _non_negative)
    """Up to this optimizer step the average is a copy of the weights; it averages after."""
    every_n_steps: int = checked(1, _positive)
    """Update the average every N optimizer steps (counted from `start_step`)."""


@dataclass
class EarlyStoppingConfig:
    """Stop training when a validation metric stops improving (`trainer.early_stopping`)."""

    monitor: str = checked("val/loss", _not_empty)
    """The validation result watched (a key of the validation results, e.g. val/loss)."""
    mode: Literal["min", "max"] = "min"
    """Which direction of `monitor` is better."""
    patience: int = checked(3, _positive)
    """Stop after this many validations in a row without an improvement."""
    min_delta: float = checked(0.0, _non_negative)
    """An improvement must beat the best value by more than this."""


@dataclass
class TrainerConfig:
    output_dir: str = checked("runs/default", _not_empty)
    """Folder for checkpoints, metrics.jsonl, the resolved config and samples."""
    max_epochs: Optional[int] = checked(1, _positive)
    """Stop after this many epochs (None: only `max_steps` limits)."""
    max_steps: Optional[int] = checked(None, _positive)
    """Stop after this many optimizer steps (None: only `max_epochs` limits). With both
    set, the limit met first ends the run (said at start when that is `max_epochs`): set
    `max_epochs` to null to train by steps alone."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """`no`, `bf16` (CPU autocast or CUDA) or `fp16` (CUDA only, with a grad scaler)."""
    gradient_accumulation_steps: int = checked(1, _between(1, MOST_ITEMS))
    """Micro-batches per optimizer step."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """`ddp`: every rank holds the whole model, its gradients and optimizer state; `fsdp`:
    all three sharded over the ranks (FSDP2, `torch.distributed.fsdp.fully_shard`), for
    models that do not fit one device with DDP. One process: no difference."""
    fsdp_wrap: Optional[list[str]] = checked(None, _class_names)
    """With `strategy: fsdp`, the class names of the submodules sharded as units (None:
    the backbone's choice, `fsdp_units()`: a recurrent cell layer, a translator block)."""
    keep_global_batch: bool = False
    """On a resume on another number of ranks, set the accumulation so that ranks ×
    accumulation (the global batch) stays as the checkpoint's run had it; refused when no
    whole number of accumulation steps does that (CLI `--keep-global-batch`)."""
    grad_clip_norm: Optional[float] = checked(None, _positive_number)
    """Clip the global gradient norm to this value (None: no clipping)."""
    seed: int = checked(0, _SEED)
    """Seeds model initialisation (torch, numpy and random are seeded when the Trainer is
    made: a module built after it; the CLI's always), data order and every rank's RNG
    (seeded again when `fit` starts)."""
    log_every_n_steps: int = checked(10, _positive)
    """Log training scalars every N optimizer steps (the means over those N; the steps after
    a run's last multiple of N are in no `train/loss` row, only in their epoch's
    `train/epoch_loss`)."""
    val_every_n_epochs: int = checked(1, _non_negative)
    """Validate at the end of every N epochs (0: never at epoch ends)."""
    val_every_n_steps: Optional[int] = checked(None, _positive)
    """Also validate every N optimizer steps."""
    num_workers: Optional[int] = checked(None, _between(0, MOST_WORKERS))
    """Data-loading worker processes per rank (None: the data's own, a DataLoader's
    `num_workers`; none for the shard streams and on-the-fly digits)."""
    num_threads: Optional[int] = checked(None, _between(1, 4096))
    """Intra-op CPU threads per rank (None: `OMP_NUM_THREADS` when set, else the CPUs this
    process may use — `SLURM_CPUS_PER_TASK` or its affinity — divided among the node's
    ranks, so ranks never oversubscribe cores)."""
    compile: bool = False
    """`torch.compile` for training. A Forecaster compiles its backbone region by region
    (one recurrent cell step, compiled once and reused for every frame); scheduled
    sampling stays outside the compiled code, so it causes no recompiles."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """torch.compile's mode (`reduce-overhead`: CUDA graphs, for static shapes on a GPU)."""
    cuda_graphs: bool = False
    """Capture the whole training step (forward, backward, clipping, optimizer step) in a
    CUDA graph after 3 eager steps and replay it: one launch a step instead of thousands.
    One process, no accumulation, no fp16, no `compile`, no FSDP, no activation
    checkpointing (refused at start, with the reason); a module that may skip batches, an
    optimizer without a capturable mode (SGD), a batch of other shapes, an optimizer
    setting a scheduler changes after the capture (other than the learning rate and Adam's
    beta1, which reach the graph through the device) and a capture that fails run eagerly
    (one line says so). On a CPU: accepted, not applicable (see `stpdist.graphs`); the
    combinations above are refused there too, as they would be on a GPU."""
    cudnn_benchmark: Optional[bool] = None
    """On a GPU, let cuDNN time its convolution algorithms at the first call of each input
    shape and keep the fastest (`torch.backends.cudnn.benchmark`, set while this Trainer is
    open, torch's own setting again once the last Trainer that set it closes): the first
    steps are slower, later ones may be faster, and two runs may pick different algorithms
    (results differ in the last bits). None: torch's setting (off unless set). On a CPU:
    accepted, not applicable."""
    deterministic: bool = False
    """Deterministic kernels while this Trainer is open (`torch.use_deterministic_algorithms`
    and `torch.backends.cudnn.deterministic`; on CUDA `CUBLAS_WORKSPACE_CONFIG=:4096:8` when
    unset): on a GPU the same seed and settings then train the same weights run after run,
    at some cost in speed; an op that has no deterministic kernel stops the run with an
    error naming it (on a GPU: TrajGRU's `grid_sample` backward has none). Refused with
    `cudnn_benchmark: true` or cuDNN's algorithm search otherwise on (it picks kernels by
    timing them). The settings are process-wide: while a Trainer that set it is open, every
    Trainer of the process runs with them; torch's own again once the last one that set it
    closes. On a CPU the kernels stpdist's models use are deterministic already (same seed,
    threads, workers and ranks: bitwise-identical weights); the setting holds there too."""
    channels_last: bool = False
    """Store the model's 2-D convolution weights channels-last before training
    (`stpdist.module.to_channels_last`): the convolutions then write channels-last
    outputs and a recurrent cell's states stay so. On a GPU that is cuDNN's native layout
    for bf16 and fp16 tensor cores; on the CPUs measured here oneDNN ran it slower (0.91×).
    The same values; checkpoints store contiguous weights either way. With `strategy:
    fsdp` on several processes it does nothing (FSDP keeps parameters contiguous; one
    line says so)."""
    activation_checkpointing: bool = False
    """Recompute each recurrent step's activations in the backward instead of keeping
    all of them: less memory for long sequences and wide cells, more compute."""
    dist_timeout_s: Optional[float] = checked(None, _positive_number)
    """Seconds a rank waits in a collective before the run is aborted (None: torch's, 10
    minutes over NCCL, 30 over gloo). Raise it where the main rank alone does long work
    the others wait for: generating a large `data.synthesize` dataset, writing and hashing
    checkpoints on a slow shared filesystem."""
    progress_bar: bool = True
    """Show a tqdm bar on the main process when its output is a terminal. Written to a file
    (a SLURM log), or with the bar off, training says a line at each log step instead:
    `[step N/total] HH:MM:SS epoch E, loss …, lr …, … samples/s, elapsed H:MM:SS, ETA
    H:MM:SS` (samples/s of every rank together; elapsed: this process's time, validations
    included; ETA: the rest of the run at that pace), and a line as each validation
    starts."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint policy."""
    ema: Optional[EmaConfig] = None
    """Exponential moving average of the weights (None: off). When on, validation,
    predict, forecast and export use the averaged weights (`--raw-weights`: the raw)."""
    early_stopping: Optional[EarlyStoppingConfig] = None
    """Stop when a validation metric stops improving (None: off)."""


@dataclass
class SynthConfig:
    root: Optional[str] = checked(None, _none_or_not_empty)
    """The folder this synthesis is for: digits are generated only when `data.root` is this
    folder (or on `stpdist train --synthesize`), so a mistyped root is an error, not a run on
    fake data."""
    train: int = checked(512, _between(1, MOST_ITEMS))
    """Number of training sequences to generate."""
    val: int = checked(64, _between(0, MOST_ITEMS))
    """Number of validation sequences."""
    test: int = checked(64, _between(0, MOST_ITEMS))
    """Number of test sequences."""
    seed: int = checked(0, _between(0, 2**63 - 1))
    """Generator seed: sample i of a split is a function of (seed, split, i)."""
    num_frames: int = checked(20, _between(1, MOST_FRAMES))
    """Frames per sequence."""
    image_size: int = checked(64, _between(1, LARGEST_FRAME_SIDE))
    """Canvas height and width in pixels."""
    num_digits: int = checked(2, _between(1, MOST_DIGITS))
    """Digits per sequence."""
    digit_size: int = checked(28, _between(1, LARGEST_FRAME_SIDE))
    """Glyph height and width in pixels (MNIST's 28; smaller on a small canvas lets the
    digits move: the step per frame is 0.1 × (image_size − digit_size))."""
    digits: Optional[str] = checked(None, _none_or_not_empty)
    """MNIST `train-images-idx3-ubyte(.gz)` to take digits from (None: Pillow glyphs)."""


@dataclass
class DataConfig:
    root: str = checked("data/moving-digits", _not_empty)
    """Dataset folder holding one sub-folder of shards (+ index.json) per split."""
    train_split: str = checked("train", split_name)
    """Split used by `train`."""
    val_split: str = checked("val", split_name)
    """Split used for validation during `train` and by `validate`."""
    test_split: str = checked("test", split_name)
    """Split used by `predict`."""
    batch_size: int = checked(8, _between(1, MOST_ITEMS))
    """Micro-batch size per process."""
    eval_batch_size: Optional[int] = checked(None, _between(1, MOST_ITEMS))
    """Batch size per process for validation/predict (None: `batch_size`)."""
    num_input_frames: int = checked(10, _between(1, MOST_FRAMES))
    """Frames the model sees (T_in), taken from the start of each sequence."""
    num_output_frames: int = checked(10, _between(1, MOST_FRAMES))
    """Frames the model predicts (T_out), following the inputs."""
    shuffle_buffer: int = checked(256, _between(1, MOST_ITEMS))
    """Samples held in the training shuffle buffer per worker (raw bytes: memory is about
    buffer × sample × workers). Shards are read in a random order each epoch, each worker
    reading a piece of each of 16 bands of that sequence in turn through this buffer: a
    batch draws from up to 16 distant stretches of the split (local shards; shards behind a
    `url_template` are read in order: see the converting guide)."""
    normalize: Literal["scale", "none", "standardize", "minmax"] = "scale"
    """What the model sees, per variable (channel), from the training index's statistics,
    applied on the device: `scale`, frames / value_scale (in [0, 1]); `none`, physical
    (stored) units; `standardize`, (x − mean) / std; `minmax`, (x − min) / (max − min).
    Metrics stay in data units; `predict` writes physical units unless `scale`."""
    skip_bad_samples: bool = False
    """Skip unreadable samples / truncated shards (counted, reported) instead of failing."""
    url_template: Optional[str] = checked(None, _none_or_not_empty)
    """Shard location per split, e.g. `pipe:aws s3 cp s3://bucket/ds/{split}/{name} -`
    (None: the local folder `root/<split>/`); index.json is always read from `root`. A
    `pipe:` command runs only with `STPDIST_ALLOW_PIPE=1` in the environment."""
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
    name: Literal["none", "onecycle", "cosine", "cosine_restarts"] = "none"
    """Learning-rate schedule, stepped per optimizer step, after `warmup_steps`: none
    (constant), onecycle (torch's OneCycleLR, its own warm-up), cosine (down to `min_lr`
    over `total_steps`), cosine_restarts (cosine cycles of `restart_every_steps`, each
    `restart_mult` times the last, every one starting again at `optimizer.lr`)."""
    interval: Literal["step", "epoch"] = "step"
    """What the schedule counts: optimizer steps, or epochs (cosine and cosine_restarts;
    OpenSTL's TaxiBJ recipe: per epoch, 5 warm-up epochs). With `epoch`, `warmup_steps`,
    `total_steps` and `restart_every_steps` count epochs and cosine needs `total_steps`."""
    warmup_steps: int = checked(0, _non_negative)
    """Linear warm-up steps (epochs with `interval: epoch`) before any schedule but
    onecycle: the rate rises as (step + 1) / warmup_steps × `optimizer.lr`, then the
    schedule runs from its own step 0."""
    total_steps: Optional[int] = checked(None, _positive)
    """Schedule length in optimizer steps, warm-up included, or epochs with `interval:
    epoch` (None: the trainer's planned steps)."""
    min_lr: float = checked(0.0, _non_negative)
    """Learning rate the cosine schedules end at (OpenSTL's TaxiBJ recipe: 1e-6); at most
    `optimizer.lr`."""
    restart_every_steps: Optional[int] = checked(None, _positive)
    """cosine_restarts: length of the first cycle in optimizer steps (epochs with
    `interval: epoch`), counted after the warm-up."""
    restart_mult: int = checked(1, _between(1, 100))
    """cosine_restarts: each cycle is this many times as long as the one before (1: all
    equal; SGDR's T_mult; at most 100, beyond which the second cycle never ends)."""


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
    """Clamp predictions to the data's range outside training: [0, 1] with `data.normalize:
    scale` (data whose values leave [0, 1] is then refused), else each variable's min and
    max in the training index."""
    metric_thresholds: List[float] = checked([], _thresholds)
    """Thresholds in physical (stored) units for CSI/POD/FAR/HSS (e.g. [20, 30, 40] dBZ)."""
    threshold_channel: Optional[str] = checked(None, _none_or_not_empty)
    """The channel the thresholds apply to, by index (`0`) or variable name (`tp`), for data
    of several channels (precipitation beside temperature: thresholds are in one channel's
    units); `all` pools every channel's pixels (channels of one quantity). None: a frame's
    every channel, with a warning at the first validation when there are several."""
    csi_pool_sizes: List[int] = checked([], _sizes)
    """Neighbourhoods (p×p, max-pooled) for pooled CSI at the thresholds, and CSI-M (the mean
    over thresholds) per size (SEVIR: [4, 16]); CSI-M itself is reported with thresholds.
    Blocks at the right and bottom edges that p does not fill are kept (`stpdist`) or
    dropped (`earthformer`), see `score_convention`."""
    fss_sizes: List[int] = checked([], _sizes)
    """Window sizes n (n×n pixels) of the fractions skill score at the thresholds."""
    score_convention: Literal["stpdist", "earthformer"] = "stpdist"
    """Skill scores with an empty denominator (CSI: a threshold no pixel of either field
    reaches; POD: no event observed; FAR: none forecast; HSS: no event, or events
    everywhere): `stpdist`, the score is undefined (NaN) and CSI-M averages the thresholds
    where it is defined, counting the others in `csi_m…_undefined`; pooled CSI keeps
    partial edge blocks. `earthformer`,
    as Earthformer/PreDiff compute them to compare with their papers: 1e-4 added to every
    denominator (an empty one scores 0), pooled CSI drops partial edge blocks."""
    lpips_weights: Optional[str] = checked(None, _none_or_not_empty)
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
    patch_size: int = checked(1, _between(1, LARGEST_FRAME_SIDE))
    """Fold p×p pixel patches into channels before the backbone (H, W divisible by p)."""
    loss: str = checked("mse", _loss_name)
    """Training loss on the frames `loss_frames` names: `mse`, `l1`, `mse+l1`, or an import
    path `package.module:function` of your own, called as `function(predictions, targets)`
    on B×T×C×H×W tensors in the model's (normalised) space and returning one number (a
    tensor); a class there (`torch.nn:HuberLoss`) is built with no arguments. Also
    `val/loss`, so the checkpoint monitor and early stopping rank by it."""
    loss_frames: Literal["outputs", "all"] = "outputs"
    """Frames the training loss covers: `outputs`, the T_out predicted frames; `all`, every
    next-frame prediction of a frame-recurrent backbone (frames 1..T_in+T_out−1 from frames
    0..T_in+T_out−2), OpenSTL's objective for ConvLSTM, the PredRNN family, MIM, E3D-LSTM,
    MAU. `all` with a backbone that does not predict frame by frame is an error."""
    divergence_weight: float = checked(0.0, _non_negative)
    """α of TAU's differential divergence regulariser added to the loss (TAU's recipe: 0.1;
    0: off); logged as `train/divergence`."""
    fused_kernels: Literal["auto", "on", "off"] = "auto"
    """A recurrent cell's gate arithmetic as one fused kernel forward and one backward
    (`stpdist.models.fused`; compiled by `torch.compile` at the first step of each shape):
    `auto`, on a GPU and off on a CPU (where the compile time outweighs a short run's gain);
    `on`; `off`, the op-by-op arithmetic. Same results to float rounding."""
    divergence_form: Literal["per_channel", "openstl"] = "per_channel"
    """Where that regulariser's softmax runs: `per_channel`, over each channel's H×W;
    `openstl`, OpenSTL's: over C·H·W at once, ε in the log, 0 for T_out = 2."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimisation."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Scheduled sampling."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Output clamping and metrics."""
    init_weights: Optional[str] = checked(None, _none_or_not_empty)
    """Fine-tuning: start training from these weights instead of a random initialisation —
    a model folder (`stpdist import openstl`, `stpdist export`), a checkpoint folder, a run
    folder (its best checkpoint; its EMA weights when it holds them) or a `.safetensors`
    file. Only a fresh run uses them (a
    resumed run continues from its checkpoint); optimizer, schedule, step and data order
    start fresh. A folder's `model.name`, `model.backbone` and `model.patch_size` must be
    this config's; every tensor must match the model's by name and shape."""


@dataclass
class WandbConfig:
    mode: Literal["online", "offline"] = "offline"
    """`online`, or `offline` (a local run folder; `wandb sync` uploads it later)."""
    project: str = checked("stpdist", _not_empty)
    """wandb project (at most 128 characters, none of / \\ # ? % :)."""
    entity: Optional[str] = checked(None, _none_or_not_empty)
    """wandb entity (team or user)."""
    name: Optional[str] = checked(None, _none_or_not_empty)
    """Run name."""
    tags: List[str] = field(default_factory=list)
    """Run tags (each 1 to 64 characters)."""


@dataclass
class LoggingConfig:
    trackers: List[Literal["wandb", "tensorboard"]] = field(default_factory=list)
    """Experiment trackers fed through accelerate (metrics.jsonl is always written)."""
    trackers_every_n_steps: Optional[int] = checked(None, _positive)
    """Send training scalars to the trackers every N steps (None: whenever logged); a
    multiple of `trainer.log_every_n_steps`, the steps they exist at."""
    num_samples: int = checked(4, _non_negative)
    """Validation samples rendered as pictures at each validation (the same keys each time),
    at most the main process' share of the split on several ranks; 0 renders none."""
    samples_every_n_validations: int = checked(1, _positive)
    """Draw the pictures (panels, GIFs, lead-time plot; on the trackers too) at the 1st
    validation and every N-th after it (1, N+1, 2N+1, …), numbered by the validation steps in
    metrics.jsonl, so resumes keep the rhythm; the metrics are logged at every validation."""
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


def _without_none(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `Optional[X]`, (hint, False) for any other type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else hint), True
    return hint, False


@functools.lru_cache(maxsize=64)
def _fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """{field name: (type without Optional, whether None is allowed)} of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: _without_none(hints[f.name]) for f in dataclasses.fields(cls)}


def _section_class(dotted: str) -> type | None:
    """The dataclass of the schema section at `dotted` ("": Config), Optional sections
    included (`trainer.ema`, None in the schema's defaults); None if it names no section."""
    cls: Any = Config
    for part in filter(None, dotted.split(".")):
        spec = _fields(cls).get(part) if dataclasses.is_dataclass(cls) else None
        if spec is None:
            return None
        cls = spec[0]
    return cls if dataclasses.is_dataclass(cls) else None


def _keys_named(name: str, cls: type | None = None, prefix: str = "") -> list[str]:
    """The dotted keys of the schema whose last part is `name` (`batch_size` →
    `data.batch_size`, `data.synthesize.…`; `optimizer` → `model.optimizer`), but the
    top-level sections (`trainer.model` is no slip of `model`), shallowest first."""
    found = []
    for field_name, (hint, _) in _fields(cls or Config).items():
        path = f"{prefix}{field_name}"
        if field_name == name and prefix:
            found.append(path)
        if dataclasses.is_dataclass(hint):
            found += _keys_named(name, hint, path + ".")
    return sorted(found, key=lambda key: key.count("."))


def _elsewhere(key: str, close: list[str]) -> str:
    """A hint naming where an unknown key's name is a key (`trainer.batch_size`: it is
    `data.batch_size`), when nothing beside it is close: a key put in the wrong section
    got only its section's list (a config review)."""
    name = key.rsplit(".", 1)[-1]
    others = [k for k in _keys_named(name) if k != key]
    if close or not others:
        return ""
    return f"; '{name}' is {' or '.join(repr(k) for k in others[:3])}"


def _valid_keys(schema: DictConfig, full_key: str) -> list[str]:
    """Keys valid beside `full_key` (the fields of its parent section: the longest prefix
    that is one, as the unknown key may hold a dot itself, `decay:0.9`)."""
    parts = full_key.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:cut])
        cls = _section_class(parent)
        if cls is not None:
            return sorted(_fields(cls))
        node = OmegaConf.select(schema, parent) if parent else schema
        if isinstance(node, DictConfig):
            return sorted(node.keys())
    return []


_LIST_ITEM = re.compile(r"(?P<list>[^=\[\]]+?)(?:\[(?P<bracket>\d+)\]|\.(?P<dotted>\d+))")
"""An override's key naming one item of a list: `key[0]` or `key.0`."""


def _list_item_error(merged: DictConfig, item: str) -> ConfigError | None:
    """For an override of one item of a list (`model.backbone.hidden_channels[0]=32`, which
    OmegaConf cannot merge: "incompatible container types"), an error that gives the whole
    list to set instead, with that item changed; None for any other override."""
    import yaml

    key, _, text = (part.strip() for part in item.partition("="))
    found = _LIST_ITEM.fullmatch(key)
    if found is None:
        return None
    path, index = found["list"], int(found["bracket"] or found["dotted"])
    node = OmegaConf.select(merged, path, default=None, throw_on_resolution_failure=False)
    if not isinstance(node, ListConfig):
        return None
    items = OmegaConf.to_container(node, resolve=False)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if index < len(items):
        items[index] = value
        whole = f"{path}={json.dumps(items, separators=(',', ':'))}"
        return ConfigError(
            f"override {item!r}: one item of a list is not set alone; set the whole list: {whole}"
        )
    return ConfigError(
        f"override {item!r}: one item of a list is not set alone, and '{path}' holds "
        f"{len(items)} item(s); set the whole list: {path}=[...]"
    )


def _error(schema: DictConfig, exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None)
    first_line = str(exc).splitlines()[0]
    if key and ("not in" in first_line or "Missing key" in first_line):
        valid = _valid_keys(schema, key)
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else _elsewhere(key, close)
        parent, _, name = key.rpartition(".")
        if parent == "model" and name in _EARLIER_MODEL_KEYS:  # the layout before 2026-12-03
            hint = f"; it is 'model.{_EARLIER_MODEL_KEYS[name]}' since 2026-12-03"
        if ":" in key:  # `{decay:0.9}`: YAML reads one key, `decay:0.9`, without the space
            hint += "; YAML needs a space after the colon: {key: value}"
        return ConfigError(
            f"{origin}: unknown key '{key}'; valid keys there: {', '.join(valid)}{hint}"
        )
    if not key:  # OmegaConf knows no key (a section given a value of another type)
        return ConfigError(f"{origin}: {first_line}")
    return ConfigError(f"{origin}: bad value for '{key}': {first_line}")


def _shown(value: Any) -> str:
    """A value as YAML's flow style writes it: true, null, 5, "offline", [1]."""
    return json.dumps(value, default=str, ensure_ascii=False)


def _check_shapes(values: dict, cls: type, prefix: str = "") -> None:
    """A section, mapping or list field of `cls` given a value of another shape (`ema: true`,
    `trainer: 5`, `trackers: wandb`): one line naming the key, what it takes and the value.
    (OmegaConf's merge names no key for a section: "bool is not a subclass of EmaConfig".)
    Unknown keys are left to the merge, which lists the valid ones."""
    for name, value in values.items():
        spec = _fields(cls).get(name)
        if spec is None or _is_interpolation(value):
            continue
        (hint, optional), key = spec, f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            if isinstance(value, dict | DictConfig):
                _check_shapes(dict(value), hint, f"{key}.")
                continue
            expected = f"a mapping of {hint.__name__}'s keys ({', '.join(_fields(hint))})"
        elif typing.get_origin(hint) in (dict, list):
            # from Python, a tuple is a list and OmegaConf's own containers are what they hold
            kinds = (
                (dict, DictConfig) if typing.get_origin(hint) is dict else (list, tuple, ListConfig)
            )
            if isinstance(value, kinds):
                continue
            expected = "a mapping" if typing.get_origin(hint) is dict else "a list"
        else:
            continue
        if value is None and optional:
            continue
        alternative = " or null" if optional else ""
        raise ConfigError(f"'{key}' is {_shown(value)}; expected {expected}{alternative}")


def _interpolated_section_error(
    values: dict, cls: type, prefix: str, root: DictConfig
) -> ConfigError | None:
    """A section given an interpolation that resolves to another kind of value
    (`synthesize: ${trainer.max_epochs}`), in the unresolved `values` of section `cls`: one
    line naming the key, the interpolation and what it resolved to (OmegaConf's error at
    resolution names no key). None if no section holds such an interpolation."""
    for name, (hint, optional) in _fields(cls).items():
        value, key = values.get(name), f"{prefix}{name}"
        if not dataclasses.is_dataclass(hint):
            continue
        if isinstance(value, dict):
            found = _interpolated_section_error(value, hint, f"{key}.", root)
            if found:
                return found
        elif _is_interpolation(value):
            # an absolute reference is looked up (a relative one, `${.x}`, is not)
            reference = _REFERENCE.fullmatch(value.strip())
            if reference and reference.group(1).startswith("."):
                reference = None
            resolved = OmegaConf.select(root, reference.group(1)) if reference else None
            if isinstance(resolved, DictConfig) or (resolved is None and optional):
                continue
            which = f", which is {_shown(resolved)}" if reference else ""
            expected = f"a mapping of {hint.__name__}'s keys ({', '.join(_fields(hint))})"
            return ConfigError(f"'{key}' is {value}{which}; expected {expected}")
    return None


def _yaml_error(origin: str, exc: Exception) -> ConfigError:
    """One line naming the origin and, when YAML knows it, the line and column."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError(f"{origin}: not valid YAML{where}: {problem}")


def _non_finite(value: Any) -> bool:
    """Whether `value` is, or a list holding, a NaN or ±inf float."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(v, float) and not math.isfinite(v) for v in values)


def check_values(section: Any, prefix: str = "") -> None:
    """Run every field's declared check, depth first, after the check every number field
    gets (finite: no NaN or ±inf); the first failure is a ConfigError naming the key, its
    value and what was expected."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{prefix}{f.name}"
        if _non_finite(value):
            raise ConfigError(f"'{key}' is {value!r}; expected finite numbers (no NaN or inf)")
        rule = f.metadata.get("check")
        problem = rule(value) if rule is not None else None
        if problem:
            raise ConfigError(f"'{key}' is {value!r}; expected {problem}")
        if dataclasses.is_dataclass(value):
            check_values(value, key + ".")


def checked_section(section: Any, cls: type, origin: str, prefix: str = "") -> Any:
    """A config section built in Python (`TrainerConfig(compile="false")`) checked as a
    file's values are: `section` itself when its values pass as they are, else its typed
    copy ("false" → False), or a ConfigError naming `prefix` + key. (An object standing for
    a dataclass, with its fields, passes too; the fields are read here, in config.py.)"""
    if isinstance(section, type) or not hasattr(section, "__dataclass_fields__"):
        raise TypeError(f"{origin}: expected a {cls.__name__}, got {type(section).__name__}")
    values = _plain_fields(section)
    kind = type(section) if isinstance(section, cls) else cls  # a user's subclass: its own
    typed = section_with(kind(), values, origin, prefix)
    return section if dataclasses.asdict(typed) == values else typed


def _plain_fields(section: Any) -> dict[str, Any]:
    """The fields of a (possibly stand-in) dataclass object as plain values, sub-sections
    as mappings."""
    names = [f.name for f in dataclasses.fields(section)]
    return {
        name: _plain_fields(value) if hasattr(value, "__dataclass_fields__") else value
        for name, value in ((name, getattr(section, name)) for name in names)
    }


def _python_numbers(value: Any) -> Any:
    """NumPy scalars (a sweep loop over `np.linspace`) as Python's own numbers, in lists and
    mappings too: OmegaConf refused `np.float64` ("not a supported primitive type"; a
    Python API review)."""
    item = getattr(value, "item", None)
    if type(value).__module__ == "numpy" and callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    if isinstance(value, list | tuple):
        return type(value)(_python_numbers(v) for v in value)
    if isinstance(value, dict):
        return {k: _python_numbers(v) for k, v in value.items()}
    return value


_BEFORE_INTERPOLATION = re.compile(r"(\\*)\$\{")
"""`${` and the backslashes before it."""


def _literal(value: Any) -> Any:
    """`value` with each `${` of its text escaped, and the backslashes before one doubled,
    in lists and mappings too: OmegaConf reads the text as written (`a\\${b}` lost its
    backslash, or became an interpolation; a diff review)."""
    if isinstance(value, str):
        return _BEFORE_INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, list | tuple):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def section_with(base: Any, fields: dict[str, Any], origin: str, prefix: str = "") -> Any:
    """Dataclass section `base` (e.g. a `TrainerConfig`) with `fields` set from Python, checked
    as a config file's values are: an unknown key, a value of the wrong type (1.5 for an
    int, "yes" for a bool, a word outside a field's choices) is a ConfigError starting with
    `origin` and naming `prefix` + key; a mapping given for a sub-section (`ema={}`)
    becomes that section, and every field's own check runs."""
    cls = type(base)
    plain = {}
    for key, value in fields.items():
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        value = _python_numbers(value)
        plain[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    try:
        _check_shapes(plain, cls, prefix)
        _check_bools(plain, cls, prefix)
        # values from Python, or a loaded config's (resolved) values: literal text, never
        # interpolated again (a config's escaped `\${…}`, its literal `${…}` once loaded,
        # failed here as an interpolation; a config review)
        merged = OmegaConf.merge(_schema(cls), _literal(_plain_fields(base)), _literal(plain))
        typed = OmegaConf.to_object(merged)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        first_line = str(exc).splitlines()[0]
        if key and ("not in" in first_line or "Missing key" in first_line):
            parent, _, name = key.rpartition(".")
            section: Any = cls
            for part_name in filter(None, parent.split(".")):
                hint = typing.get_type_hints(section)[part_name]
                inner = [a for a in typing.get_args(hint) if a is not type(None)]
                section = inner[0] if inner else hint
            valid = [f.name for f in dataclasses.fields(section)]
            close = difflib.get_close_matches(name, valid, n=1)
            hint_text = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{origin}: unknown key '{prefix}{key}'; valid keys there: "
                f"{', '.join(valid)}{hint_text}"
            ) from None
        where = f"bad value for '{prefix}{key}': " if key else ""
        raise ConfigError(f"{origin}: {where}{first_line}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    check_values(typed, prefix)
    return typed


def check_output_dir(cfg: Config) -> None:
    """`trainer.output_dir` as a training writes it, checked before any data is read or
    generated: a file there (or in its path) is refused, and so is the dataset root or one
    of its split folders (the run's checkpoints, samples and logs never go among shards)."""
    out = Path(cfg.trainer.output_dir)
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            where = "" if folder == out else f" ({folder} is a file)"
            raise ConfigError(
                f"'trainer.output_dir' is {out}{where}; expected a folder for the run "
                "(checkpoints, metrics.jsonl, config.yaml)"
            )
    existing = next((f for f in (out, *out.absolute().parents) if f.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        # it failed later with "runs: Permission denied", after the data was made (an
        # admin review)
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "on a read-only filesystem" if read_only else "not writable by this user"
        raise ConfigError(
            f"'trainer.output_dir' is {out}, and {existing.absolute()} is {why}: choose a "
            "folder of yours for the run"
        )
    target, root = out.resolve(), Path(cfg.data.root)
    data = cfg.data
    for folder in (root, *(root / s for s in (data.train_split, data.val_split, data.test_split))):
        inside = folder != root and folder.resolve() in target.parents
        if target == folder.resolve() or inside:
            raise ConfigError(
                f"'trainer.output_dir' is {out}, in the dataset (data.root {root}): a run's "
                "checkpoints, samples and logs never go among a dataset's splits; choose "
                "another folder"
            )


def _check_config(cfg: Config, saved: bool = False) -> None:
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
    _check_schedule(cfg.model)
    if not saved:
        _check_for_training(cfg)
    evaluation = cfg.model.evaluation
    for key in ("csi_pool_sizes", "fss_sizes"):
        if getattr(evaluation, key) and not evaluation.metric_thresholds:
            raise ConfigError(
                f"'model.evaluation.{key}' is {list(getattr(evaluation, key))} without "
                "'model.evaluation.metric_thresholds': these scores are computed at the "
                "thresholds; set them (physical units, e.g. [20, 30, 40] dBZ) or leave "
                f"{key} empty"
            )
    if cfg.data.synthesize is not None:
        _check_synthesis(cfg)
    backbone_config(cfg.model)
    _check_task_fits_backbone(cfg, saved)


def _check_for_training(cfg: Config) -> None:
    """Checks of what only a training reads (the trackers, the schedule's length), added
    2026-12-06: not run on a saved config (a checkpoint's or model folder's config.yaml,
    `load_config(saved=True)`), which an earlier stpdist may have written with such values
    and which forecasting and export read unchanged."""
    wandb = cfg.logging.wandb
    for key, value, problem in (
        ("logging.wandb.project", wandb.project, _wandb_project(wandb.project)),
        ("logging.wandb.tags", list(wandb.tags), _wandb_tags(wandb.tags)),
    ):
        if problem:
            raise ConfigError(f"'{key}' is {value!r}; expected {problem}")
    schedule = cfg.model.schedule
    total, warmup = schedule.total_steps, schedule.warmup_steps
    if schedule.name == "cosine" and total is not None and warmup >= total:
        raise ConfigError(
            f"'model.schedule.total_steps' is {total} with warmup_steps {warmup}; expected "
            "more than the warm-up, which it includes (the rate fell to min_lr at once after "
            "it)"
        )
    check_tracker_cadence(cfg.logging, cfg.trainer)


def check_tracker_cadence(logging: LoggingConfig, trainer: TrainerConfig) -> None:
    """Training scalars exist at the logged steps only (`trainer.log_every_n_steps`), and
    the trackers get those of them on a multiple of `logging.trackers_every_n_steps`: 3
    beside 2 sent every 6th step, steps 3, 9, 15 never, without a word."""
    every, logged = logging.trackers_every_n_steps, trainer.log_every_n_steps
    if every is not None and logged and every % logged:
        raise ConfigError(
            f"'logging.trackers_every_n_steps' is {every}, not a multiple of "
            f"'trainer.log_every_n_steps' {logged}: training scalars exist every {logged} "
            f"steps, so the trackers would get them every {math.lcm(every, logged)}; set a "
            f"multiple of {logged}"
        )


def _check_schedule(model: ModelConfig) -> None:
    """What the schedule's settings alone decide (the Forecaster builds it only at fit)."""
    schedule, lr = model.schedule, model.optimizer.lr
    if schedule.min_lr > lr:
        raise ConfigError(
            f"'model.schedule.min_lr' is {schedule.min_lr:g}, above 'model.optimizer.lr' "
            f"{lr:g}; expected the rate the schedule decays to, at most the peak"
        )
    by_epoch = schedule.interval == "epoch"
    if by_epoch and (
        schedule.name not in ("cosine", "cosine_restarts")
        or (schedule.name == "cosine" and not schedule.total_steps)
    ):
        raise ConfigError(
            f"'model.schedule.interval' is epoch with name {schedule.name!r} and total_steps "
            f"{schedule.total_steps}; expected name cosine with total_steps (epochs), or "
            "cosine_restarts"
        )
    if schedule.name == "cosine_restarts" and not schedule.restart_every_steps:
        raise ConfigError(
            "'model.schedule.restart_every_steps' is None with name cosine_restarts; "
            "expected the first cycle's length in steps (epochs with interval epoch)"
        )
    if schedule.name == "onecycle" and schedule.warmup_steps:
        raise ConfigError(
            f"'model.schedule.warmup_steps' is {schedule.warmup_steps} with name onecycle; "
            "expected 0 (onecycle warms up by itself, over its first 30%)"
        )


def _check_synthesis(cfg: Config) -> None:
    """`data.synthesize` against itself and, where it makes the data (`data.root` is its
    root, or training draws from it), against what the run takes from that data: checks
    that would otherwise fail only after the digits are written."""
    synth, data = cfg.data.synthesize, cfg.data
    if synth.digit_size > synth.image_size:
        raise ConfigError(
            f"'data.synthesize.digit_size' is {synth.digit_size}; expected at most "
            f"'data.synthesize.image_size' {synth.image_size} (the glyph must fit the canvas)"
        )
    makes_the_data = data.train_source == "moving_digits" or (
        synth.root is not None and Path(synth.root) == Path(data.root)
    )
    if not makes_the_data:
        return
    used = data.num_input_frames + data.num_output_frames
    if synth.num_frames < used:
        raise ConfigError(
            f"'data.synthesize.num_frames' is {synth.num_frames}; expected at least "
            f"num_input_frames + num_output_frames = {used}"
        )
    p = cfg.model.patch_size
    if synth.image_size % p:
        raise ConfigError(
            f"'data.synthesize.image_size' {synth.image_size} is not divisible by "
            f"'model.patch_size' {p}"
        )
    # one rank's optimizer steps per epoch, as the train sources count them (more ranks
    # only make fewer): none is an error the stream would raise after generating the data
    batch, accum = data.batch_size, cfg.trainer.gradient_accumulation_steps
    if data.train_source == "shards":
        workers = max(1, cfg.trainer.num_workers or 0)  # each worker batches its own share
        batches = workers * ((synth.train // workers) // batch)
        takes = f"{workers} worker(s) × batch {batch}, accumulation {accum}"
    else:
        batches, takes = synth.train // batch, f"batch {batch} × accumulation {accum}"
    if batches < accum:
        raise ConfigError(
            f"'data.synthesize.train' is {synth.train}: too few sequences for one optimizer "
            f"step ({takes})"
        )
    check_frame_size(cfg.model, synth.image_size, synth.image_size, "data.synthesize.image_size")


def check_frame_size(model: ModelConfig, height: int, width: int, origin: str) -> None:
    """Neighbourhood sizes and LPIPS against a frame of height × width (from `origin`)."""
    evaluation = model.evaluation
    if evaluation.score_convention == "earthformer":  # drops partial blocks: one must fit
        too_big = [p for p in evaluation.csi_pool_sizes if p > min(height, width)]
        if too_big:
            raise ConfigError(
                f"'model.evaluation.csi_pool_sizes' holds {too_big}, larger than the "
                f"{height}×{width} frame ({origin}): with score_convention earthformer no "
                "whole block fits; expected sizes up to the shorter side"
            )
    if evaluation.lpips_weights and min(height, width) < 31:  # AlexNet's smallest input
        raise ConfigError(
            f"'model.evaluation.lpips_weights' is set but frames are {height}×{width} "
            f"({origin}); LPIPS needs at least 31×31"
        )


def _backbone_class(model: ModelConfig) -> Any:
    """The class `model.name` names (registry or import path); a ConfigError if none."""
    from . import plugins
    from .models import BACKBONES, available

    if plugins.is_import_path(model.name):
        try:
            return plugins.resolve_model(model.name)
        except (ImportError, TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
    if model.name not in BACKBONES:
        module, dot, cls = model.name.rpartition(".")
        # LightningCLI's dotted class path: stpdist's import paths name the class after a colon
        hint = f" (did you mean {module}:{cls}?)" if dot and module and cls else ""
        if not hint:  # a short name: perhaps one another process gave stpdist.models.register
            from .models.base import REGISTERED_HINT as hint
        raise ConfigError(
            f"'model.name' is {model.name!r}; expected one of {', '.join(available())} "
            f"or an import path package.module:Class{hint}"
        )
    return BACKBONES[model.name]


FORECASTER_ONLY = ("patch_size", "loss", "loss_frames", "divergence_weight",
                   "divergence_form", "optimizer", "schedule", "sampling", "evaluation")  # fmt: skip
"""`model` keys the Forecaster reads and a task of the user's own (an EnhancedModule named
by `model.name`, built from `model.backbone` alone) never sees: its hooks decide them."""


def _changed_keys(value: Any, default: Any, prefix: str) -> list[str]:
    """The dotted keys under `prefix` where `value` (a config dataclass or a leaf) differs
    from `default`."""
    if not dataclasses.is_dataclass(value) or type(value) is not type(default):
        return [] if value == default else [prefix]
    return [
        key
        for f in dataclasses.fields(value)
        for key in _changed_keys(
            getattr(value, f.name), getattr(default, f.name), f"{prefix}.{f.name}"
        )  # fmt: skip
    ]


def _check_task_takes_no_forecaster_settings(model: ModelConfig) -> None:
    """Refuse `FORECASTER_ONLY` settings given to a task of the user's own, naming them: it
    never reads them (an lr of 0.5 in the config trained at the module's own 0.01, silently)."""
    default = ModelConfig(name=model.name)
    changed = [
        key
        for name in FORECASTER_ONLY
        for key in _changed_keys(getattr(model, name), getattr(default, name), f"model.{name}")
    ]
    if changed:
        raise ConfigError(
            f"{', '.join(repr(k) for k in changed)}: settings of stpdist's Forecaster, which "
            f"'{model.name}' (an EnhancedModule of its own, built from model.backbone alone) "
            "never reads: its own hooks (configure_optimizer, configure_lr_scheduler, "
            "training_step) decide them; remove them, or pass them through model.backbone"
        )


def _check_task_fits_backbone(cfg: Config, saved: bool = False) -> None:
    """Forecaster settings that apply to frame-recurrent backbones only, refused here
    instead of when the model is built (after the data are read or generated)."""
    from . import plugins
    from .models.recurrent import FrameRecurrent

    cls = _backbone_class(cfg.model)
    if plugins.is_task(cls):
        if not saved:  # a checkpoint's config.yaml of an earlier stpdist, read as written
            _check_task_takes_no_forecaster_settings(cfg.model)
        return
    if not isinstance(cls, type) or issubclass(cls, FrameRecurrent):
        return
    name = cfg.model.name
    for key, value, default in (
        ("model.sampling.mode", cfg.model.sampling.mode, "none"),
        ("model.loss_frames", cfg.model.loss_frames, "outputs"),
        ("trainer.activation_checkpointing", cfg.trainer.activation_checkpointing, False),
    ):
        if value != default:
            own = (
                ", or build it on FrameRecurrent (the own-model guide shows how)"
                if plugins.is_import_path(name)
                else ""
            )
            raise ConfigError(
                f"'{key}' is {value!r}, which applies to frame-recurrent backbones only (built "
                "on stpdist.models.recurrent.FrameRecurrent, whose frame loop feeds "
                f"predictions back); '{name}' is not one: expected {default!r}{own}"
            )


def _strict_bools(values: dict, bool_fields: set[str], prefix: str) -> None:
    """OmegaConf turns any int (2 → True) or a word like "yes" into a bool: for the fields
    in `bool_fields`, only YAML's booleans or the words true/false pass."""
    for name in bool_fields & set(values):
        value = values[name]
        if value is not None and not _is_bool(value):  # None: the schema says if it may be
            raise ConfigError(f"'{prefix}{name}' is {value!r}; expected true or false")


def _check_bools(raw: Any, cls: type, prefix: str = "") -> None:
    """`_strict_bools` over every section of schema `cls` present in the plain mapping
    `raw` (its keys named with `prefix`)."""
    for section, name, value in _sections(raw, _schema_bools(cls)):
        _strict_bools({name: value}, {name}, prefix + section)


def _is_bool(value: Any) -> bool:
    if isinstance(value, bool) or _is_interpolation(value):
        return True
    return isinstance(value, str) and value.lower() in ("true", "false")


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def architecture_difference(
    ours: ModelConfig, theirs: dict[str, Any]
) -> tuple[str, Any, Any] | None:
    """The first key in which the `model` section `theirs` (a mapping read from another
    run's config.yaml) describes another architecture than `ours` — the backbone's name,
    the patch size, or a backbone argument with defaults filled in, dropout rates aside (a
    fine-tuning changes them routinely) — as (dotted key, their value, ours); None when both
    build the same layers."""
    defaults = type(ours)()
    for key in ("name", "patch_size"):
        if theirs.get(key, getattr(defaults, key)) != getattr(ours, key):
            return f"model.{key}", theirs.get(key, getattr(defaults, key)), getattr(ours, key)
    other = dataclasses.replace(ours, backbone=theirs.get("backbone") or {})
    mine, their_args = (_fields_of(backbone_config(model)) for model in (ours, other))
    for key in sorted(set(mine) | set(their_args)):
        if "drop" in key:  # dropout, drop path: regularisation, no layer of its own
            continue
        if mine.get(key) != their_args.get(key):
            return f"model.backbone.{key}", their_args.get(key), mine.get(key)
    return None


def _fields_of(args: object) -> dict:
    return dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(args)


_EMPTY_BACKBONE = (
    "; an override merges into model.backbone, keeping the config's other keys: another "
    "model's keys are dropped by starting it empty, 'model.backbone={}'"
)


def backbone_config(model: ModelConfig) -> Any:
    """`model.backbone` as the typed `Args` of backbone `model.name` (or, for a class given
    by import path without `Args`, checked against its constructor); an unknown name, key
    or a value of the wrong type is a ConfigError naming the valid ones."""
    from . import plugins

    cls = _backbone_class(model)
    if plugins.is_import_path(model.name) and not plugins.is_task(cls):
        try:
            plugins.check_backbone_forward(cls)
        except TypeError as exc:
            raise ConfigError(f"'model.name' {model.name}: {exc}") from exc
    args_cls = getattr(cls, "Args", None)
    if args_cls is not None and not dataclasses.is_dataclass(args_cls):
        raise ConfigError(  # (the keywords' check said "missing a required argument: 'args'")
            f"'model.name' {model.name}: its Args is not a dataclass; model.backbone is read "
            "into it as a schema: decorate it with @dataclasses.dataclass"
        )
    if not dataclasses.is_dataclass(args_cls):
        leading = () if plugins.is_task(cls) else (None,)  # a backbone gets the FrameSpec first
        try:
            plugins.check_keywords(cls, dict(model.backbone), *leading)
        except TypeError as exc:
            hint = _EMPTY_BACKBONE if "unexpected keyword" in str(exc) else ""
            raise ConfigError(f"'model.backbone' does not fit {model.name}: {exc}{hint}") from exc
        return dict(model.backbone)
    hints = typing.get_type_hints(args_cls)
    bools = {f.name for f in dataclasses.fields(args_cls) if hints[f.name] is bool}
    _strict_bools(dict(model.backbone), bools, "model.backbone.")
    # a text field given a YAML boolean or a number (`translator: no`): said as such (a
    # config review: the built model failed on "argument of type 'bool' is not iterable")
    for name in (f.name for f in dataclasses.fields(args_cls) if hints[f.name] is str):
        value = dict(model.backbone).get(name)
        if isinstance(value, bool | float):
            kind = "boolean" if isinstance(value, bool) else "number"
            raise ConfigError(
                f"'model.backbone.{name}' is {value!r}, a YAML {kind} where text is expected: "
                "quote it"
            )
    # a list given as text ("8,8"): OmegaConf's error would name neither it nor a list
    _check_shapes(dict(model.backbone), args_cls, "model.backbone.")
    schema = _schema(args_cls)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(schema, model.backbone))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        first_line = str(exc).splitlines()[0]
        valid = ", ".join(schema.keys())
        raise ConfigError(
            f"'model.backbone.{key}': {first_line} (model '{model.name}' takes: {valid})"
            f"{_EMPTY_BACKBONE if 'not in' in first_line else ''}"
        ) from exc
    check_values(typed, "model.backbone.")
    if model.name in _builtin_backbones():
        _check_builtin_args(typed)
    return typed


def _builtin_backbones() -> dict[str, Any]:
    from .models import BACKBONES

    return BACKBONES


MOST_BACKBONE_UNITS = 65536
"""Channels, kernel sizes, layers, heads of a built-in backbone: beyond it, a typo that
would allocate more memory than any machine has."""


def _check_builtin_args(args: Any) -> None:
    """Every integer argument of the built-in backbones (channels, kernels, layers, heads,
    windows, strides) counts something: each must be in [1, MOST_BACKBONE_UNITS]."""
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        values = value if isinstance(value, list) else [value]
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if any(not 1 <= v <= MOST_BACKBONE_UNITS for v in ints):
            raise ConfigError(
                f"'model.backbone.{f.name}' is {value!r}; expected "
                f"{'each ' if isinstance(value, list) else ''}an integer in "
                f"[1, {MOST_BACKBONE_UNITS}]"
            )


@functools.lru_cache(maxsize=8)
def _schema_bools(cls: type) -> dict[str, set[str]]:
    """{section prefix: names of its bool fields} over the whole schema, Optional sections
    included (`data.synthesize`)."""
    return _schema_fields(cls, bool)


def _schema_texts(cls: type) -> dict[str, set[str]]:
    """{section prefix: names of its text fields (str, Optional[str], list[str])}."""
    return _schema_fields(cls, str)


@functools.lru_cache(maxsize=64)
def _schema_fields(cls: type, kind: type, prefix: str = "") -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        section = inner[0] if typing.get_origin(hint) is typing.Union and inner else hint
        if typing.get_origin(section) is list and typing.get_args(section) == (str,):
            section = str  # list[str]: its items
        if dataclasses.is_dataclass(section):
            found.update(_schema_fields(section, kind, f"{prefix}{f.name}."))
        elif section is kind:  # Optional[kind] too
            found.setdefault(prefix, set()).add(f.name)
    return found


def _sections(raw: Any, table: dict[str, set[str]]) -> Iterator[tuple[str, str, Any]]:
    """(prefix, name, value) of the fields of `table` present in the plain mapping `raw`."""
    for prefix, names in table.items():
        section: Any = raw
        for part in filter(None, prefix.split(".")):
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            for name in sorted(names & set(section)):
                yield prefix, name, section[name]


def _without_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _check_texts(raw: Any, origin: str) -> None:
    """A text field given a YAML boolean: YAML reads yes/no/on/off/true/false unquoted as
    booleans, and the field then held 'True' or 'False' (a wandb name `no` became 'False',
    a monitor `true` 'True')."""
    quote = "quote it"
    found = re.fullmatch(r"override '([^=']+)=([^']*)'", origin)
    if found:  # the shell takes the quotes a command line gives (a diff review)
        value = found[2].strip()
        if value.startswith("[") and value.endswith("]"):  # each item quoted, not the list
            value = "[" + ",".join(f"'{v.strip()}'" for v in value[1:-1].split(",")) + "]"
        else:
            value = f"'{value}'"
        quote = f'quote it for YAML inside the shell\'s quotes: "{found[1]}={value}"'
    for prefix, name, value in _sections(raw, _schema_texts(Config)):
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, bool) for item in items):
            raise ConfigError(
                f"{origin}: '{prefix}{name}' is {value!r}, a YAML boolean where text is "
                "expected (YAML reads yes, no, on, off, true and false unquoted as booleans): "
                f"{quote}"
            )
        # a float is not the text it was written as (0.10 became the folder 0.1, 1e3 the
        # name 1000.0: a config review); an integer's digits are
        if any(isinstance(item, float) for item in items):
            raise ConfigError(
                f"{origin}: '{prefix}{name}' is {value!r}, a number where text is expected "
                f"(YAML reads an unquoted 0.10 as 0.1, 1e3 as 1000.0): {quote}"
            )


_YAML11_NUMBER = re.compile(
    r"[-+]?(0[0-7_]+|0x[0-9a-fA-F_]+|0b[01_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)"
)
"""Numbers YAML 1.1 reads otherwise than they read: 0123 (octal 83), 1:30 (sexagesimal 90;
1:30.5 as 90.5), 0x10, 0b11."""
_YAML_VALUE_IN_LINE = re.compile(r"^[^#'\"]*?:\s+([^\s#'\"\[\]{},]+)\s*(#.*)?$")


def _check_yaml11_numbers(text: str, origin: str, lines: bool) -> None:
    """An unquoted octal, hex, binary or sexagesimal number (see `_YAML11_NUMBER`) in a
    YAML file (`lines`) or an override's value, as a block value, in a flow mapping or a
    list: refused, saying how it reads, rather than training with `trainer.seed=0123` as
    seed 83."""
    found = [
        (line, value)
        for value, line in _plain_values(text, lines)
        if _YAML11_NUMBER.fullmatch(value) and value != "0"
    ]
    if found:
        line, value = min(found)
        where = f"{origin}, line {line}" if lines else origin
        raise ConfigError(
            f"{where}: {value} is read by YAML as a number in another notation (octal, "
            "hex, binary or base 60: 0123 is 83, 1:30 is 90); write a plain decimal "
            "number, or quote it for text"
        )


_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
"""The tags YAML gives the plain scalars it reads as numbers."""


def _plain_values(text: str, lines: bool) -> list[tuple[str, int]]:
    """(text, line) of every unquoted scalar value a YAML document reads as a number
    (mapping keys left out), from its node graph; text YAML cannot parse (OmegaConf's own
    grammar, an interpolation in an override) is scanned a `key: value` line at a time."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        if not lines:
            return [(text.strip(), 1)]
        rows = enumerate(text.splitlines(), 1)
        return [(m.group(1), n) for n, row in rows if (m := _YAML_VALUE_IN_LINE.match(row))]
    found, stack, seen = [], [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias: the node of its anchor, walked once
            continue
        seen.add(id(node))
        # plain, and read as a number (`!!str 0123` and `08:00` are text: YAML 1.1 reads
        # base 60 from a first digit of 1–9 only)
        if isinstance(node, yaml.ScalarNode) and node.style is None and node.tag in _NUMBERS:
            found.append((node.value, node.start_mark.line + 1))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(value for _, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return found


@functools.lru_cache(maxsize=64)
def _schema(cls: type) -> DictConfig:
    """The structured schema of dataclass `cls`, built once: merges copy it, never change it
    (building one is most of a `load_config`'s time)."""
    return OmegaConf.structured(cls)


_EARLIER_MODEL_KEYS = {
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "lr_schedule": "schedule.name",
    "warmup_steps": "schedule.warmup_steps",
    "total_steps": "schedule.total_steps",
    "scheduled_sampling": "sampling.mode",
    "sampling_start": "sampling.start",
    "sampling_decay": "sampling.decay",
    "sampling_stop_step": "sampling.stop_step",
    "reverse_sampling_steps": "sampling.reverse_steps",
    "reverse_sampling_alpha": "sampling.reverse_alpha",
    "clamp_output": "evaluation.clamp_output",
    "metric_thresholds": "evaluation.metric_thresholds",
}
"""`model` keys of the config layout before 2026-12-03 → where they are now (under `model`)."""


def in_todays_layout(text: str, origin: str) -> str | None:
    """A config file's text in today's layout when it is in the layout before 2026-12-03
    (`_from_earlier_layout`, quietly: its reader has said so), else None. Values stay as
    written (`${oc.env:…}` kept as text)."""
    try:
        overlay = OmegaConf.create(text)  # YAML text, interpolations kept as written
    except Exception:  # not YAML, not a mapping: its reader said why
        return None
    if not isinstance(overlay, DictConfig):
        return None
    migrated = _from_earlier_layout(overlay, origin, quiet=True)
    return None if migrated is overlay else OmegaConf.to_yaml(migrated)


def _wandb_disabled_today(overlay: DictConfig, origin: str) -> DictConfig:
    """`logging.wandb.mode: disabled` beside `logging.trackers` (today's layout, where the
    mode is online or offline): with wandb among the trackers, refused (it was read as the
    earlier layout's, its mode dropped, and a wandb run made: a config review); without,
    no wandb run either way, and the mode goes (a diff review: refused)."""
    raw = OmegaConf.to_container(overlay, resolve=False)
    logging_ = raw.get("logging") if isinstance(raw, dict) else None
    wandb = logging_.get("wandb") if isinstance(logging_, dict) else None
    if not (isinstance(wandb, dict) and wandb.get("mode") == "disabled" and "trackers" in logging_):
        return overlay
    trackers = logging_["trackers"]
    if isinstance(trackers, list) and "wandb" in trackers:
        raise ConfigError(
            f"{origin}: logging.wandb.mode is 'disabled' beside logging.trackers: leave wandb "
            "out of logging.trackers for no wandb run (or set WANDB_MODE=disabled)"
        )
    del wandb["mode"]
    return OmegaConf.create(raw)


def _from_earlier_layout(overlay: DictConfig, origin: str, quiet: bool = False) -> DictConfig:
    """A config file in the layout before 2026-12-03 (a checkpoint's or run's config.yaml
    from then, or the user's own), read in today's: `model.optimizer: adam` and `model.lr`
    became `model.optimizer.{name,lr}`, the schedule, sampling and evaluation keys moved
    into their sections, PredRNN.V2's `model.aux_loss_weight` became its backbone's
    `decouple_weight` (others ignored it), `logging.wandb.mode: online`/`offline` (wandb on)
    and `disabled` (off) became `logging.trackers` with or without wandb, and
    `logging.wandb.log_every_n_steps` became `logging.trackers_every_n_steps`. Said in one line naming the keys; a file in today's
    layout is returned as it is."""
    raw = OmegaConf.to_container(overlay, resolve=False)
    model = raw.get("model") if isinstance(raw, dict) else None
    logging_ = raw.get("logging") if isinstance(raw, dict) else None
    wandb = logging_.get("wandb") if isinstance(logging_, dict) else None
    earlier = isinstance(model, dict) and (
        isinstance(model.get("optimizer"), str)
        or set(model) & {*_EARLIER_MODEL_KEYS, "aux_loss_weight"}
    )
    # `disabled` beside `logging.trackers` is today's (no wandb run; a config review: read
    # as the earlier layout's, the mode went and a wandb run was made)
    earlier_wandb = isinstance(wandb, dict) and (
        (wandb.get("mode") == "disabled" and "trackers" not in logging_)
        or "log_every_n_steps" in wandb
    )
    if not (earlier or earlier_wandb):
        return overlay
    moved = []
    if earlier:
        if isinstance(model.get("optimizer"), str):
            model["optimizer"] = {"name": model["optimizer"]}
            moved.append("model.optimizer → model.optimizer.name")
        for key, now in _EARLIER_MODEL_KEYS.items():
            if key in model:
                section, name = now.split(".")
                model.setdefault(section, {})[name] = model.pop(key)
                moved.append(f"model.{key} → model.{now}")
        if "aux_loss_weight" in model:
            weight = model.pop("aux_loss_weight")
            if model.get("name") == "predrnnv2":
                model.setdefault("backbone", {}).setdefault("decouple_weight", weight)
                moved.append("model.aux_loss_weight → model.backbone.decouple_weight")
            else:
                moved.append("model.aux_loss_weight left out (only PredRNN.V2 read it)")
    if isinstance(wandb, dict) and wandb.get("mode") in ("online", "offline"):
        # then wandb was on whenever its mode said so; now when `logging.trackers` names it
        trackers = logging_.setdefault("trackers", [])
        if isinstance(trackers, list) and "wandb" not in trackers:
            trackers.append("wandb")
            moved.append(f"logging.wandb.mode {wandb['mode']} → logging.trackers [wandb]")
    if earlier_wandb:
        if wandb.get("mode") == "disabled" and "trackers" not in logging_:
            del wandb["mode"]  # no wandb: the tracker is not in `logging.trackers`
            moved.append("logging.wandb.mode disabled → no wandb tracker")
        if "log_every_n_steps" in wandb:
            logging_["trackers_every_n_steps"] = wandb.pop("log_every_n_steps")
            moved.append("logging.wandb.log_every_n_steps → logging.trackers_every_n_steps")
    if not quiet:
        from .console import warn_main

        warn_main("%s is in the config layout before 2026-12-03; read as today's: %s", origin,
                  ", ".join(moved))  # fmt: skip
    return OmegaConf.create(raw)


def _check_overlay(overlay: DictConfig, origin: str) -> None:
    """What merging would hide, checked on a YAML file or override before it is merged:
    OmegaConf's `???` (merging it keeps the default: `lr: ???` would silently train with
    1e-3), a section, mapping or list given a value of another shape (the merge's error
    names no key) and a bool field given anything but a boolean (merging turns 2 into
    true)."""
    raw = OmegaConf.to_container(overlay, resolve=False)  # interpolations as their text
    missing = [path for path, value in _leaf_values(raw) if value == "???"]
    if missing:
        raise ConfigError(
            f"{origin}: '{_dotted(missing[0])}' is ??? (OmegaConf's marker for a value not "
            "given yet); expected a value"
        )
    try:
        _check_shapes(raw, Config)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    _check_texts(raw, origin)
    try:
        _check_bools(raw, Config)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


_WORDS_YAML_READS_AS_BOOLEANS = {
    ("trainer", "mixed_precision"): {False: "no"},
    ("model", "fused_kernels"): {True: "on", False: "off"},
}
"""YAML 1.1 reads `no`, `off` (and `false`) as false and `on` (and `yes`, `true`) as true:
`mixed_precision: no` means "no", `fused_kernels: on` means "on"."""


def _words_back(node: DictConfig) -> DictConfig:
    for (section, key), words in _WORDS_YAML_READS_AS_BOOLEANS.items():
        part = node.get(section) if isinstance(node, DictConfig) else None
        value = part.get(key, None) if isinstance(part, DictConfig) else None
        if isinstance(value, bool) and value in words:
            part[key] = words[value]
    return node


def _file_overlay(path: Path) -> DictConfig:
    """A config file's mapping, checked (YAML errors, numbers in other notations, an empty
    file, keys), in today's layout."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; expected a YAML config file")
    if path.exists() and not path.is_file():  # /dev/stdin, <(…): an MLOps review said "not found"
        raise ConfigError(
            f"{path} is no regular file (a pipe or device); write the config to a file and "
            "give its path"
        )
    if not path.is_file():
        from .recipes import hint

        order = " (the config file comes first, the key=value overrides after it)"
        said = order if "=" in str(path) else hint(path)
        raise ConfigError(f"config file not found: {path}{said}")
    try:
        overlay = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors come in several types
        raise _yaml_error(str(path), exc) from exc
    _check_yaml11_numbers(path.read_text(errors="replace"), str(path), lines=True)
    if overlay is None or not isinstance(overlay, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    if not overlay and "{" not in _without_comments(path.read_text(errors="replace")):
        # a truncated file or the wrong one ran every default (a config review)
        raise ConfigError(
            f"{path} is empty or holds only comments; expected a mapping of sections "
            "(trainer, data, model, logging); a file holding {} takes every default"
        )
    overlay = _from_earlier_layout(_wandb_disabled_today(overlay, str(path)), str(path))
    _check_overlay(overlay, str(path))
    return overlay


def _override_overlay(item: str, merged: DictConfig) -> DictConfig:
    """One `key=value` override as a mapping, checked as a file's is; `merged`: the config
    so far (to give the whole list where one item of a list was set)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    if not all(item.partition("=")[0].strip().split(".")):
        raise ConfigError(f"override {item!r}: its key has an empty part; expected key.path=value")
    key, _, value = (part.strip() for part in item.partition("="))
    if key == "logging.wandb.mode" and value == "disabled":  # said (a diff review)
        raise ConfigError(
            f"override {item!r}: the mode is online or offline; for no wandb run leave wandb "
            "out of logging.trackers (logging.trackers=[]) or set WANDB_MODE=disabled"
        )
    try:
        dotted = OmegaConf.from_dotlist([item])
    except Exception as exc:
        raise _yaml_error(f"override {item!r}", exc) from exc
    _check_yaml11_numbers(item.partition("=")[2], f"override {item!r}", lines=False)
    try:
        _check_overlay(dotted, f"override {item!r}")
    except ConfigError as exc:  # `reverse_steps[0]=7` read as a mapping {"0": 7}
        raise _list_item_error(merged, item) or exc from None
    return dotted


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, saved: bool = False
) -> Config:
    """Schema defaults ← YAML file at `path` ← dotted `overrides` (`a.b=value`). `saved`:
    a config a run saved (a checkpoint's or model folder's), read to rebuild its model:
    the checks of what only a training reads and that earlier versions did not make are
    left out (`_check_for_training`)."""
    schema = _schema(Config)
    merged = schema
    sources: list[tuple[str, DictConfig]] = []  # (origin, overlay): who set a key, for errors
    if path is not None:
        path = Path(path)
        overlay = _file_overlay(path)
        sources.append((str(path), overlay))
        try:
            merged = OmegaConf.merge(merged, _words_back(overlay))
        except OmegaConfBaseException as exc:
            raise _error(schema, exc, str(path)) from exc
        except (TypeError, ValueError) as exc:  # e.g. a list where a mapping belongs
            raise ConfigError(f"{path}: {exc}") from exc
    for item in overrides or []:
        dotted = _override_overlay(item, merged)
        sources.append((f"override {item!r}", dotted))
        try:
            merged = OmegaConf.merge(merged, _words_back(dotted))
        except OmegaConfBaseException as exc:
            raise _list_item_error(merged, item) or _error(
                schema, exc, f"override {item!r}"
            ) from exc
        except (TypeError, ValueError) as exc:  # e.g. a list where a mapping belongs
            key = item.partition("=")[0]
            raise _list_item_error(merged, item) or ConfigError(
                f"override {item!r}: bad value for '{key}': {exc}"
            ) from exc
        # `model.backbone={}` empties a free-form mapping (a merge would keep every key)
        key, _, value = (part.strip() for part in item.partition("="))
        node = OmegaConf.select(merged, key) if value == "{}" else None
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:
            OmegaConf.update(merged, key, {}, merge=False)
    unresolved = _environment_interpolations(merged)
    _check_interpolated_bools(merged)
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raw = OmegaConf.to_container(merged, resolve=False)
        shaped = _interpolated_section_error(raw, Config, "", merged)
        origin = _origin_of(sources, getattr(exc, "full_key", None))
        raise shaped or _error(schema, exc, origin) from exc
    _expand_home(cfg)
    _check_config(cfg, saved)
    cfg.__dict__[_UNRESOLVED] = unresolved  # not a field: no schema key, no equality
    return cfg


def _origin_of(sources: list[tuple[str, DictConfig]], key: str | None) -> str:
    """Where `key` was last set: the override or file (`load_config`'s `sources`, in the
    order merged) whose overlay holds it; "config" when none does (a default)."""
    for origin, overlay in reversed(sources if key else []):
        node: Any = OmegaConf.to_container(overlay, resolve=False)  # not resolved: it fails
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            return origin
    return "config"


_ABSENT = object()


def _check_interpolated_bools(merged: DictConfig) -> None:
    """A bool field given an interpolation, checked as its value: the typed merge turned
    `${oc.env:FLAG}` with FLAG=2 or y, or `${data.batch_size}`, into true, where the same
    value written out is refused."""
    raw = OmegaConf.to_container(merged, resolve=False)
    interpolated = [
        (prefix, name, value)
        for prefix, name, value in _sections(raw, _schema_bools(Config))
        if _is_interpolation(value)
    ]
    if not interpolated:
        return
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except Exception:  # noqa: BLE001 - unresolvable: the typed conversion says why
        return
    values = {(p, n): v for p, n, v in _sections(resolved, _schema_bools(Config))}
    for prefix, name, text in interpolated:
        value = values.get((prefix, name))
        if value is not None and not _is_bool(value):
            raise ConfigError(f"'{prefix}{name}' is {text} = {value!r}; expected true or false")


def _expand_home(cfg: Config) -> None:
    """`~` and `~user` at the start of a path setting are the home folder, as in a shell:
    `trainer.output_dir: ~/runs/x` wrote into a folder named `~` in the current one."""
    holders = [
        (cfg.trainer, "output_dir"),
        (cfg.data, "root"),
        (cfg.model, "init_weights"),
        (cfg.model.evaluation, "lpips_weights"),
    ]
    if cfg.data.synthesize is not None:
        holders += [(cfg.data.synthesize, "root"), (cfg.data.synthesize, "digits")]
    for holder, name in holders:
        value = getattr(holder, name)
        if isinstance(value, str) and value.startswith("~"):
            setattr(holder, name, os.path.expanduser(value))


# ------------------------------------------------------------ saved forms, secrets kept out
# A value read from the environment (`${oc.env:API_KEY}`) may be a secret: the saved forms
# of a config (config.yaml in the run folder and every checkpoint, the trackers' config)
# hold the interpolation's text instead of its value, and so does every interpolation that
# refers to such a value. Loading a saved config resolves them again (the variable must
# then be set). Other interpolations are saved resolved.

_UNRESOLVED = "_unresolved_interpolations"
_REFERENCE = re.compile(r"\$\{\s*([^}:$\s]+)\s*\}")  # ${a.b}: a plain node reference
_NAMES_IN_RESOLVERS = re.compile(r"[:,]\s*([A-Za-z_][\w.]*)")  # ${oc.select:a.b,default}


def _leaf_values(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path of keys and list indices, value) of every leaf of a plain container."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return [(path, node)]
    return [leaf for key, value in items for leaf in _leaf_values(value, (*path, key))]


def _interpolations(container: Any) -> dict[tuple, str]:
    """{path: interpolation text} in a plain container."""
    return {path: v for path, v in _leaf_values(container) if _is_interpolation(v)}


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _environment_interpolations(merged: DictConfig) -> dict[tuple, str]:
    """The interpolations whose values come from the environment, directly or through
    references to others that do."""
    every = _interpolations(OmegaConf.to_container(merged, resolve=False))
    kept = {path: text for path, text in every.items() if "oc.env" in text}
    grew = bool(kept)
    while grew:
        grew = False
        names = [_dotted(path) for path in kept]
        for path, text in every.items():
            if path in kept:
                continue
            # plain references and the dotted names a resolver is given (oc.select's): a
            # secret reached through `${oc.select:logging.wandb.entity}` was saved resolved
            refs = _REFERENCE.findall(text) + _NAMES_IN_RESOLVERS.findall(text)
            # a relative reference (${.x}) is kept unresolved too: saving it is always safe
            relative = any(ref.startswith(".") for ref in refs)
            if relative or any(r.startswith(n) or n.startswith(r) for r in refs for n in names):
                kept[path], grew = text, True
    return kept


def to_dict(cfg: Config, *, as_text: bool = False) -> dict[str, Any]:
    r"""The config as plain nested dicts, as it is saved: resolved, except values read from
    the environment, which keep their interpolation text (`${oc.env:NAME}`). `as_text`:
    a resolved value's literal `${` escaped (`\${`), so that the text loads back as that
    value (a config's escaped `\${…}` was saved bare, and its run could not resume)."""
    plain = dataclasses.asdict(cfg)
    if as_text:
        plain = _literal(plain)
    for path, text in getattr(cfg, _UNRESOLVED, {}).items():
        node = plain
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = text
        except (KeyError, IndexError, TypeError):  # the config was changed since: no such node
            continue
    return plain


def environment_values(cfg: Config) -> dict[str, Any]:
    """The values read from the environment that make the run (`trainer`, `data`, `model`
    keys: the architecture, the data, the folders), by dotted key, as this process resolved
    them; the saved config keeps their interpolations, which say nothing of the values a
    run used (an MLOps review). `logging` values (a wandb entity) and keys named like a
    secret are left out."""
    plain = dataclasses.asdict(cfg)
    found: dict[str, Any] = {}
    for path in getattr(cfg, _UNRESOLVED, {}):
        dotted = _dotted(path)
        if path[0] not in ("trainer", "data", "model") or re.search(
            r"key|token|secret|password", dotted, re.I
        ):
            continue
        node: Any = plain
        try:
            for part in path:
                node = node[part]
        except (KeyError, IndexError, TypeError):
            continue
        found[dotted] = node
    return found


def to_yaml(cfg: Config) -> str:
    """The config as YAML (saved beside every run and in every checkpoint), as `to_dict`:
    resolved except values read from the environment."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg, as_text=True)))
