"""From a resolved Config to the pieces a run needs: dataset, streams, module."""

from __future__ import annotations

import contextlib
import fcntl
import linecache
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import plugins
from .checkpoint import MODEL_FILE, CheckpointManager, describing_config
from .config import Config, ConfigError
from .console import log, quiet, say, warn_main
from .data.convert import generation_advice, occupied_advice, output_named
from .data.format import (
    INDEX_FILE,
    SplitIndex,
    read_climatology,
    read_index,
    same_units,
    units_text,
    unlisted_shards,
    variable_names,
)
from .data.normalize import Normalizer
from .data.onthefly import MovingDigitsTrainSource
from .data.staging import holds_working_folder, recover
from .data.stream import ShardEvalStream, ShardTrainStream
from .data.synthetic import synthesized_differently, write_moving_digits
from .errors import InputError, MissingInput, alike
from .metrics import SSIM_WINDOW, GeoInfo
from .models.base import UntrustedImportPath
from .module import EnhancedModule
from .task import Forecaster
from .trainer import Trainer


def split_dir(cfg: Config, split: str) -> Path:
    return Path(cfg.data.root) / split


def ensure_dataset(cfg: Config, trainer: Trainer, *, synthesize: bool = False) -> None:
    """Make sure `data.root` holds a dataset: generate synthetic moving digits into it (on
    the main process, the others waiting) when `data.synthesize` is for this root or
    `synthesize` is asked for; otherwise a missing dataset is an error saying what to do.
    Two runs started at once on one absent `data.root` generate it once: the main process
    generates under a lock beside the root (`generation_lock`), and a run that waited for
    it trains on what the other generated."""
    root, synth = Path(cfg.data.root), cfg.data.synthesize
    on_the_fly = cfg.data.train_source == "moving_digits"  # no train shards: val is needed
    needed = cfg.data.val_split if on_the_fly else cfg.data.train_split
    index = split_dir(cfg, needed) / INDEX_FILE
    generates = synth is not None and (synthesize or (synth.root and Path(synth.root) == root))
    if generates and not index.is_file():  # on every rank: the others wait for no main
        _check_root_before_generating(root)
        _check_model_before_generating(cfg)  # a refusal said by the main rank (as a config
        # error is), not one rank's error and another's "a rank stopped" from its barrier
    if not generates and not index.is_file():
        # on every rank, before the wait: a missing dataset said by the main rank (the
        # others, left in the wait, said "a rank stopped; resume with --resume auto")
        recover(root)  # a `shard` that crashed while it replaced the dataset (any rank)
        if not index.is_file():
            raise alike(_no_dataset(cfg, root, needed))
    # the main process generates under a lock: taken before `recover`, which would find a
    # generating run's staging folder; the other ranks wait for the main one
    lock = trainer.is_main and generates and not index.is_file()
    with trainer.main_process_first(), generation_lock(root) if lock else contextlib.nullcontext():
        if lock and index.is_file():  # another run wrote it while this one waited for the lock
            say(f"using the dataset that another process wrote into {root} meanwhile")
            _warn_if_synthesized_differently(cfg, root, on_the_fly, meanwhile=True)
            return
        if not index.is_file():
            recover(root)  # a `shard` that crashed while it replaced the dataset
        if index.is_file():
            if trainer.is_main and synth is not None and synth.root is not None:
                _warn_if_synthesized_differently(cfg, root, on_the_fly)
            return
        if not generates:  # gone meanwhile
            raise _no_dataset(cfg, root, needed)
        if trainer.is_main:
            say(f"generating synthetic moving digits into {root}")
            # train has no --overwrite: the advice names the split it lacks
            advice = occupied_advice(generation_advice(root, needed, on_the_fly))
            with advice, output_named("data.root"):
                write_moving_digits(
                    root,
                    _synth_counts(cfg, on_the_fly),
                    **_synth_settings(cfg),
                    workers=2,
                )


def _no_dataset(cfg: Config, root: Path, needed: str) -> MissingInput:
    """The error for a `data.root` without the `needed` split, saying what to do."""
    synth = cfg.data.synthesize
    where = f"data.root {root} holds no dataset (no {needed}/{INDEX_FILE})"
    convert = f"convert your data with `stpdist shard FORMAT SRC --out {root}`"
    if synth is None:
        return MissingInput(f"{where}; {convert} (formats: stpdist shard --help)")
    return MissingInput(
        f"{where}, and data.synthesize generates only into {synth.root}; pass "
        f"--synthesize to generate synthetic digits into {root}, or {convert} "
        "and set data.synthesize=null"
    )


def generation_lock_file(root: Path) -> Path:
    """The lock that serialises generation into `root`: beside it, never inside the
    dataset (which is swapped in as a whole)."""
    return root.parent / f".{root.name}.lock"


