"""Using a trained model: load a model folder, forecast from inputs alone, export.

A model folder is any checkpoint folder (`runs/x/checkpoints/step-N/`) or the folder
`stpdist export` writes: `model.safetensors`, the resolved `config.yaml` and the data's
`index.json` (frame shape, value scale, per-channel statistics). `load("runs/x")` picks the
best (or last) checkpoint of a run folder. A model folder is data: loading one never imports
code that its config names by import path unless the caller passes `trust_code=True`.
A sharded checkpoint (an FSDP run's: its shards instead of `model.safetensors`) is a model
folder too: it loads in one process, and `stpdist export` consolidates it into one
`model.safetensors`.

Legend: N samples, T time, C channels, H×W frame size.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .checkpoint import (
    CHOICES,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointManager,
    RetiredCheckpoint,
    describing_config,
    is_sharded_checkpoint,
    read_state,
    reading_chosen,
    safetensors_weights,
    save_weights,
)
from .config import CheckpointConfig, Config, load_config
from .console import finite_json, log, say, warn_main
from .data.format import INDEX_FILE, SplitIndex, read_index
from .data.staging import holds_working_folder
from .ema import has_average, load_eval_weights
from .errors import InputError, MissingInput, OutputExists
from .module import EnhancedModule
from .plugins import refusing_import_paths

if TYPE_CHECKING:
    from .data.convert import EarlierOutput

EXPORT_FORMATS = ("torchscript", "exported-program", "onnx")


def model_folder(path: str | Path, ckpt: str = "best") -> Path:
    """The checkpoint folder `path` names: itself when it holds `model.safetensors` (or a
    sharded state), else the `ckpt` ("best", "last", a step such as "step-320" or a folder
    name) checkpoint of the run folder `path`. A checkpoint is verified against its manifest first: a damaged one
    named is an error, damaged ones are passed over (with a warning) for best and last."""
    from .checkpoint import verify

    path = Path(path)
    _recover_swap(path)
    if (path / MODEL_FILE).is_file() or is_sharded_checkpoint(path):
        if ckpt != "best":  # the default: a model folder is its own best
            raise InputError(
                f"{path} is a model or checkpoint folder, the weights themselves; the "
                f"checkpoint choice {ckpt!r} (--ckpt) picks among a run's: pass the run folder"
            )
        return verify(path)
    root = path / "checkpoints"
    if not root.is_dir():
        raise InputError(f"{path}: {_not_a_model(path)}")
    try:
        return CheckpointManager(root, run_checkpoint_policy(root)).choose(ckpt)
    except RetiredCheckpoint:  # retired while chosen: the caller chooses again (an interop
        raise  # review: said as "holds no checkpoint", a live run's last failed 6 in 344)
    except MissingInput:
        if str(ckpt) not in ("best", "last", "latest"):
            raise
        # no checkpoint at all; the manager's advice (--ckpt PATH) is train's, not ours
        raise MissingInput(
            f"{root} holds no checkpoint: train first, or pass a model or checkpoint folder "
            "(runs/x/checkpoints/step-N) instead of the run"
        ) from None


def _not_a_model(path: Path) -> str:
    """Why `path` is neither a model folder nor a run folder, and what to pass instead."""
    if not path.exists():
        return f"neither a model folder ({MODEL_FILE}) nor a run folder: no such file or folder"
    if path.is_file() and path.suffix == ".safetensors":
        return (
            f"a weights file; pass the folder that holds it ({path.parent}), with the "
            "config.yaml and index.json beside it"
        )
    if path.name == "checkpoints" and path.is_dir():
        return f"a run's checkpoints folder; pass the run folder {path.parent} (--ckpt picks one)"
    return f"neither a model folder ({MODEL_FILE}) nor a run folder (checkpoints/)"


def _recover_swap(folder: Path) -> None:
    """Finish or undo a replacement of `folder` (an `export --out`, a forecast) that a crash
    interrupted, before it is read (see `data/staging.py`; one line on stderr saying what
    was done). A leftover that cannot be removed here (a read-only share) is a warning: the
    folder is then read as it stands."""
    from .data.staging import recover

    try:
        recover(folder)
    except OSError as exc:
        log.warning("%s: could not finish an interrupted replacement of it: %s", folder, exc)


def run_checkpoint_policy(root: Path) -> CheckpointConfig:
    """`trainer.checkpoint` of the run whose checkpoints are in `root`, as its newest
    checkpoint's resolved config.yaml records it (read as data), so that "best" means the
    run's own best (its monitor and mode); the defaults when no checkpoint records one."""
    from omegaconf import OmegaConf

    from .checkpoint import step_of

    for folder in sorted(root.glob("step-*"), key=step_of, reverse=True):
        try:
            trainer = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))["trainer"]
            recorded = trainer["checkpoint"]
            return CheckpointConfig(monitor=str(recorded["monitor"]), mode=str(recorded["mode"]))
        except Exception:  # no config.yaml, or not one of ours: the next one, else defaults
            continue
    return CheckpointConfig()


def _config_path(folder: Path) -> Path:
    found = describing_config(folder)
    if found is None:
        raise InputError(f"{folder}: no config.yaml beside the weights or in the run")
    return found


def _config_and_index(folder: Path) -> tuple[Config, SplitIndex | None]:
    index = read_index(folder) if (folder / INDEX_FILE).is_file() else None
    return load_config(_config_path(folder), saved=True), index


def load(
    path: str | Path,
    ckpt: str | int = "best",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_code: bool = False,
    raw_weights: bool = False,
) -> Any:
    """A ready module in eval mode from a model folder or a run folder (its `ckpt`
    checkpoint: "best", "last", a step (320, "step-320") or a folder name), on `device` (in
    `dtype` if given).
    The Forecaster's `forecast(frames)` then takes and returns physical units. A checkpoint
    trained with `trainer.ema` gives its averaged weights, unless `raw_weights`.

    A model folder is data, not code: a `model.name` (or SimVP translator) given there as an
    import path `package.module:Class` is refused before anything is imported, unless
    `trust_code=True`; then it is imported from the installed packages and the `sys.path`
    you set up (the model folder is never added to it). Typed `Any`: an `EnhancedModule`,
    a `Forecaster` for stpdist's own tasks, or the task class a model folder names."""
    return _on_chosen(
        path,
        ckpt,
        lambda folder: _load_folder(folder, device, dtype, trust_code, raw_weights),
    )


def _on_chosen(path: str | Path, ckpt: str | int, use: Any) -> Any:
    """`use(folder)` on the checkpoint folder that `path` and `ckpt` name (`model_folder`),
    under a read lease on it (`checkpoint.reading_chosen`): a run still training does not
    retire (`keep_last`, `keep_best`) the folder while `use` reads it. Best or last of a
    run folder retired between the choice and the lease is chosen again; a checkpoint
    named (a step, a folder) is an InputError saying so."""
    again = str(ckpt) in ("best", "last", "latest") and (Path(path) / "checkpoints").is_dir()
    for _ in range(CHOICES):
        with reading_chosen(lambda: model_folder(path, ckpt), again=again) as folder:
            try:
                return use(folder)
            except Exception as exc:
                if folder.is_dir():
                    raise
                # deleted under its lease: a filesystem without flock (some NFS mounts)
                gone = f"{folder} was deleted while it was read (its run retires checkpoints)"
                if not again:
                    raise InputError(
                        f"{gone}; read a copy of it, or the run's best or last"
                    ) from exc
                log.warning("%s; choosing the run's %s checkpoint again", gone, ckpt)
    raise InputError(
        f"{path}: its {ckpt} checkpoint was deleted while it was read, {CHOICES} times"
    )


def _load_folder(
    folder: Path,
    device: str | torch.device,
    dtype: torch.dtype | None,
    trust_code: bool,
    raw_weights: bool,
) -> EnhancedModule:
    """`load` of the model or checkpoint folder `folder` itself."""
    from .build import build_module, dataset_index

    gate = (
        contextlib.nullcontext() if trust_code else refusing_import_paths(str(_config_path(folder)))
    )
    with gate:
        cfg, index = _config_and_index(folder)
        kept = index is not None
        if index is None:  # a checkpoint written before checkpoints kept the index
            index = dataset_index(cfg)
        # forecasting and export never score: the LPIPS weights of the training machine
        # need not exist here
        cfg.model.evaluation.lpips_weights = None
        module = build_module(
            cfg,
            index=index,
            trained_on=index if kept else None,
            trained_in=folder if kept else None,
        )
    if dtype is not None:  # cast first: float64 weights then load without a float32 detour
        module.to(dtype)
    load_eval_weights(folder, module, raw_weights=raw_weights)
    module.eval().to(device)
    module.model_folder = folder
    if (folder / STATE_FILE).is_file():  # a checkpoint: the step its weights were trained to
        trained = read_state(folder)
        module.global_step, module.current_epoch = trained.global_step, trained.step_epoch
    # the value the training data stored NaN as (`--allow-nan`): forecast inputs' NaN too
    module.nan_fill = index.args.get("nan_fill")
    module.trained_on = index  # its variables and grid: a shard split to forecast from's
    module.colormap = cfg.logging.colormap  # the run's pictures', forecast's by default
    if index.min and index.max:  # the training data's range, for `forecast`'s input check
        module.value_range = (
            [v * index.value_scale for v in index.min],
            [v * index.value_scale for v in index.max],
        )
    return module


def require_forecaster(module: Any, command: str) -> None:
    """Refuse, in one line, a model folder whose module is a task of the user's own (an
    `EnhancedModule` named by import path) rather than a Forecaster: `command` (forecast,
    export) needs what only a Forecaster knows, its frame counts, shapes and units."""
    from .task import Forecaster

    if isinstance(module, Forecaster):
        return
    raise InputError(
        f"{module.model_folder} holds a {type(module).__name__}, a task module of your own, "
        f"not a Forecaster: `stpdist {command}` needs a model of the zoo or an import-path "
        "backbone (which know their frame counts and units); run this one with `stpdist "
        "predict` or Trainer.predict"
    )


# ---------------------------------------------------------------------------- inputs alone
def _shape_text(shape: Any) -> str:
    return "×".join(str(int(n)) for n in shape)


def check_inputs(
    frames: np.ndarray | torch.Tensor, module: Any, where: str, *, allow_nonfinite: bool = False
) -> None:
    """Refuse, with an InputError naming `where`, frames (T×C×H×W or N×T×C×H×W, physical
    units) that `module` cannot forecast from: another frame size or channel count, fewer
    than T_in frames, no sequence at all, a non-numeric dtype, NaN or ±Inf (unless
    `allow_nonfinite`). Warns (on the `stpdist` logger) when the values do not look like
    the training data's units: [0, 1]-scaled frames for a model trained on 0–255, or
    values far outside the training range."""
    check_input_shape(tuple(frames.shape), module, where)
    if isinstance(frames, torch.Tensor):  # numpy has no bfloat16: check those as float32
        tensor = frames.detach()
        array = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).cpu().numpy()
    else:
        array = np.asarray(frames)
    survey = ValueSurvey(where, getattr(module, "nan_fill", None))
    survey.add(array)
    survey.check(module, allow_nonfinite)


def fill_missing(frames: Any, module: Any) -> Any:
    """`frames` (a float array or tensor) with NaN as the value the model's training data
    stored NaN as (`module.nan_fill`, from `--allow-nan`), when it has one."""
    fill = getattr(module, "nan_fill", None)
    if fill is None:
        return frames
    if isinstance(frames, torch.Tensor):
        return torch.nan_to_num(frames, nan=fill, posinf=torch.inf, neginf=-torch.inf)
    return np.where(np.isnan(frames), np.asarray(fill, frames.dtype), frames)