@contextlib.contextmanager
def generation_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `generation_lock_file(root)` for the block,
    waiting (with a line saying so) while another process holds it. The file is deleted
    on release; a waiter that then locked the deleted file tries again, so that two
    processes never hold the lock at once. Where the lock cannot be taken (a filesystem
    without flock, a folder this process cannot write) the block runs unlocked, as it did
    before the lock: generation then says its own error, if any."""
    path = generation_lock_file(Path(root))
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    fd = None
    try:
        fd = _lock(path, Path(root))
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)  # held: no other process is between its open and its lock
            os.close(fd)  # releases the lock
        for folder in made:  # made for the lock (innermost first), if nothing else is there
            with contextlib.suppress(OSError):
                folder.rmdir()


def _lock(path: Path, root: Path) -> int | None:
    """An open descriptor of `path` holding its flock, or None where none can be taken."""
    said = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:  # 0o666: the umask decides (a group's shared data folder)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except PermissionError:  # another user's lock: a flock needs reading alone
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:  # a read-only folder (or a link): generation says it
            log.debug("no generation lock %s: %s", path, exc)
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    say(
                        f"another process is generating the dataset in {root}; waiting for "
                        f"it (lock {path})"
                    )
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # no flock on this filesystem (ENOLCK, EOPNOTSUPP, ...)
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)  # nobody locks it there
            log.debug("no generation lock %s: %s", path, exc)
            return None
        except BaseException:  # Ctrl-C while waiting
            os.close(fd)
            raise
        try:  # the file locked is still the one at `path` (its holder deletes it)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _check_root_before_generating(root: Path) -> None:
    """`data.root` that is the working folder or holds it, refused by its key before any
    digit is drawn: the dataset is written beside it and swapped in as a whole, which would
    move the working folder away (`shard` says the same of its `--out`)."""
    if holds_working_folder(root):
        raise ConfigError(
            f"'data.root' is {root}, the current folder or one holding it; synthetic digits "
            "are generated into a folder of their own, swapped in as a whole: point data.root "
            "(and data.synthesize.root) to another folder"
        )


def _check_model_before_generating(cfg: Config) -> None:
    """A built-in backbone's refusal of its arguments (a ConfigError naming the key), said
    before the dataset is generated rather than minutes after: the model is built for the
    digits' frames on the meta device (no memory, no weights). Any other failure is left to
    the real build after generation, which says it with the data's own shape."""
    import torch

    if plugins.is_import_path(cfg.model.name):  # a user's code: built once, at its time
        return
    size = cfg.data.synthesize.image_size
    try:
        with torch.device("meta"), quiet():  # its warnings: said by the real build
            build_module(cfg, (1, size, size))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - said by the real build, after generation
        log.debug("model check before generating data: %r", exc)


def _synth_counts(cfg: Config, on_the_fly: bool) -> dict[str, int]:
    """Sequences to generate a split, by split name; a split named twice (a validation
    split that is the training split) keeps the first role's count, not the last's."""
    synth, counts = cfg.data.synthesize, {}
    counts.setdefault(cfg.data.train_split, 0 if on_the_fly else synth.train)
    counts.setdefault(cfg.data.val_split, synth.val)
    counts.setdefault(cfg.data.test_split, synth.test)
    return counts


def _synth_settings(cfg: Config) -> dict:
    synth = cfg.data.synthesize
    return {
        "seed": synth.seed,
        "num_frames": synth.num_frames,
        "image_size": synth.image_size,
        "num_digits": synth.num_digits,
        "digit_size": synth.digit_size,
        "digits_path": synth.digits,
    }


def _warn_if_synthesized_differently(
    cfg: Config, root: Path, on_the_fly: bool, *, meanwhile: bool = False
) -> None:
    """`data.synthesize` generates only when the data is absent: say so, once, when the
    digits in `root` were generated with other settings than the config's now.
    `meanwhile`: another run generated them while this one waited to (whatever
    `data.synthesize.root` is: this run would have generated into `root`)."""
    if not meanwhile and Path(cfg.data.synthesize.root) != root:
        return
    differs = synthesized_differently(
        root,
        _synth_counts(cfg, on_the_fly),
        **_synth_settings(cfg),
        advice=(
            "another run generated it while this one waited: training on it; to regenerate "
            f"it, delete {root} once no run uses it"
            if meanwhile
            else None
        ),
    )
    if differs is not None:
        log.warning(differs)


def describe_dataset(cfg: Config) -> bool:
    """Say once, at start: the splits and their sizes, which frames of each sequence are
    used, and when there is no validation split. Returns whether there is one."""
    d = cfg.data
    indexes = {}
    for split in dict.fromkeys((d.train_split, d.val_split, d.test_split)):
        if (split_dir(cfg, split) / INDEX_FILE).is_file():
            index = indexes[split] = read_index(split_dir(cfg, split))
            shape = "×".join(map(str, index.shape))
            say(f"{split}: {index.num_samples} sequences of T×C×H×W {shape} ({index.dtype})")
            unlisted = unlisted_shards(split_dir(cfg, split), index)
            if unlisted:
                warn_main(
                    "%s holds %d .tar file(s) its %s does not list, which are not read: %s (a "
                    "split's shards are those its index lists; `stpdist shard merge` joins "
                    "datasets)",
                    split_dir(cfg, split), len(unlisted), INDEX_FILE,
                    ", ".join(unlisted[:5]) + (" …" if len(unlisted) > 5 else ""),
                )  # fmt: skip
    _check_splits_alike(cfg, indexes)
    frames = dataset_index(cfg).shape[0]
    used = d.num_input_frames + d.num_output_frames
    if used < frames:
        say(
            f"each sequence holds {frames} frames; frames 0–{used - 1} are used "
            f"({d.num_input_frames} inputs → {d.num_output_frames} targets), "
            f"the last {frames - used} are not"
        )
    has_val = (split_dir(cfg, d.val_split) / INDEX_FILE).is_file()
    if has_val and split_dir(cfg, d.val_split).resolve() == split_dir(cfg, d.train_split).resolve():
        warn_main(
            "the validation split %s is the training split %s (%s): validation scores "
            "the data the model trains on, and checkpoints are chosen by them",
            d.val_split, d.train_split, split_dir(cfg, d.train_split).resolve(),
        )  # fmt: skip
    if not has_val:
        say(
            f"no validation split '{d.val_split}' under {d.root}: training without "
            "validation, metrics or sample pictures"
        )
    return has_val