class ValueSurvey:
    """`check_inputs`' checks of the values, over frames seen a piece at a time (the rows
    of a file too large to hold): the dtype, NaN/Inf (the count and the first one's
    position), and each channel's range for the units warning. `fill`: the value the
    model's training data stored NaN as: NaN is counted as filled with it, not refused."""

    def __init__(self, where: str, fill: float | None = None) -> None:
        self.where, self.fill, self.filled = where, fill, 0
        self.nonfinite, self.first = 0, ""
        self.kind = "i"
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    def add(self, array: np.ndarray, offset: int = 0) -> None:
        """One piece: rows `offset`… of the whole (…×C×H×W), for positions in messages."""
        if array.dtype.kind not in "biuf":
            raise InputError(
                f"{self.where}: frames of dtype {array.dtype}; expected integers or floats"
            )
        if array.dtype.kind == "b":  # masks, as `shard arrays` stores them: 0 and 1
            array = array.view(np.uint8)
        missing = None
        if array.dtype.kind == "f":
            self.kind = "f"
            if self.fill is not None:  # NaN stands for the fill: counted, not refused
                missing = np.isnan(array)
                self.filled += int(missing.sum())
            bad = ~np.isfinite(array) if missing is None else np.isinf(array)
            if bad.any():
                if not self.nonfinite:
                    position = tuple(int(i) for i in np.argwhere(bad)[0])
                    shown = (position[0] + offset, *position[1:])
                    self.first = f"the first {array[position]} at {shown}"
                self.nonfinite += int(bad.sum())
        if self.nonfinite or array.size == 0:  # no range once a value is not finite
            return
        others = tuple(i for i in range(array.ndim) if i != array.ndim - 3)
        if missing is not None and missing.any():  # the values given: not the fill's
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a channel of NaN alone
                low, high = np.nanmin(array, axis=others), np.nanmax(array, axis=others)
            if np.isnan(low).any():
                return
            low, high = low.astype(float), high.astype(float)
        else:
            low, high = array.min(axis=others).astype(float), array.max(axis=others).astype(float)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    def check(self, module: Any, allow_nonfinite: bool) -> None:
        """Refuse NaN/Inf (unless `allow_nonfinite`), else warn on the units."""
        if self.filled:  # a warning: said before the Trainer's setup shows info lines
            log.warning(
                "%s: %d missing value(s) (NaN) forecast from as %g, as the model's training "
                "data stored them (--allow-nan)",
                self.where, self.filled, self.fill,
            )  # fmt: skip
        if self.nonfinite:
            if not allow_nonfinite:
                raise InputError(
                    f"{self.where}: the frames hold NaN or Inf ({self.nonfinite} values, "
                    f"{self.first}); pass --allow-nonfinite (allow_nonfinite=True) to forecast "
                    "from them anyway"
                )
            log.warning(
                "%s: forecasting from %d NaN or Inf value(s): a convolution spreads each over "
                "its neighbours, and the forecasts may be NaN where not all of them",
                self.where, self.nonfinite,
            )  # fmt: skip
            return  # no range to compare
        value_range = getattr(module, "value_range", None)
        if value_range is not None and self.low is not None:
            names = getattr(module, "channel_names", None)
            scale = getattr(module, "value_scale", 1.0)
            _warn_on_units(self.low, self.high, self.kind, value_range, scale, self.where, names)


def check_input_shape(shape: tuple[int, ...], module: Any, where: str) -> None:
    """`check_inputs`' checks of the shape alone: what an array file's header tells before
    its data is read (a wrong frame size is said before gigabytes are decompressed)."""
    expected = tuple(module.frame_shape)
    if len(shape) not in (4, 5):
        raise InputError(f"{where}: expected T×C×H×W or N×T×C×H×W frames, got shape {shape}")
    if shape[-3:] != expected:
        last = (shape[-1], *shape[-3:-1])  # read as …×H×W×C
        hint = (
            "; they look channels-last (…×H×W×C): forecast reads channels first, so move "
            "the last axis, e.g. numpy.moveaxis(frames, -1, -3) (stpdist forecast: "
            "--channels-last)"
            if last == expected
            else ""
        )
        raise InputError(
            f"{where}: frames of C×H×W {_shape_text(shape[-3:])} (shape {shape}); the model "
            f"takes C×H×W {_shape_text(expected)} (channels × height × width){hint}"
        )
    if shape[-4] < module.num_input_frames:
        raise InputError(
            f"{where}: {shape[-4]} frames, fewer than the model's num_input_frames, "
            f"T_in = {module.num_input_frames}; got shape {shape}"
        )
    if len(shape) == 5 and shape[0] == 0:
        raise InputError(f"{where}: holds no sequence (shape {shape})")


def _warn_on_units(
    low: np.ndarray,
    high: np.ndarray,
    kind: str,
    value_range: tuple[list[float], list[float]],
    value_scale: float,
    where: str,
    names: list[str] | None = None,
) -> None:
    """A warning when the inputs' values (each channel's `low`…`high`, of numpy dtype kind
    `kind`) do not look like the training data's (stored) units; a warning, not an error:
    a quiet day of radar data is dim but right. Each
    channel out of its own range is named (`names`: the variables, else c0, c1, …): a
    swap of two variables keeps the overall range."""
    channels = len(low)
    train_low, train_high = np.asarray(value_range[0]), np.asarray(value_range[1])
    if len(train_low) != channels or len(train_high) != channels:
        return
    span = np.maximum(train_high - train_low, 1e-12)
    if value_scale > 1 and kind == "f" and 0 < high.max() <= 1 and (train_high >= 10).any():
        warn_main(  # each rank reads the same inputs
            "%s: the values lie within [0, 1] (%.3g…%.3g) but the model was trained on "
            "%.4g…%.4g: forecast takes physical (stored) units, not [0, 1]-scaled frames; "
            "multiply by the value scale %g",
            where, low.min(), high.max(), train_low.min(), train_high.max(), value_scale,
        )  # fmt: skip
    elif (far := (low < train_low - span / 2) | (high > train_high + span / 2)).any():
        names = names or [f"c{c}" for c in range(channels)]
        shown = [
            f"{names[c]} {low[c]:.4g}…{high[c]:.4g} (trained on {train_low[c]:.4g}…"
            f"{train_high[c]:.4g})"
            for c in np.flatnonzero(far)[:3]
        ]
        order = (
            f"; channels in the training data's order: {', '.join(names)}" if channels > 1 else ""
        )
        warn_main(  # each rank reads the same inputs
            "%s: values far outside the training data's range: %s%s; forecast takes the "
            "units the training data were stored in%s",
            where, ", ".join(shown), " …" if far.sum() > 3 else "", order,
        )  # fmt: skip


def _check_png_size(path: Path, frame_shape: tuple[int, ...]) -> None:
    """A PNG frame's height and width, read from its header, against the model's: a frame
    of another size is refused before it is decoded (a 13000×13000 PNG of 500 KB decodes
    to gigabytes)."""
    from .data.sources.common import png_size

    size = png_size(path)
    if size is None:  # unreadable: `png_8bit` says so, naming the file
        return
    height, width = size
    if (height, width) != tuple(frame_shape[1:]):
        raise InputError(
            f"{path}: a frame of H×W {height}×{width}; the model takes C×H×W "
            f"{_shape_text(frame_shape)} (channels × height × width)"
        )