def _check_splits_alike(cfg: Config, indexes: dict[str, SplitIndex]) -> None:
    """Refuse splits a model cannot take alike: another frame shape C×H×W (validation
    failed after the first epoch's training) or another value scale (scores in other
    units). Sequence lengths may differ: each is checked against the frames used."""
    for what, of in (
        ("frames C×H×W", lambda index: "×".join(map(str, index.shape[1:]))),
        ("value scale", lambda index: f"{index.value_scale:g}"),
    ):
        found = {split: of(index) for split, index in indexes.items()}
        if len(set(found.values())) > 1:
            listed = ", ".join(f"{split} {value}" for split, value in found.items())
            raise InputError(
                f"{cfg.data.root}: the splits differ in {what} ({listed}); a model takes one: "
                "convert every split from the same source settings"
            )


ALLOW_PIPE_ENV = "STPDIST_ALLOW_PIPE"
"""Set to 1 to let `data.url_template` be a `pipe:` shell command: a config is data, and a
command in one runs only with this leave from the environment."""


def _checked_template(template: str | None) -> str | None:
    """`data.url_template`, refused when it is a shell command (`pipe:…`) and the
    environment has not allowed one (`STPDIST_ALLOW_PIPE=1`): a config handed over with a
    dataset or a recipe must not run commands unasked."""
    if template and template.startswith("pipe:") and os.environ.get(ALLOW_PIPE_ENV) != "1":
        raise ConfigError(
            f"data.url_template {template!r} is a shell command, which stpdist runs from a "
            f"config only when allowed: set {ALLOW_PIPE_ENV}=1 in the environment if you "
            "wrote (or trust) this config"
        )
    return template


def _stream_args(cfg: Config, split: str, eval_: bool) -> dict:
    batch = cfg.data.eval_batch_size or cfg.data.batch_size if eval_ else cfg.data.batch_size
    template = _checked_template(cfg.data.url_template)
    return {
        "skip_bad": cfg.data.skip_bad_samples,
        "url_template": template,  # the stream substitutes (and shell-quotes) {split}, {name}
        "batch_size": batch,
        "num_input_frames": cfg.data.num_input_frames,
        "num_output_frames": cfg.data.num_output_frames,
    }


def train_stream(cfg: Config) -> ShardTrainStream | MovingDigitsTrainSource:
    """The train source `data.train_source` names: the train split's shards, or moving
    digits generated afresh every epoch with `data.synthesize`'s settings."""
    if cfg.data.train_source == "moving_digits":
        synth = cfg.data.synthesize
        return MovingDigitsTrainSource(
            synth.train,
            batch_size=cfg.data.batch_size,
            num_input_frames=cfg.data.num_input_frames,
            num_output_frames=cfg.data.num_output_frames,
            seed=synth.seed,
            image_size=synth.image_size,
            num_digits=synth.num_digits,
            digit_size=synth.digit_size,
            digits=synth.digits,
        )
    return ShardTrainStream(
        split_dir(cfg, cfg.data.train_split),
        shuffle_buffer=cfg.data.shuffle_buffer,
        **_stream_args(cfg, cfg.data.train_split, False),
    )


def eval_stream(cfg: Config, split: str) -> ShardEvalStream:
    return ShardEvalStream(split_dir(cfg, split), **_stream_args(cfg, split, True))


def build_module(
    cfg: Config,
    frame_shape: tuple[int, int, int] | None = None,
    *,
    index: SplitIndex | None = None,
    trained_on: SplitIndex | None = None,
    trained_in: Path | None = None,
) -> EnhancedModule:
    """The module for `cfg.model`: the Forecaster around its backbone, for frames C×H×W of
    `frame_shape`, or of `index` (a dataset's statistics, e.g. the one a checkpoint keeps),
    or by default of the dataset's own index; or the user's own EnhancedModule when
    `model.name` is its import path (built with `model.backbone` as keywords).
    `trained_on`: the index a checkpoint keeps (its training data's), whose statistics
    normalise the frames when `data.normalize` uses any (standardize, minmax): a model
    evaluated on other data takes its frames as it was trained to, and data whose channels
    or grid are laid out otherwise is refused (`check_same_layout`). `trained_in`: the
    folder holding `trained_on` (a checkpoint or model folder), whose climatology, kept
    beside it, is the one ACC and the climatology baseline score against."""
    if plugins.is_import_path(cfg.model.name):
        cls = plugins.resolve_model(cfg.model.name)
        if plugins.is_task(cls):
            return cls(**dict(cfg.model.backbone))
    if index is None and frame_shape is None:
        index = dataset_index(cfg)
    value_scale = index.value_scale if index is not None else 1.0
    if frame_shape is None:
        frame_shape = tuple(index.shape[1:])
    normalize = cfg.data.normalize
    # without an index (a frame shape alone: checks, tests) the statistics are unit ones
    normalizer = Normalizer(normalize) if index is None else Normalizer.from_index(normalize, index)
    if trained_on is not None and index is not None:
        _check_same_fill(cfg, index, trained_on)
        check_same_layout(f"data.root {cfg.data.root}", index, trained_on)
    if trained_on is not None and index is not None and normalize in STATISTICS_MODES:
        _check_same_units(cfg, index, trained_on)
        normalizer = Normalizer.from_index(normalize, trained_on)
    if index is not None and not normalizer.unit_range:
        _check_value_range(cfg, index)
    elif index is not None and min(frame_shape[1:]) < SSIM_WINDOW:
        say(
            f"frames of {frame_shape[1]}×{frame_shape[2]} are smaller than SSIM's "
            f"{SSIM_WINDOW}×{SSIM_WINDOW} window: SSIM is not reported"
        )
    geo = None if index is None else geo_info(cfg, index, trained_on, trained_in)
    _check_patch_size(cfg, frame_shape)
    try:
        module = Forecaster(
            cfg.model,
            frame_shape,
            cfg.data.num_input_frames,
            cfg.data.num_output_frames,
            value_scale=value_scale,
            normalizer=normalizer,
            geo=geo,
        )
    except (ValueError, TypeError, KeyError, ImportError) as exc:  # ImportError: a block's path
        refusal = _backbone_refusal(cfg, exc, frame_shape)
        if refusal is None:
            raise
        raise refusal from exc
    _check_frame_loop(cfg, module)
    _warn_if_divergence_is_off(cfg)
    if index is not None:
        _warn_of_thresholds_outside(cfg, index, module._scored_channels)
    return module


def _warn_of_thresholds_outside(cfg: Config, index: SplitIndex, channels: slice) -> None:
    """Thresholds at or below the split's smallest value (every pixel an event: CSI and POD
    1 for any prediction reaching it, lifting CSI-M) or above its largest (no event in
    it), said once: a threshold in other units than the stored ones looks like this."""
    thresholds = cfg.model.evaluation.metric_thresholds
    if not thresholds or not index.min or not index.max:
        return
    scale = index.value_scale
    low, high = min(index.min[channels]) * scale, max(index.max[channels]) * scale
    below = [t for t in thresholds if t <= low]
    above = [t for t in thresholds if t > high]
    if not below and not above:
        return
    which = "" if len(index.min) == 1 else f" (channel {_channels_text(channels, index)})"
    said = []
    if below:
        said.append(
            f"{', '.join(f'{t:g}' for t in below)} at or below its smallest value: every "
            "pixel is an event, CSI and POD score 1 for any prediction reaching it"
        )
    if above:
        said.append(f"{', '.join(f'{t:g}' for t in above)} above its largest: no event in it")
    warn_main(
        "model.evaluation.metric_thresholds are in stored units, and the %s split's values%s "
        "run from %.6g to %.6g: %s. Thresholds in other units (scaled, or another unit "
        "than the data's) look like this",
        index.split, which, low, high, "; ".join(said),
    )  # fmt: skip


def _channels_text(channels: slice, index: SplitIndex) -> str:
    """`0` or `0–2` (by name where the index names its variables): the channels scored."""
    picked = list(range(len(index.min)))[channels]
    names = variable_names(index) if index.variables else [str(c) for c in range(len(index.min))]
    return names[picked[0]] if len(picked) == 1 else f"{names[picked[0]]}–{names[picked[-1]]}"


def _warn_if_divergence_is_off(cfg: Config) -> None:
    """TAU's differential divergence compares consecutive output frames: with too few of
    them it is 0 (`simvp.differential_divergence`), and `model.divergence_weight` would do
    nothing without a word."""
    form, frames = cfg.model.divergence_form, cfg.data.num_output_frames
    needed = 3 if form == "openstl" else 2
    if cfg.model.divergence_weight and frames < needed:
        warn_main(
            f"model.divergence_weight {cfg.model.divergence_weight:g} has no effect: the "
            f"divergence ({form}) needs at least {needed} output frames, "
            f"data.num_output_frames is {frames}"
        )


def _check_patch_size(cfg: Config, frame_shape: tuple[int, ...]) -> None:
    """`model.patch_size` against the data's frames, said as a config error naming the key
    and the sizes that would fit (the Forecaster's own check names neither)."""
    p, (height, width) = cfg.model.patch_size, frame_shape[1:]
    if height % p or width % p:
        fits = [d for d in range(1, min(height, width) + 1) if height % d == 0 == width % d]
        raise ConfigError(
            f"'model.patch_size' is {p}, but the data's frames are {height}×{width}: not "
            f"divisible by it; expected a divisor of both sides ({', '.join(map(str, fits))})"
        )


def _check_frame_loop(cfg: Config, module: EnhancedModule) -> None:
    """Scheduled sampling and `loss_frames: all` need a backbone that predicts frame by frame
    from the first input (`FrameRecurrent.feeds_back`); ConvLSTM's `shi` encoder–forecaster
    is frame-recurrent but does not: refused here, not at the first training step."""
    backbone = getattr(module, "backbone", None)
    if getattr(backbone, "feeds_back", True):
        return
    variant = getattr(backbone, "variant", None)
    what = f"{cfg.model.name} (variant {variant})" if variant else cfg.model.name
    for key, value, default in (
        ("model.sampling.mode", cfg.model.sampling.mode, "none"),
        ("model.loss_frames", cfg.model.loss_frames, "outputs"),
    ):
        if value != default:
            raise ConfigError(
                f"'{key}' is {value!r}, which applies to backbones that predict frame by frame "
                f"from the first input; {what} reads every input before it predicts: "
                f"expected {default!r}"
            )


def _backbone_refusal(
    cfg: Config, exc: BaseException, frame_shape: tuple[int, ...] | None = None
) -> ConfigError | None:
    """A ConfigError naming `model.backbone` (and the argument the message names) when `exc`
    is a backbone's refusal of its hyper-parameters: raised by a `raise` statement in the
    backbone's own code (stpdist.models, or the module of a backbone given by import path).
    A refusal that quotes a frame size, with `model.patch_size` above 1, also says which
    frames the backbone saw (the patched ones, not the data's). None for anything else: a
    bug elsewhere (torch, the task) keeps its traceback, and bad input already said in one
    line (InputError) stays as it is."""
    if isinstance(exc, (InputError, UntrustedImportPath)):
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:  # the frame that raised it
        tb = tb.tb_next
    if tb is None:
        return None
    frame = tb.tb_frame
    module = frame.f_globals.get("__name__", "")
    owner = _backbone_module(cfg.model.name)
    if not (module.startswith("stpdist.models.") or (owner is not None and module == owner)):
        return None
    line = linecache.getline(frame.f_code.co_filename, tb.tb_lineno).strip()
    if not line.startswith("raise "):  # Python's own TypeError in model code: a bug
        return None
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    p = cfg.model.patch_size
    if p > 1 and frame_shape is not None and re.search(r"\d×\d", message):
        c, h, w = frame_shape
        message += (
            f" (the backbone sees the frames after 'model.patch_size' {p}: {c * p * p}×"
            f"{h // p}×{w // p}, from the data's {c}×{h}×{w})"
        )
    names = _backbone_keys(cfg)
    named = [key for key in names if re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message)]
    where = (
        f"'model.backbone.{named[0]}'"
        if len(named) == 1
        else f"'model.backbone' ({', '.join(named)})"
        if named
        else "'model.backbone'"
    )
    return ConfigError(f"{where} of {cfg.model.name}: {message}")