def _check_png_colour(path: Path, channels: int) -> None:
    """A PNG frame's colour against the model's channels, before it is converted to the
    model's mode (which made a colour frame grey for a 1-channel model, without a word):
    a 1-channel model takes a grey frame (also one stored as RGB, its channels equal); a
    3-channel model takes a frame stored in colour (RGB, RGBA, a palette), whatever it
    shows. Transparency is not read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            grey_mode = mode in ("1", "L", "LA", "I", "I;16", "F")
            colour = not grey_mode and channels == 1 and _coloured(image)
    except Exception:  # unreadable: `png_8bit` says so, naming the file
        return
    if channels == 1 and colour:
        raise InputError(
            f"{path}: a colour PNG (mode {mode}, its channels differ); the model takes 1 "
            "channel: convert the frames to grey yourself if that is meant"
        )
    if channels == 3 and grey_mode:
        raise InputError(f"{path}: a grey PNG (mode {mode}); the model takes 3 channels (RGB)")


def _coloured(image: Any) -> bool:
    """Whether an image's RGB channels differ anywhere."""
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def _regular_file(path: Path) -> None:
    """Refuse FIFOs, sockets and devices: reading one would block or never end."""
    if not path.is_file():
        raise InputError(
            f"{path}: not a regular file (a FIFO, socket or device?); expected an array or PNG file"
        )