def _backbone_module(name: str) -> str | None:
    """The module that defines backbone `name` (a registered name or an import path)."""
    try:
        return plugins.resolve_model(name).__module__
    except Exception:  # it resolved once already (the constructor ran); be safe anyway
        return None


def _backbone_keys(cfg: Config) -> list[str]:
    """The argument names of `cfg.model`'s backbone: its `Args` fields, else the keys set."""
    import dataclasses

    try:
        args = getattr(plugins.resolve_model(cfg.model.name), "Args", None)
    except Exception:
        args = None
    if dataclasses.is_dataclass(args):
        return [f.name for f in dataclasses.fields(args)]
    return list(dict(cfg.model.backbone))


STATISTICS_MODES = ("standardize", "minmax")
"""The `data.normalize` modes that normalise by the training data's statistics."""


def _check_same_units(cfg: Config, data: SplitIndex, trained_on: SplitIndex) -> None:
    """Refuse data stored in other units (value scale, channels) than the training data's,
    whose statistics then would not apply (`data`: an index of the data under data.root)."""
    if data.value_scale != trained_on.value_scale or data.shape[1] != trained_on.shape[1]:
        raise InputError(
            f"data.root {cfg.data.root} holds {data.shape[1]} channel(s) stored with value "
            f"scale {data.value_scale:g} (its {data.split} split), the data the checkpoint "
            f"was trained on {trained_on.shape[1]} with value scale "
            f"{trained_on.value_scale:g}: its statistics (data.normalize) do not apply; "
            "convert the data as the training data was"
        )


def check_same_layout(where: str, data: SplitIndex, trained: SplitIndex) -> None:
    """Refuse data (at `where`) that holds one of the training data's variables in another
    channel than in training, or in other units, or whose grid is the training grid
    reversed or rolled: the model would read a channel as another variable, each pixel as
    another place, and score or label it without a word (a weather review: a test split
    converted with `--vars t2m,t850` for a model of `t850,t2m` scored an MSE 4·10⁴ times
    the right one). Other variables, or another grid (another region of the same size),
    are said in a line: the model reads them as what it was trained on (and `climatology`
    does not score them against the training climatology)."""
    ours = [(v.get("name", ""), v.get("units", "")) for v in data.variables]
    theirs = [(v.get("name", ""), v.get("units", "")) for v in trained.variables]
    if ours and theirs and ours != theirs:
        names = [name for name, _ in ours]
        trained_names = [name for name, _ in theirs]
        listed = f"{', '.join(names)} (its {data.split} split)"
        for channel, name in enumerate(names):
            if name in trained_names and trained_names.index(name) != channel:
                raise InputError(
                    f"{where} holds the variables {listed}, the model was trained on "
                    f"{', '.join(trained_names)}: {name} in channel {channel}, in training "
                    f"{trained_names.index(name)}, would be read as another variable; "
                    "convert the data with the training variables in their channels"
                )
        for (name, units), (trained_name, trained_units) in zip(ours, theirs, strict=False):
            if name == trained_name and not same_units(units, trained_units):
                raise InputError(
                    f"{where} holds {name} in {units_text(units)} (its {data.split} split), "
                    f"the model was trained on {name} in {units_text(trained_units)}: convert "
                    "it to those units (or, the same unit spelled otherwise, give it the same "
                    "units attribute and convert it again)"
                )
        if names != trained_names:
            warn_main(
                "%s holds the variables %s, the model was trained on %s: each channel is "
                "read as the training variable in its place",
                where, listed, ", ".join(trained_names),
            )  # fmt: skip
    for axis, here, there in (("latitude", data.latitudes, trained.latitudes),
                              ("longitude", data.longitudes, trained.longitudes)):  # fmt: skip
        if not here or not there or _same_values(here, there):
            continue
        span = (
            f"{axis}s {here[0]:g}…{here[-1]:g} (its {data.split} split), the model was "
            f"trained on {there[0]:g}…{there[-1]:g}"
        )
        # longitudes 0…360 and -180…180 alike
        norm = (lambda v: np.mod(v, 360.0)) if axis == "longitude" else np.asarray
        if _same_values(sorted(norm(here)), sorted(norm(there))):
            raise InputError(
                f"{where} holds {span}: the same {axis}s in another order (reversed or "
                "rolled), so the model would read every pixel as another place; convert the "
                f"data with its {axis}s in the training order"
            )
        warn_main(
            "%s holds %s: another grid, which the model reads as the one it was trained on",
            where, span,
        )  # fmt: skip


def _same_values(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=0.0, atol=1e-6))


def _check_same_fill(cfg: Config, data: SplitIndex, trained_on: SplitIndex) -> None:
    """Refuse data whose missing values (NaN) were stored as another fill value than the
    training data's (`--allow-nan FILL`): the model learnt the one fill as "no data", and
    reads the other as a value (a radar's no-coverage pixels as rain: threshold scores of
    the same model and frames changed by a third)."""
    check_same_fill(f"data.root {cfg.data.root}", data, trained_on.args.get("nan_fill"))