ARRAYS = (".npy", ".npz")
# the values checked at a time in an array file: its rows are read in pieces of this size
SURVEY_BYTES = 16 << 20
# image formats forecast does not read: refused beside PNG frames, never passed over
OTHER_IMAGES = (".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PNG_ADVICE = "save the frames as an .npy array (T×C×H×W, the training data's units) instead"


class InputFrames(Dataset):
    """Input-only samples for `forecast`, in the model's scaled units: an .npy/.npz array
    (T×C×H×W or N×T×C×H×W; T×H×W for a one-channel model, as `shard arrays` reads it;
    T×H×W×C or N×T×H×W×C with `channels_last`), a folder of such files, or a folder of PNG
    frames (one sequence, in name order). When a sequence holds more than T_in frames the last T_in
    are used: a forecast continues from the newest frames. Every input is checked against
    the model (`check_inputs`) before any forecast is made."""

    def __init__(
        self,
        source: str | Path,
        module: Any,
        *,
        allow_nonfinite: bool = False,
        key: str | None = None,
        channels_last: bool = False,
    ) -> None:
        self.source = Path(source)
        self.module = module
        self.channels_last = channels_last  # array files hold …×H×W×C
        self.allow_nonfinite = allow_nonfinite
        self.npz_key = key  # the array of an .npz that holds several (`--key`)
        self.num_input_frames = module.num_input_frames
        self.from_physical = module.from_physical
        # (key, T×C×H×W in physical units, or where in a file to read them)
        self.items: list[tuple[str, Any]] = []
        self._files: dict[str, Path] = {}  # key → the file it came from (collisions)
        self._reading: Any = None  # the array file read last (its stream open)
        if not self.source.exists():
            raise InputError(f"{self.source}: no such file or folder")
        if self.source.is_dir():
            self._refuse_a_mix()
        if self.source.is_dir() and self._pngs():
            if channels_last:
                raise InputError(
                    f"{self.source}: PNG frames are read as images (their channels known): "
                    "drop --channels-last, which is of .npy/.npz arrays"
                )
            self._add_pngs(module)
        elif self.source.is_dir():
            files = sorted(
                p for p in self.source.iterdir() if p.suffix.lower() in ARRAYS and p.name[0] != "."
            )
            if not files:
                raise InputError(
                    f"{self.source}: no .npy/.npz files or PNG frames{self._splits()}"
                    f"{self._other_images()}"
                )
            for file in files:
                self._add_array(file)
        elif self.source.suffix.lower() in ARRAYS:
            self._add_array(self.source)
        else:
            raise InputError(
                f"{self.source}: forecast inputs are a shard split folder, an .npy/.npz "
                "array (T×C×H×W or N×T×C×H×W), a folder of them, or a folder of PNG frames"
            )
        if key is not None and not any(f.suffix.lower() == ".npz" for f in self._files.values()):
            # chosen for nothing: the user meant other inputs
            raise InputError(
                f"--key {key} names an array inside .npz inputs; {self.source} holds none: "
                "drop --key"
            )

    def _add_array(self, file: Path) -> None:
        """A file's sequences, checked as read a piece at a time and then read again, one
        at a time, as they are forecast: a file of many sequences is never held whole."""
        from .data.sources.common import ArrayRows, array_header

        _regular_file(file)
        key = self.npz_key if file.suffix.lower() == ".npz" else None
        shape, _ = array_header(file, key, "--key")  # before the data is decompressed
        one_channel = len(shape) == 3 and self.module.frame_shape[0] == 1  # T×H×W
        if self.channels_last:
            self._check_channels_last(shape, file)
            shape = (*shape[:-3], shape[-1], *shape[-3:-1])
        check_input_shape(
            (shape[0], 1, *shape[1:]) if one_channel else shape, self.module, str(file)
        )
        rows = ArrayRows(file, key, "--key")
        survey = ValueSurvey(str(file), getattr(self.module, "nan_fill", None))
        step = max(1, SURVEY_BYTES // max(1, rows.dtype.itemsize * int(np.prod(shape[1:]))))
        try:
            for start in range(0, len(rows), step):
                part = rows.rows(start, min(start + step, len(rows)))
                survey.add(part[:, None] if one_channel else self._channels_first(part), start)
        finally:
            rows.close()  # reopened when forecast: one open input at a time
        survey.check(self.module, self.allow_nonfinite)
        if len(shape) == 5:
            for i in range(shape[0]):
                self._add(f"{_key(file.stem)}_{i:06d}", (rows, i), file)
        else:
            self._add(_key(file.stem), (rows, None), file)

    def _channels_first(self, frames: np.ndarray) -> np.ndarray:
        """…×C×H×W frames of an array file (moved from …×H×W×C with `channels_last`)."""
        return np.moveaxis(frames, -1, -3) if self.channels_last else frames

    def _check_channels_last(self, shape: tuple[int, ...], file: Path) -> None:
        """With `channels_last`: frames of 4 or 5 axes, not already channels-first (which
        moving the axis would read as frames one pixel high, as `shard arrays` refuses)."""
        expected = tuple(self.module.frame_shape)
        if len(shape) not in (4, 5):
            raise InputError(
                f"{file}: --channels-last reads T×H×W×C or N×T×H×W×C frames, got shape {shape}"
                + ("; T×H×W frames have no channel axis: drop it" if len(shape) == 3 else "")
            )
        if tuple(shape[-3:]) == expected and shape[-1] != expected[0]:
            raise InputError(
                f"{file}: frames of shape {shape} are already channels-first (C×H×W "
                f"{_shape_text(expected)}, as the model takes them): drop --channels-last"
            )

    def _other_images(self) -> str:
        """For a folder without inputs that holds frames of other image formats (JPEG), as
        advice: `shard images` reads them."""
        from .data.sources.common import natural_key

        images = sorted(
            (p.name for p in self.source.iterdir() if p.suffix.lower() in OTHER_IMAGES),
            key=natural_key,
        )
        if not images:
            return ""
        return (
            f"; its {images[0]} … are read by `stpdist shard images` (a folder of such "
            "folders, --inputs-only T_IN), whose split forecast reads"
        )

    def _splits(self) -> str:
        """For a folder without inputs: the shard splits in it, when it is a dataset root
        (`stpdist shard … --out data/new` writes `data/new/train`), as advice."""
        splits = sorted(p.name for p in self.source.iterdir() if (p / INDEX_FILE).is_file())
        if not splits:
            return ""
        return (
            f"; it holds the shard splits {', '.join(splits)}: pass one split's folder, such "
            f"as {self.source / splits[0]}"
        )

    def _refuse_a_mix(self) -> None:
        """A folder is either arrays (one or more sequences a file) or the PNG frames of one
        sequence. PNGs beside arrays, or frames of another image format beside PNGs (a
        `4.jpg` after `0.png`…`3.png`: the newest frame), would otherwise be passed over
        without a word and the forecast made from other frames than meant."""
        from .data.sources.common import listed

        kinds: dict[str, list[str]] = {}
        for file in sorted(self.source.iterdir()):
            if file.name.startswith("."):  # hidden: macOS's `._0001.png`, `.DS_Store`
                continue
            suffix = file.suffix.lower()
            kind = (
                "arrays" if suffix in ARRAYS
                else "PNG frames" if suffix == ".png"
                else "other images" if suffix in OTHER_IMAGES
                else None
            )  # fmt: skip
            if kind is not None:
                kinds.setdefault(kind, []).append(file.name)
        if "PNG frames" in kinds and len(kinds) > 1:
            other = "arrays" if "arrays" in kinds else "other images"
            raise InputError(
                f"{self.source}: holds both PNG frames ({listed(kinds['PNG frames'])}) and "
                f"{other} ({listed(kinds[other])}); a folder is one sequence of PNG frames or "
                "a folder of .npy/.npz arrays: move the others out"
            )

    def _pngs(self) -> list[Path]:
        """The folder's PNG frames (`.png` in any case), in natural name order: `2.png`
        before `10.png`, zero-padded names as they sort, letters of any case."""
        from .data.sources.common import frame_key

        pngs = [  # not macOS's `._0001.png` copies, nor other hidden files
            p for p in self.source.iterdir() if p.suffix.lower() == ".png" and p.name[0] != "."
        ]
        return sorted(pngs, key=lambda p: frame_key(p.name))

    def _add_pngs(self, module: Any) -> None:
        from .data.sources.common import png_8bit

        mode = {1: "L", 3: "RGB"}.get(module.frame_shape[0])
        if mode is None:
            raise InputError(
                f"{self.source}: PNG frames need a 1- or 3-channel model; this one has "
                f"{module.frame_shape[0]}"
            )
        frames = []
        for png in self._pngs():
            _regular_file(png)
            _check_png_size(png, module.frame_shape)  # from the header: before decoding
            _check_png_colour(png, module.frame_shape[0])
            image = png_8bit(png, mode, "forecast reads PNG frames of 8 bits", PNG_ADVICE)
            frame = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
            if frame.shape != tuple(module.frame_shape):  # the frame that differs, named
                raise InputError(
                    f"{png}: a frame of C×H×W {_shape_text(frame.shape)}; the model takes "
                    f"C×H×W {_shape_text(module.frame_shape)} (channels × height × width)"
                )
            frames.append(frame)
        frames = np.stack(frames)
        check_inputs(frames, module, str(self.source), allow_nonfinite=self.allow_nonfinite)
        self._add(_key(self.source.name), frames, self.source)

    def _add(self, key: str, frames: Any, where: Path) -> None:
        """A sequence: its frames, or (a file's rows, the sequence's row or None for a
        file of one sequence) to read its newest T_in frames from when forecast."""
        if key in self._files:  # `a.b.npy` and `a_b.npy` both give `a_b`: refuse, not overwrite
            raise InputError(
                f"{self._files[key]} and {where} both give the sample key '{key}' (keys keep "
                "letters, digits, '_' and '-'); rename one of them"
            )
        self._files[key] = where
        if isinstance(frames, np.ndarray):
            frames = frames[-self.num_input_frames :]
        self.items.append((key, frames))

    def __len__(self) -> int:
        return len(self.items)

    def key(self, index: int) -> str:
        return self.items[index][0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames = self.items[index][1]
        if not isinstance(frames, np.ndarray):
            rows, row = frames
            if self._reading is not rows and self._reading is not None:
                self._reading.close()  # the previous file's stream: one open at a time
            self._reading = rows
            frames = rows.last(row, self.num_input_frames)
            frames = frames[:, None] if frames.ndim == 3 else self._channels_first(frames)
        frames = fill_missing(np.asarray(frames, dtype=np.float32), self.module)
        return {"inputs": self.from_physical(torch.as_tensor(frames))}


def _key(text: str) -> str:
    """A sample key from a file name (keys hold no dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "sample"


def refuse_keys_on_several_ranks(keys: Iterable[str], accelerator: Any, split: str) -> None:
    """Refuse, on every rank, a sample key that more than one rank predicted: each rank
    refuses a key met twice in its own share, but two ranks holding one key (a key repeated
    in shards that different ranks read) would each write a prediction under it, and
    `load_predictions` would keep one of them. The ranks' key sets are gathered once, after
    the pass (the predictions are in a staging folder then: nothing is replaced yet); the
    first such key, in key order, is an InputError naming it and its ranks."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    holders: dict[str, list[int]] = {}
    for rank, held in enumerate(gather_object([sorted(set(keys))])):  # a list per rank
        for key in held:
            holders.setdefault(key, []).append(rank)
    shared = sorted(key for key, ranks in holders.items() if len(ranks) > 1)
    if not shared:
        return
    key, ranks = shared[0], [str(rank) for rank in holders[shared[0]]]
    more = f" (and {len(shared) - 1} more keys so)" if len(shared) > 1 else ""
    raise InputError(
        f"sample key {key!r} appears on ranks {', '.join(ranks[:-1])} and {ranks[-1]} in the "
        f"{split} data{more}; predictions are written by key and one would replace the other: "
        "give each sample its own key"
    )


def check_output_folder(
    out: str | Path,
    *,
    overwrite: bool,
    protected: tuple[str | Path, ...] = (),
    earlier: EarlierOutput | None = None,
) -> Path:
    """Refuse, before anything is written, an `out` that is a file, that is or holds one of
    `protected` (the inputs, the model folder), the working folder, a dataset (a split
    folder or a folder of them), that lies in or holds a run's checkpoints, or that is not
    empty without `overwrite` (the last alone is what `overwrite` lifts; `earlier`, the
    command's own output: a folder holding anything else is refused first, as `overwrite`
    would not replace that either). First (on the main
    process) a replacement of `out` that a crash interrupted is finished or undone, as
    `shard` does: the checks then see `out` as it is meant to be, and no complete leftover
    copy stays behind silently."""
    if not str(out).strip():
        raise InputError("--out is empty: expected a folder")
    out = Path(out)
    rank = os.environ.get("RANK", "")
    if not rank.isdigit() or int(rank) == 0:  # the other ranks never write `out`
        _recover_swap(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    target = out.resolve()
    for path in protected:
        resolved = Path(path).resolve()
        if resolved == target or target in resolved.parents:
            raise InputError(f"--out {out} is or holds {path}, which this command reads")
    if holds_working_folder(out):  # replaced as a whole: every file in it deleted
        raise InputError(
            f"--out {out} is the current folder or holds it; the output folder is replaced "
            "as a whole: name a folder of its own (e.g. --out forecasts)"
        )
    split = _dataset_split(target)
    if split is not None:
        raise InputError(
            f"--out {out} is or holds the dataset split {split}, which even --overwrite "
            "never replaces: choose another folder"
        )
    checkpoint = _checkpoint_folder(target)
    if checkpoint is not None:
        raise InputError(
            f"--out {out} is in or holds the checkpoint folder {checkpoint}; writing there "
            "would damage the checkpoint: choose another folder"
        )
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not overwrite:
        if earlier is None:
            raise InputError(f"--out {out} is not empty; pass --overwrite to replace it")
        earlier.refuse_foreign(out)
        raise OutputExists(
            f"--out {out} holds {earlier.describe(out)}; pass --overwrite to replace it"
        )
    if occupied and earlier is not None:
        earlier.refuse_foreign(out)
    from .data.convert import refuse_write_protected

    # here, on every rank: refused by the main process alone, the others saw it vanish
    refuse_write_protected(out)
    return out


def _dataset_split(target: Path) -> Path | None:
    """The dataset split folder (index.json beside its shards, no weights: a model or
    checkpoint folder keeps its data's index.json too) that `target` is in, is, or holds as
    a direct sub-folder (a dataset root); None when there is none."""

    for folder in (target, *target.parents):
        if is_split_folder(folder):
            return folder
    if target.is_dir():
        return next((c for c in sorted(target.iterdir()) if is_split_folder(c)), None)
    return None


def is_split_folder(folder: Path) -> bool:
    """Whether `folder` is a dataset split: its index.json beside its shards, and no
    weights (a model or checkpoint folder keeps its data's index.json too)."""
    return (
        _holds_split_index(folder)
        and not (folder / MODEL_FILE).is_file()
        and not (folder / MANIFEST_FILE).is_file()
    )


def _holds_split_index(folder: Path) -> bool:
    """Whether `folder` holds a shard split's index.json (a JSON object with its `split`
    and `shards`, or any index.json beside .tar shards: a damaged split is still one): an
    index.json of anything else (a web project's, a notebook's) in a folder above `--out`
    does not make that folder a dataset."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return False
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        index = None
    if isinstance(index, dict) and "split" in index and "shards" in index:
        return True
    return any(folder.glob("*.tar"))


def _checkpoint_folder(target: Path) -> Path | None:
    """The checkpoint folder (or run's `checkpoints` folder) that `target` is in, is, or
    holds as `target/checkpoints`; None when there is none."""
    for folder in (target, *target.parents):
        if (folder / MANIFEST_FILE).is_file() and (
            (folder / MODEL_FILE).is_file() or is_sharded_checkpoint(folder)
        ):
            return folder
        if folder.name == "checkpoints" and (
            (folder.parent / "config.yaml").is_file() or any(folder.glob("step-*"))
        ):
            return folder
    own = target / "checkpoints"
    return own if own.is_dir() and _checkpoint_folder(own) else None


# ---------------------------------------------------------------------------- export
class _Forward(torch.nn.Module):
    """inputs B×T_in×C×H×W (scaled units) → predictions B×T_out×C×H×W: what is exported."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module.predict_frames(inputs)


def export(
    path: str | Path,
    out: str | Path,
    *,
    ckpt: str = "best",
    formats: tuple[str, ...] = (),
    overwrite: bool = False,
    trust_code: bool = False,
    raw_weights: bool = False,
) -> dict[str, float]:
    """Write a model folder (weights, config.yaml, index.json) to `out`, plus each of
    `formats` (torchscript → model.ts, exported-program → model.pt2, onnx → model.onnx),
    each checked against the eager model on test batches of 2 (the traced size) and 3.
    Returns the largest absolute difference per format.

    The graphs take and return the model's scaled units (stored units / the index's
    `value_scale`, [0, 1] for 8-bit data), any batch size. Everything is written into a
    staging folder that replaces `out` only once complete: a non-empty `out` needs
    `overwrite`, and a failure leaves `out` as it was. An `out` in (or holding) a run's
    checkpoints is refused. From a checkpoint trained with `trainer.ema`, the model
    folder's weights are the averaged ones, unless `raw_weights`. A sharded checkpoint's
    shards are consolidated into one `model.safetensors` (in this one process)."""

    def prepare(folder: Path) -> tuple[Path, Path, dict[str, Any], Any, dict[str, Any]]:
        run = folder.parent.parent if folder.parent.name == "checkpoints" else folder
        check_output_folder(
            out, overwrite=overwrite, protected=(folder, run), earlier=_export_output()
        )
        # the files copied into `out`, opened before the weights are read: a run that
        # retires the checkpoint meanwhile can no longer leave the copy without them
        sources = _open_sources(folder, run)
        try:
            module = _load_folder(folder, "cpu", None, trust_code, raw_weights)
            require_forecaster(module, "export")
            # read while the checkpoint is leased: a run may retire it once it is loaded
            return folder, run, sources, module, _export_info(module, folder, raw_weights)
        except BaseException:
            _close(sources)
            raise

    folder, run, sources, module, info = _on_chosen(path, ckpt, prepare)
    try:
        return _export(module, folder, run, sources, out, formats, overwrite, raw_weights, info)
    finally:
        _close(sources)


def _open_sources(folder: Path, run: Path) -> dict[str, Any]:
    """The files an export copies, opened: each of the model folder's own, else its run's."""
    sources: dict[str, Any] = {}
    try:
        for name in (MODEL_FILE, "config.yaml", INDEX_FILE):
            for source in (folder / name, run / name):
                if source.is_file():
                    sources[name] = open(source, "rb")  # noqa: SIM115 (closed by _close)
                    break
        # the training climatology the index names, kept beside it (ACC scores against it;
        # a diff review: an exported folder scored against data.root's own)
        beside = next((f for f in (folder, run) if (f / INDEX_FILE).is_file()), None)
        kept = read_index(beside).climatology if beside is not None else ""
        if kept.endswith(".npy") and (beside / kept).is_file():  # never a name copied above
            sources[kept] = open(beside / kept, "rb")  # noqa: SIM115 (closed by _close)
    except BaseException:
        _close(sources)
        raise
    return sources


def _config_in_todays_layout(path: Path) -> None:
    """An exported model folder's config.yaml written in today's layout when the checkpoint
    held one of before 2026-12-03: every later load of the folder said so again."""
    from .config import in_todays_layout

    if path.is_file():
        text = in_todays_layout(path.read_text(), str(path))
        if text is not None:
            path.write_text(text)


def _config_without_environment(path: Path) -> list[str]:
    """An exported model folder's config.yaml with its values read from environment
    variables (`${oc.env:HID}`, kept as such in a run's config.yaml) written as this
    process reads them, so that the folder stands alone: a forecast where the variables are
    not set failed on `trainer.output_dir`, and another `HID` built another model (an MLOps
    review). A value whose variable is not set here (a training setting a forecast does
    not read: its model was built without it) is left out for its default. Returns the
    keys written from the environment."""
    from omegaconf import OmegaConf

    if not path.is_file():
        return []
    config = OmegaConf.load(path)
    raw = OmegaConf.to_container(config, resolve=False)
    written: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, list):  # items too (a diff review: `[${oc.env:HID}, 4]` kept)
            for index, value in enumerate(node):
                if isinstance(value, dict | list):
                    walk(value, f"{prefix}{index}.")
                elif isinstance(value, str) and "oc.env" in value:
                    dotted = f"{prefix}{index}"
                    try:
                        node[index] = OmegaConf.to_container(
                            OmegaConf.create({"v": OmegaConf.select(config, dotted)}),
                            resolve=True,
                        )["v"]
                    except Exception as exc:  # no default for a list item: said
                        raise InputError(
                            f"{path}: {dotted} reads an environment variable that is not set "
                            f"here ({exc}); set it as the training did, then export"
                        ) from None
                    written.append(dotted)
            return
        if not isinstance(node, dict):
            return
        for key in list(node):
            dotted = f"{prefix}{key}"
            value = node[key]
            if isinstance(value, dict | list):
                walk(value, dotted + ".")
            elif isinstance(value, str) and "oc.env" in value:
                try:
                    node[key] = OmegaConf.to_container(
                        OmegaConf.create({"v": OmegaConf.select(config, dotted)}), resolve=True
                    )["v"]
                except Exception:  # noqa: BLE001 - its variable not set here
                    del node[key]
                written.append(dotted)

    walk(raw, "")
    if written:
        lines = path.read_text().splitlines(keepends=True)
        header = "".join(line for line in lines[: next(
            (i for i, line in enumerate(lines) if not line.startswith("#")), len(lines)
        )])  # fmt: skip
        path.write_text(header + OmegaConf.to_yaml(OmegaConf.create(raw)))
    return written


def _close(sources: dict[str, Any]) -> None:
    for handle in sources.values():
        handle.close()


def _export(
    module: Any,
    folder: Path,
    run: Path,
    sources: dict[str, Any],
    out: str | Path,
    formats: tuple[str, ...],
    overwrite: bool,
    raw_weights: bool,
    info: dict[str, Any],
) -> dict[str, float]:
    from .data.convert import staged_output

    say(f"exporting {folder}{' (its raw weights)' if raw_weights and has_average(folder) else ''}")
    wrapped = _Forward(module).eval()
    generator = torch.Generator().manual_seed(0)
    # traced on a batch of 2, checked on it and on a batch of 3: the batch axis is dynamic
    sample, other = (
        torch.rand(n, module.num_input_frames, *module.frame_shape, generator=generator)
        for n in (2, 3)
    )
    with torch.no_grad():
        expected = [(x, wrapped(x)) for x in (sample, other)]
    # as the graphs give them: a backbone of one's own may return float64 or float16
    info["outputs"]["dtype"] = str(expected[0][1].dtype).removeprefix("torch.")
    differences = {}
    with staged_output(out, overwrite, sources=(folder, run), earlier=_export_output()) as staging:
        for name, handle in sources.items():
            with open(staging / name, "wb") as copy:
                shutil.copyfileobj(handle, copy)
            stat = os.fstat(handle.fileno())
            os.utime(staging / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        _config_in_todays_layout(staging / "config.yaml")
        info["resolved_from_environment"] = _config_without_environment(staging / "config.yaml")
        averaged = has_average(folder) and not raw_weights  # the EMA as the model's weights
        if averaged or is_sharded_checkpoint(folder):  # the weights as loaded, in one file
            save_weights(safetensors_weights(module.state_dict()), staging / MODEL_FILE)
        for fmt in formats:
            exported = _EXPORTERS[fmt](wrapped, sample, staging)
            with torch.no_grad():
                differences[fmt] = max(
                    float((torch.as_tensor(exported(x)) - y).abs().max()) for x, y in expected
                )
        info["graphs"] = {
            FORMAT_FILES[fmt]: {"max_abs_difference_from_eager": difference}
            for fmt, difference in differences.items()
        }
        (staging / EXPORT_INFO).write_text(json.dumps(finite_json(info), indent=2) + "\n")
        if "onnx" in formats:  # the same record, its checks included, in the file itself
            _describe_onnx(staging / "model.onnx", info)
    return differences


EXPORT_INFO = "export.json"
"""What an exported folder holds, for whoever serves it without stpdist: which weights, from
which checkpoint and step, and the graphs' inputs and outputs (shapes, units)."""


def _export_info(module: Any, folder: Path, raw_weights: bool) -> dict[str, Any]:
    """The `EXPORT_INFO` record of an export of `folder` (a checkpoint or a model folder:
    the record of an export of an export names the checkpoint of the first)."""
    from . import __version__

    earlier = read_export_info(folder)
    if earlier is not None:  # an export of an exported folder: its weights as they were
        source, weights = earlier.get("exported_from"), earlier.get("weights")
    else:
        step = None
        if folder.parent.name == "checkpoints":
            with contextlib.suppress(CheckpointError):
                step = read_state(folder).global_step
        source = {"path": str(folder.resolve()), "step": step}
        weights = "ema" if has_average(folder) and not raw_weights else "raw"
        if weights == "raw" and not (folder / STATE_FILE).is_file() and _trained_with_ema(folder):
            weights = "unknown"  # a model folder exported before 2026-12-07 of an EMA run
    frames = (*module.frame_shape,)
    return {
        "stpdist_version": __version__,
        "exported_from": source,
        "weights": weights,
        "inputs": {"name": "inputs", "shape": ["batch", module.num_input_frames, *frames],
                   "dtype": "float32"},
        "outputs": {"name": "predictions", "shape": ["batch", module.num_output_frames, *frames],
                    "dtype": "float32"},
        "units": "stored values / value_scale (stored = the dataset's units); the "
                 "normalisation and the clamp to the data's range are inside the graphs",
        "value_scale": module.value_scale,
    }  # fmt: skip


def _trained_with_ema(folder: Path) -> bool:
    """Whether `folder`'s config.yaml (a model folder's) has `trainer.ema` set."""
    import yaml

    try:
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        return bool((config.get("trainer") or {}).get("ema"))
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def read_export_info(folder: str | Path) -> dict[str, Any] | None:
    """The `EXPORT_INFO` record of an exported folder; None for any other folder (and for a
    folder exported before 2026-12-07, which has none)."""
    file = Path(folder) / EXPORT_INFO
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: unreadable ({exc})") from None
    if not isinstance(info, dict):
        raise InputError(f"{file}: expected a JSON object")
    return info


@contextlib.contextmanager
def _quiet_tracer() -> Any:
    """Tracing warns (TracerWarning) wherever a tensor's size becomes a Python number: the
    frame loops unroll for the model's T_in/T_out and C×H×W is fixed, which is what an
    exported model wants. Only that category is silenced; the batch axis stays dynamic
    (checked on another batch size after each export)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _torchscript(wrapped: torch.nn.Module, sample: torch.Tensor, out: Path) -> Any:
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(wrapped, sample, check_trace=False)
    traced.save(str(out / "model.ts"))
    return torch.jit.load(str(out / "model.ts"))


def _exported_program(wrapped: torch.nn.Module, sample: torch.Tensor, out: Path) -> Any:
    batch = torch.export.Dim("batch", min=1, max=65536)  # any batch size; frames fixed
    program = torch.export.export(wrapped, (sample,), dynamic_shapes={"inputs": {0: batch}})
    torch.export.save(program, str(out / "model.pt2"))
    return torch.export.load(str(out / "model.pt2")).module()


def _onnx(wrapped: torch.nn.Module, sample: torch.Tensor, out: Path) -> Any:
    try:
        import onnx  # noqa: F401 (`_describe_onnx` writes the file's metadata with it)
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "--format onnx needs onnx and onnxruntime (pip install 'stpdist[onnx]')"
        ) from exc
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(
            wrapped,
            (sample,),
            str(out / "model.onnx"),
            input_names=["inputs"],
            output_names=["predictions"],
            dynamic_axes={"inputs": {0: "batch"}, "predictions": {0: "batch"}},
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    return lambda x: session.run(None, {"inputs": x.numpy()})[0]


def _describe_onnx(path: Path, info: dict[str, Any]) -> None:
    """The ONNX file's outputs given their sizes (the tracer named them by the op that made
    them: `Clippredictions_dim_1`…) and `info` as its metadata (`stpdist_export`, JSON), for
    an ONNX runtime that sees the file alone."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)  # weights over 2 GB stay beside
    for value, shape in ((graph.graph.output[0], info["outputs"]["shape"]),
                         (graph.graph.input[0], info["inputs"]["shape"])):  # fmt: skip
        for dim, size in zip(value.type.tensor_type.shape.dim, shape):
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
    graph.doc_string = (
        f"stpdist model: inputs {info['inputs']['shape']} → predictions "
        f"{info['outputs']['shape']}, float32, in {info['units']}"
    )
    entry = graph.metadata_props.add()
    entry.key, entry.value = "stpdist_export", json.dumps(info)
    onnx.save(graph, str(path))


EXPORT_FILES = ("model.ts", "model.pt2", "model.onnx")
"""The graphs `export` writes (torchscript, exported-program, onnx), beside the model folder's
files."""


def _export_output() -> EarlierOutput:
    """What `export` writes, which its `--overwrite` replaces (and nothing else)."""
    from .data.convert import EarlierOutput

    files = (MODEL_FILE, "config.yaml", INDEX_FILE, EXPORT_INFO, *EXPORT_FILES)
    return EarlierOutput("export", files, markers=(MODEL_FILE,))


FORMAT_FILES = {"torchscript": "model.ts", "exported-program": "model.pt2", "onnx": "model.onnx"}

_EXPORTERS = {
    "torchscript": _torchscript,
    "exported-program": _exported_program,
    "onnx": _onnx,
}