def check_same_fill(where: str, data: SplitIndex, trained: float | None) -> None:
    """`_check_same_fill` of data at `where` against the fill `trained` (None: training
    data without missing values, where the data's fill is said, as values the model reads)."""
    ours = data.args.get("nan_fill")
    if ours is None or ours == trained:
        return
    if trained is None:
        warn_main(
            "%s stores missing values (NaN) as %g (its %s split, --allow-nan); the data the "
            "model was trained on had none, and it reads %g as a value there",
            where, ours, data.split, ours,
        )  # fmt: skip
        return
    raise InputError(
        f"{where} stores missing values (NaN) as {ours:g} (its {data.split} split, "
        f"--allow-nan {ours:g}), the data the checkpoint was trained on as {trained:g}: the "
        f"model learnt {trained:g} as no data; convert the data with --allow-nan {trained:g}"
    )


def trained_on(cfg: Config, checkpoint: Path) -> SplitIndex | None:
    """The index of the data the weights in `checkpoint` (a checkpoint or model folder, or a
    weights file in one) were trained on, kept beside them; None where none is. Refuses a
    `data.normalize` other than the one they were trained with (their config.yaml's): the
    model takes frames normalised as in training."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    trained = _trained_data(folder).get("normalize")
    written = isinstance(trained, str) and "${" not in trained  # not interpolated
    if written and trained != cfg.data.normalize:
        raise ConfigError(
            f"data.normalize {cfg.data.normalize!r}: {checkpoint} was trained with "
            f"{trained!r} ({describing_config(folder)}), and takes frames normalised so; "
            "leave data.normalize as it was in training"
        )
    if not (folder / INDEX_FILE).is_file():
        return None
    return read_index(folder)


def _trained_data(folder: Path) -> dict:
    """The `data` section of the config.yaml that describes the weights in `folder` (empty
    where there is none, or it cannot be read)."""
    import yaml

    described = describing_config(folder)
    if described is not None:
        with contextlib.suppress(OSError, ValueError, LookupError, TypeError, yaml.YAMLError):
            data = yaml.safe_load(described.read_text())["data"]
            if isinstance(data, dict):
                return data
    return {}


def trained_on_this_data(cfg: Config, checkpoint: Path, kept: SplitIndex | None) -> bool:
    """Whether `cfg`'s data is the data the weights in `checkpoint` were trained on: the
    index the checkpoint keeps (`kept`, `trained_on`'s) is the one under data.root (the same
    split's, whatever its path), and the frame counts are the checkpoint's config.yaml's.
    True where either is not known (a weights file alone)."""
    if kept is not None:
        with contextlib.suppress(OSError, ValueError):
            here = split_dir(cfg, kept.split) / INDEX_FILE
            if not here.is_file() or read_index(here.parent) != kept:
                return False
    data = _trained_data(checkpoint if checkpoint.is_dir() else checkpoint.parent)
    counts = (data.get("num_input_frames"), data.get("num_output_frames"))
    if all(isinstance(c, int) for c in counts):
        return counts == (cfg.data.num_input_frames, cfg.data.num_output_frames)
    return True


def _check_value_range(cfg: Config, index: SplitIndex) -> None:
    """What data whose scaled values leave [0, 1] (physical units, e.g. weather stored with
    value scale 1) rules out, before any work: predictions clamped to [0, 1], and LPIPS.
    PSNR and SSIM are left out of the results (`Forecaster.image_scores`), with a line."""
    span = (
        f"the {index.split} split's values run from {min(index.min):.6g} to "
        f"{max(index.max):.6g} (stored / value scale {index.value_scale:g}), outside [0, 1]"
    )
    evaluation = cfg.model.evaluation
    if cfg.data.normalize == "scale" and evaluation.clamp_output:
        raise InputError(
            f"{span}, and data.normalize: scale with model.evaluation.clamp_output would "
            "clamp every prediction to [0, 1]; set data.normalize to standardize or minmax "
            "(per variable), or none (the stored units, clamped to each variable's range), "
            "or model.evaluation.clamp_output=false"
        )
    if evaluation.lpips_weights:
        raise InputError(
            f"{span}: LPIPS compares images in [0, 1]; leave model.evaluation.lpips_weights "
            "unset for this data"
        )
    say(f"{span}: PSNR and SSIM, which compare images in [0, 1], are not reported")


def geo_info(
    cfg: Config,
    index: SplitIndex,
    trained_on: SplitIndex | None = None,
    trained_in: Path | None = None,
) -> GeoInfo | None:
    """Per-variable scores' inputs when the index names its variables or has a latitude
    grid: names, latitudes, and the training data's climatology (`climatology`)."""
    if not index.variables and not index.latitudes:
        return None
    return GeoInfo(
        variable_names(index),
        index.shape[2],
        index.shape[3],
        latitudes=index.latitudes or None,
        climatology=climatology(cfg, index, trained_on, trained_in),
    )


def climatology(
    cfg: Config,
    index: SplitIndex,
    trained_on: SplitIndex | None = None,
    trained_in: Path | None = None,
) -> Any:
    """The climatology ACC and the climatology baseline score against: the training
    data's, which a checkpoint keeps beside its index (`keep_index`, since 2026-12-08) and
    `trained_in` then holds; scoring on a new year's test split alone, its own time mean
    would flatter the baseline (a weather review). It serves the channels that hold the
    training variables on the training grid; for other variables, or another grid, it
    would score them against a climatology of something else (a diff review: t500 against
    t2m's, a baseline 9× off): there the climatology stored beside `index` (data.root's
    first split) serves, said in a line, or none. Without a kept one (a checkpoint written
    before), `index`'s, said where that is not the training data's."""
    own = None
    if index.climatology and (split_dir(cfg, index.split) / index.climatology).is_file():
        own = read_climatology(split_dir(cfg, index.split), index)
    if trained_on is None:
        return own
    named = f"data.root's {index.split} split"
    kept = None
    if trained_in is not None and trained_on.climatology.endswith(".npy"):  # (keep_index)
        if (trained_in / trained_on.climatology).is_file():
            kept = read_climatology(trained_in, trained_on)
        elif own is not None and index != trained_on:
            warn_main(
                "%s keeps no climatology of the data the model was trained on (a checkpoint "
                "or model folder written before they kept it): ACC and the climatology "
                "baseline score against the climatology of %s",
                trained_in, named,
            )  # fmt: skip
    if kept is None or list(kept.shape) != index.shape[1:]:  # other frames: the model's too
        return own
    if index == trained_on:  # the training data itself (`stpdist.load`: kept, not data.root's)
        return kept
    grid = (index.latitudes, index.longitudes)
    if not all(not a or not b or _same_values(a, b)  # a grid unknown on one side: alike
               for a, b in zip(grid, (trained_on.latitudes, trained_on.longitudes))):  # fmt: skip
        warn_main(
            "data.root is on another grid than the training data: ACC and the climatology "
            "baseline score against %s",
            f"the climatology of {named}" if own is not None else "none (it has none)",
        )
        return own
    names, trained_names = variable_names(index), variable_names(trained_on)
    other = [c for c, name in enumerate(names) if name != trained_names[c]]
    if not other:
        return kept
    listed = ", ".join(names[c] for c in other)
    if own is None:
        warn_main(
            "%s holds %s, which the model was not trained on, and no climatology of its own: "
            "ACC and the climatology baseline are not reported",
            named, listed,
        )  # fmt: skip
        return None
    warn_main(
        "%s holds %s, which the model was not trained on: ACC and the climatology baseline "
        "score them against the climatology of %s",
        named, listed, named,
    )  # fmt: skip
    mixed = np.array(kept, copy=True)
    mixed[other] = own[other]
    return mixed


def dataset_index(cfg: Config) -> SplitIndex:
    """The index of the first split of `data.root` that exists (train, val, test)."""
    splits = (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split)
    if not any((split_dir(cfg, split) / INDEX_FILE).is_file() for split in splits):
        recover(cfg.data.root)  # a `shard` that crashed while it replaced the dataset
    for split in splits:
        if (split_dir(cfg, split) / INDEX_FILE).is_file():
            return read_index(split_dir(cfg, split))
    raise MissingInput(f"no dataset split with {INDEX_FILE} under {cfg.data.root}")


def keep_index(cfg: Config, trainer: Trainer) -> None:
    """Every checkpoint of `trainer` keeps the data's index.json, so that it is a model
    folder `stpdist.load`, `forecast` and `export` use without the data: the first split's
    that has one (with `data.train_source: moving_digits`, train has no shards)."""
    for split in (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split):
        index = split_dir(cfg, split) / INDEX_FILE
        if index.is_file():
            trainer.attachments[INDEX_FILE] = index.read_text()
            # and its climatology, which ACC scores against on any data (`climatology`)
            kept = read_index(index.parent)
            # an .npy name only: index.json is the data's, and a name of the checkpoint's own
            # files (model.safetensors) would replace them
            name = kept.climatology
            if name.endswith(".npy") and (index.parent / name).is_file():
                read_climatology(index.parent, kept)  # checked: shape, a readable array
                trainer.attachments[kept.climatology] = (
                    index.parent / kept.climatology
                ).read_bytes()
            return


# ---------------------------------------------------------------------------- fine-tuning
def init_weights(
    cfg: Config,
    module: EnhancedModule,
    checkpoints: CheckpointManager | None = None,
    resume: str | Path | None = None,
) -> Path | None:
    """Load `model.init_weights` into `module` (before `Trainer.fit`, on every rank) when
    the run starts fresh; returns the weights file, or None when not set or when the run
    resumes (`resume` a path, or "auto" with a checkpoint in `checkpoints`): the checkpoint
    then holds the weights, said in one line. A folder of another architecture, or a
    missing, extra, mis-shaped or non-finite tensor, is an InputError naming it."""
    from .checkpoint import reading_chosen
    from .ema import has_average, load_eval_weights

    source = cfg.model.init_weights
    if source is None:
        return None
    auto = str(resume) == "auto"
    found = auto and checkpoints is not None and checkpoints.latest() is not None
    if resume is not None and (found or not auto):
        where = checkpoints.root if auto else resume
        say(f"resuming from {where}: model.init_weights {source} is not applied (fresh runs only)")
        return None
    chosen: list[tuple[Path, Path | None]] = []

    def choose() -> Path:  # the folder read (a run's best: chosen again if retired meanwhile)
        chosen[:] = [_init_source(Path(source))]
        return chosen[0][0].parent if Path(source).is_dir() else chosen[0][0]

    # a read lease: a run still training keeps the checkpoint while it is read
    with reading_chosen(choose, again=(Path(source) / "checkpoints").is_dir()):
        file, config_file = chosen[0]
        if config_file is not None:
            theirs = _trained_config(config_file)
            _check_same_architecture(cfg, config_file, theirs.get("model") or {})
            _say_other_normalisation(cfg, theirs, file.parent)
        count = _load_tensors(file, module)
        if Path(source).is_dir() and has_average(file.parent):
            # a checkpoint trained with trainer.ema: its average is the model, as for `load`
            file = load_eval_weights(file.parent, module)
    say(
        f"initialised the model from {file} ({count} tensors); optimizer, schedule, step and "
        "data order start fresh"
    )
    # which weights these were (a run folder's best moves on): the run's provenance.jsonl
    # records them, hashed by the main process alone
    module.stpdist_init_weights = str(file.absolute())
    return file


def _init_source(path: Path) -> tuple[Path, Path | None]:
    """(weights file, the config.yaml that describes it or None) of `model.init_weights`."""
    from .inference import model_folder

    what = "a model folder, a checkpoint or run folder, or a .safetensors file"
    if not path.exists():
        raise InputError(f"model.init_weights: {path} does not exist; expected {what}")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError(
                f"model.init_weights: {path} is not a .safetensors file; expected {what} "
                "(stpdist never unpickles: turn an OpenSTL checkpoint into a model folder "
                "with `stpdist import openstl`)"
            )
        # the weights file of a checkpoint or model folder: checked against the config
        # that trained it, as the folder is
        return path, describing_config(path.parent) if path.name == MODEL_FILE else None
    try:
        folder = model_folder(path, "best")
    except (FileNotFoundError, InputError) as exc:
        raise InputError(f"model.init_weights: {exc}; expected {what}") from None
    return folder / MODEL_FILE, describing_config(folder)


def _trained_config(config_file: Path) -> dict[str, Any]:
    """The config.yaml that trained `model.init_weights`'s weights, read as data (the
    folder's model.name is never imported); unreadable, an InputError naming it."""
    from omegaconf import OmegaConf

    try:
        theirs = OmegaConf.to_container(OmegaConf.load(config_file))
        if not isinstance(theirs, dict) or not isinstance(theirs.get("model") or {}, dict):
            raise ValueError("'model' is not a mapping")
    except Exception as exc:  # YAML errors come in several types
        raise InputError(f"model.init_weights: unreadable {config_file} ({exc})") from None
    return theirs


def _check_same_architecture(cfg: Config, config_file: Path, theirs: dict[str, Any]) -> None:
    """Refuse weights whose config (`theirs`, the `model` section of `config_file`) names
    another backbone, other backbone arguments or another patch size than `cfg`, naming
    the first key that differs."""
    from .config import architecture_difference

    differing = architecture_difference(cfg.model, theirs)
    if differing:
        key, other_value, value = differing
        raise InputError(
            f"model.init_weights: {config_file} has {key} {other_value!r}, this config "
            f"{value!r}; fine-tuning starts from weights of the same architecture"
        )


def _say_other_normalisation(cfg: Config, theirs: dict[str, Any], folder: Path) -> None:
    """A fine-tuning whose inputs are normalised otherwise than the weights' were (`theirs`:
    the config.yaml that trained them): another `data.normalize` (a warning: `validate`
    refuses it), or the same statistics mode on data of other statistics (said: each run
    normalises by its own training data's)."""
    data = theirs.get("data")
    mode = data.get("normalize", "scale") if isinstance(data, dict) else "scale"
    if mode != cfg.data.normalize:
        warn_main(
            "model.init_weights: the weights were trained with data.normalize %r (%s), this "
            "run normalises its inputs by %r: they see values of another range than they "
            "learnt from (set data.normalize: %s to keep theirs)",
            mode, folder, cfg.data.normalize, mode,
        )  # fmt: skip
        return
    if mode not in STATISTICS_MODES or not (folder / INDEX_FILE).is_file():
        return
    with contextlib.suppress(OSError, ValueError, InputError):
        trained, here = read_index(folder), dataset_index(cfg)
        if (trained.mean, trained.std) != (here.mean, here.std):
            say(
                f"data.normalize {mode}: this run normalises by its own data's statistics "
                f"(mean {_rounded(here.mean)}, std {_rounded(here.std)}); the weights learnt "
                f"from data of mean {_rounded(trained.mean)}, std {_rounded(trained.std)}"
            )


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def _load_tensors(file: Path, module: EnhancedModule) -> int:
    """Load safetensors `file` into `module`, every tensor checked by name, shape and
    finiteness first; returns the count. Nothing is unpickled."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise InputError(
            f"model.init_weights: {file} is not a readable safetensors file ({exc})"
        ) from None
    expected = module.state_dict()
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    model = type(module).__name__
    if missing:
        raise InputError(
            f"model.init_weights: {file} lacks tensor '{missing[0]}'{_more(missing)} of {model}"
        )
    if extra:
        raise InputError(
            f"model.init_weights: {file} holds tensor '{extra[0]}'{_more(extra)}, which "
            f"{model} does not have"
        )
    shaped = [name for name, tensor in tensors.items() if tensor.shape != expected[name].shape]
    if shaped:
        name = shaped[0]
        raise InputError(
            f"model.init_weights: tensor '{name}' in {file} has shape "
            f"{tuple(tensors[name].shape)}; the model's is {tuple(expected[name].shape)}"
            f"{_more(shaped)}{_trained_frames(file, module)}"
        )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(f"model.init_weights: tensor '{name}' in {file} holds NaN or Inf")
    module.load_state_dict(tensors)  # cast to the module's dtypes (float64 → float32)
    return len(tensors)


def _trained_frames(file: Path, module: EnhancedModule) -> str:
    """'; the weights were trained on frames …, this run's are …' where the folder of
    `file` keeps its data's index and the frames differ (the likely cause of other shapes:
    another frame size or channel count)."""
    theirs, ours = file.parent / INDEX_FILE, getattr(module, "frame_shape", None)
    if ours is None or not theirs.is_file():
        return ""
    with contextlib.suppress(OSError, ValueError, InputError):
        shape = tuple(read_index(file.parent).shape[1:])
        if shape != tuple(ours):
            return (
                f"; the weights were trained on frames C×H×W {'×'.join(map(str, shape))}, this "
                f"run's are {'×'.join(map(str, ours))}: fine-tuning takes weights of the same "
                "frames (ConvLSTM's peephole weights and a patched model's layers are sized by "
                "them)"
            )
    return ""


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""
