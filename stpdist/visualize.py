"""Frame sequences → pictures: sample panels (PNG), GIFs and the per-lead-time plot.

Legend: T time, C channels, H×W frame size.
A sample panel has rows input | truth | prediction | persistence | |error|, input frames
numbered −(T_in−1) … 0 (0 is the last input) and lead times +1 … +T_out, a title with the
sample key, step and MSE, and colour bars for the values and for |error|. Every channel is
drawn (`channel_groups`): 3 channels without a colormap as one RGB picture, any other
count a channel at a time (a block of panel rows, a GIF strip, a `sequence_panel` row),
labelled "c0", "c1", … or by the dataset's variable names (`channel_names`: "z500").
Colour ranges (`_value_range`): each channel on its own, over all frames drawn together;
the fixed [0, 1] (the data range after value scaling) while its values stay within
[−0.01, 1.01], else its own min … max (physical units, standardised data), so nothing is
clipped flat. Sample keys become file names only through `sample_file_stems` (keys come
from data: "../x" or "/abs/x" must not leave the folder).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image

from .console import lead_keys, log
from .data.sources.common import natural_key
from .data.staging import as_final

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GAP = 2
DPI = 100
CELL_IN = 0.8
"""Inches per frame in a sample panel: 80 px at DPI, so a 10-frame panel is ~1100 px wide,
readable when a wandb media panel shrinks it to half."""
MAX_STEM = 100
"""Longest file stem made from a key (file systems allow 255 bytes; room for suffixes)."""


# ---------------------------------------------------------------------------- file names
def sample_file_stem(key: str) -> str:
    """A file stem from a sample key that stays inside its folder: every run of characters
    other than letters, digits, `_` and `-` becomes `_` (slashes, dots, spaces), leading
    and trailing `_` are dropped, the rest is cut to MAX_STEM; an empty result is
    "sample"."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(key)).strip("_")[:MAX_STEM]
    return stem or "sample"


def sample_file_stems(keys: Iterable[str]) -> list[str]:
    """`sample_file_stem` of each key, distinct: a stem already taken (two keys that differ
    only in characters the sanitising replaces, e.g. "a/b" and "a_b", or only in case, which
    some file systems ignore) gets a suffix "-2", "-3", … in key order."""
    taken: set[str] = set()
    stems = []
    for key in keys:
        base = stem = sample_file_stem(key)
        n = 1
        while stem.casefold() in taken:
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def save_samples(
    folder: str | Path,
    samples: Sequence[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]],
    colormap: str | None = None,
    *,
    step: int | None = None,
    gifs: bool = True,
    channel_names: Sequence[str] | None = None,
    strict: bool = False,
) -> list[tuple[str, Path, Path | None]]:
    """A panel (`<stem>.png`) and, with `gifs` and a prediction, a GIF (`<stem>.gif`) for
    each (key, inputs, truth, prediction) in `folder`, named by `sample_file_stems`:
    [(stem, png, gif or None)]. `channel_names` (one per channel, e.g. the dataset's
    variables) label the channels' rows and strips (`_channel_suffixes`); names that do not
    fit are an error.

    Pictures are a view of the results, never a reason to lose them: a failure to draw or
    write them (a full disk, a folder that cannot be made) is one warning naming the folder,
    the pictures this call wrote (complete or partly written) are removed, the folder too if
    that leaves it empty, and [] is returned. With `strict` the error is raised instead (the
    caller removes the files: training's tracker, which removes a validation's files)."""
    folder = Path(folder)
    stems = sample_file_stems(s[0] for s in samples)
    for channels in sorted({np.shape(inputs)[1] for _, inputs, *_ in samples}):
        _channel_suffixes(channels, colormap, channel_names)  # the caller's error: raised
    written = []
    try:
        for stem, (key, inputs, truth, pred) in zip(stems, samples):
            png = save_panel(folder / f"{stem}.png", inputs, truth, pred, colormap, key=key,
                             step=step, channel_names=channel_names)  # fmt: skip
            gif = None
            if gifs and pred is not None:
                gif = save_gif(folder / f"{stem}.gif", truth, pred, colormap=colormap, key=key,
                               channel_names=channel_names)  # fmt: skip
            written.append((stem, png, gif))
    except Exception as exc:  # (not KeyboardInterrupt, SystemExit: those stop the command)
        if strict:
            raise
        _pictures_not_written(folder, stems, exc)
        return []
    return written


def _pictures_not_written(folder: Path, stems: Sequence[str], exc: Exception) -> None:
    """One warning naming `folder` (`shown_folder`) and the error; the pictures of `stems`
    removed from it, and the folder if that leaves it empty."""
    error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.strerror:  # its file's name, not its staging path
        named = f": {Path(exc.filename).name}" if exc.filename else ""
        error = f"[Errno {exc.errno}] {exc.strerror}{named}"
    log.warning(
        "%s: the sample pictures were not written (%s%s); they are left out, the other "
        "outputs are not affected",
        shown_folder(folder),
        type(exc).__name__,
        f": {error}" if error else "",
    )
    if not folder.is_dir():
        return
    for name in (f"{stem}{suffix}" for stem in stems for suffix in (".png", ".gif")):
        with contextlib.suppress(OSError):
            (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty: what else is there stays


def shown_folder(folder: str | Path) -> Path:
    """`folder` as the user finds it: a path inside this process's staging folder of an
    output `out` (`predict` and `forecast` write into one that replaces `out` once
    complete, see `data/convert.py: staged_output`) as the same path under `out`; any
    other path as it is."""
    from .data.staging import leftover

    folder = Path(folder)
    for staging in (folder, *folder.parents):
        named = re.fullmatch(r"\.(.+)\.staging-.+", staging.name)
        if named and leftover(staging.parent / named[1], "staging") == staging:
            return staging.parent / named[1] / folder.relative_to(staging)
    return folder


# ---------------------------------------------------------------------------- colour ranges
def channel_groups(channels: int, colormap: str | None = None) -> list[slice]:
    """The channels drawn as one picture: all three as RGB for 3 channels without a colormap,
    otherwise each channel on its own (gray, or through the colormap): a picture never
    drops a channel."""
    if channels == 3 and colormap is None:
        return [slice(0, 3)]
    return [slice(c, c + 1) for c in range(channels)]


_UNFIT_NAMES: set[str] = set()


def north_up(module: Any, samples: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`samples` ((key, inputs, truth, prediction), frames …×H×W) as pictures draw them:
    where the module's data has latitudes that ascend with the row (WeatherBench 1's files
    store the south first), the rows flipped, so maps are drawn north up as the other
    sources' are. Other data as it is."""
    latitudes = getattr(getattr(module, "geo", None), "latitudes", None)
    if not latitudes or len(latitudes) < 2 or latitudes[0] >= latitudes[-1]:
        return list(samples)
    return [
        (key, *(None if a is None else np.flip(np.asarray(a), axis=-2).copy() for a in arrays))
        for key, *arrays in samples
    ]


def names_for_pictures(module: Any, samples: Sequence[tuple[Any, ...]]) -> list[str] | None:
    """A module's `channel_names` (the Forecaster's: the index's variables) for pictures of
    `samples` ((key, inputs T×C×H×W, …)), or None (c0, c1, …) with a warning where they do
    not fit: one string per channel. Pictures never stop a run."""
    names = getattr(module, "channel_names", None)
    if names is None or not samples:
        return None
    channels = np.asarray(samples[0][1]).shape[1]
    if isinstance(names, (list, tuple)) and len(names) == channels:
        return [str(name) for name in names]
    if type(module).__name__ in _UNFIT_NAMES:
        return None
    _UNFIT_NAMES.add(type(module).__name__)  # said once, not at every validation
    log.warning(
        "%s.channel_names is %r, not one name per channel of the %d-channel data: pictures "
        "label the channels c0, c1, …",
        type(module).__name__,
        names,
        channels,
    )
    return None


def _channel_suffixes(
    channels: int, colormap: str | None = None, channel_names: Sequence[str] | None = None
) -> list[tuple[slice, str]]:
    """Each picture of `channel_groups` with the suffix that labels its rows, strips and
    colour bars: "" where there is one picture (1 channel, or 3 as RGB), else " " and the
    channel's name in `channel_names` (one per channel: " z500"), or " c1" without names."""
    if channel_names is not None and len(channel_names) != channels:
        raise ValueError(
            f"channel_names has {len(channel_names)} names ({', '.join(map(str, channel_names))})"
            f" for data of {channels} channels; expected one name per channel"
        )
    groups = channel_groups(channels, colormap)
    if len(groups) == 1:
        return [(groups[0], "")]
    names = [f"c{c}" for c in range(channels)] if channel_names is None else channel_names
    # a `$` is drawn as itself, not as the start of math text
    return [(group, " " + str(names[group.start]).replace("$", r"\$")) for group in groups]


def _value_range(arrays: Iterable[np.ndarray | None]) -> tuple[float, float]:
    """The colour range of frames drawn on one scale (one channel, or the three of an RGB
    picture, over every frame shown): the fixed (0, 1), the data range after value scaling,
    while every finite value lies within [−0.01, 1.01], so pictures of scaled images do not
    depend on their content; otherwise the frames' own (min, max): physical units (kelvin,
    geopotential) or standardised data. A constant outside [0, 1] gets (v − 0.5, v + 0.5)."""
    finite = [
        a[np.isfinite(a)] for a in (np.asarray(x, np.float64) for x in arrays if x is not None)
    ]
    finite = [a for a in finite if a.size]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(float(a.min()) for a in finite), max(float(a.max()) for a in finite)
    if lo >= -0.01 and hi <= 1.01:
        return 0.0, 1.0
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    return lo, hi


def _error_range(
    value_range: tuple[float, float], errors: Sequence[np.ndarray]
) -> tuple[float, float]:
    """The colour range of |error| frames in pictures without a colour bar (`sequence_panel`):
    (0, 1) beside values drawn on (0, 1), else 0 … the largest |error| shown."""
    if value_range == (0.0, 1.0):
        return value_range
    return 0.0, max([float(np.nanmax(e)) for e in errors if e.size] + [1e-6])


# ---------------------------------------------------------------------------- raw frames
def to_rgb8(
    frames_TCHW: np.ndarray,
    colormap: str | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """T×C×H×W → T×H×W×3 uint8, one picture a frame: 3 channels as RGB (without a colormap),
    1 channel in gray or through a matplotlib colormap (e.g. "viridis" for radar or flow
    intensity). `value_range` (lo, hi) maps to the ends of the colour scale, values beyond
    it are clipped; by default `_value_range` of the frames: (0, 1) for data in [0, 1],
    else their own min … max. Other channel counts are refused: draw each of
    `channel_groups` apart."""
    frames = np.asarray(frames_TCHW, dtype=np.float32)
    if channel_groups(frames.shape[1], colormap) != [slice(0, frames.shape[1])]:
        raise ValueError(
            f"to_rgb8 draws 1 channel, or 3 as RGB without a colormap; got frames of shape "
            f"{frames.shape} with colormap {colormap!r}: draw each of channel_groups apart"
        )
    lo, hi = value_range or _value_range([frames])
    frames = np.clip((frames - lo) / (hi - lo), 0.0, 1.0)
    if colormap is not None:
        import matplotlib

        rgb = matplotlib.colormaps[colormap](frames[:, 0])[..., :3]
    else:
        rgb = np.repeat(frames.transpose(0, 2, 3, 1), 3 // frames.shape[1], axis=3)
    return np.round(rgb * 255).astype(np.uint8)


def sequence_panel(
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
) -> np.ndarray:
    """The frames alone as one uint8 RGB image, without labels: rows input, truth,
    prediction, |truth − prediction| (one row per channel of `channel_groups`, i.e. for all
    but 3-channel RGB data); columns are frames, separated by GAP-pixel white lines. Only
    what exists is drawn. Each channel is drawn on its own range over the input, truth and
    prediction frames together (`_value_range`: (0, 1) for data in [0, 1]); its |error| on
    (0, 1) beside such data, else on 0 … its largest |error|."""
    values = [np.asarray(x, np.float32) for x in (inputs_TCHW, truth_TCHW, prediction_TCHW)
              if x is not None]  # fmt: skip
    errors = []
    if truth_TCHW is not None and prediction_TCHW is not None:
        errors.append(np.abs(values[1] - values[2]))
    groups = channel_groups(values[0].shape[1], colormap)
    ranges = [_value_range([x[:, g] for x in values]) for g in groups]
    error_ranges = [_error_range(r, [e[:, g] for e in errors]) for g, r in zip(groups, ranges)]
    rows = [to_rgb8(x[:, g], colormap, r) for x in values for g, r in zip(groups, ranges)]
    rows += [to_rgb8(e[:, g], colormap, r) for e in errors for g, r in zip(groups, error_ranges)]
    h, w = values[0].shape[-2:]
    columns = max(len(r) for r in rows)
    panel = np.full((len(rows) * (h + GAP) - GAP, columns * (w + GAP) - GAP, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for c, frame in enumerate(frames):
            top, left = r * (h + GAP), c * (w + GAP)
            panel[top : top + h, left : left + w] = frame
    return panel


# ---------------------------------------------------------------------------- sample panel
LABEL_PT = 12
"""Font size of a panel's row labels, in points."""
LINE_IN = 0.21
"""Height of one line of a row label at LABEL_PT, inches (matplotlib's line spacing: a
3-line label measures 0.61 in)."""
LEFT_IN, RIGHT_IN, TOP_IN, HEAD_IN = 1.5, 1.35, 0.6, 0.3
"""A panel's margins, inches: left (at least; wider for longer row labels), right (colour
bars), top (title), and the line of frame numbers above a block's first row."""
ROW_GAP_IN, ERROR_GAP_IN, BLOCK_GAP_IN = 0.06, 0.2, 0.3
"""Space between rows, before a block's first |error| row, and between channel blocks."""


class _Row:
    """One row of a sample panel: label, T×C'×H×W frames (C' 1 or 3), 'value' or 'error',
    and whether its columns are lead times (else input frames)."""

    def __init__(self, label: str, frames: np.ndarray, kind: str, leads: bool) -> None:
        self.label, self.frames, self.kind, self.leads = label, frames, kind, leads


class _Placed(NamedTuple):
    """A row's place in the panel: its block (channel group), whether frame numbers head it,
    the gap above it (before a block's first |error| row, between blocks) and the height of
    its slot (inches)."""

    row: _Row
    block: int
    numbered: bool
    gap: float
    slot: float


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def _panel_series(
    inputs: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray | None
) -> list[tuple[str, np.ndarray, str, bool, np.ndarray | None]]:
    """(label, T×C×H×W frames, 'value' or 'error', lead times?, the truth its MSE is taken
    against, or None) for each row kind of a sample panel that exists."""
    series: list[tuple[str, np.ndarray, str, bool, np.ndarray | None]] = [
        ("input", inputs, "value", False, None)
    ]
    if truth is None:
        if prediction is not None:
            series.append(("prediction", prediction, "value", True, None))
        return series
    # persistence: the last input frame held for every lead time (the nowcasting floor)
    persistence = np.repeat(inputs[-1:], len(truth), axis=0)
    series.append(("truth", truth, "value", True, None))
    if prediction is not None:
        series.append(("prediction", prediction, "value", True, truth))
    series.append(("persistence\n(last input)", persistence, "value", True, truth))
    if prediction is not None:
        series.append(("|error|\nprediction", np.abs(truth - prediction), "error", True, None))
    series.append(("|error|\npersistence", np.abs(truth - persistence), "error", True, None))
    return series


def _panel_blocks(
    inputs: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray | None,
    colormap: str | None,
    channel_names: Sequence[str] | None = None,
) -> list[tuple[str, list[_Row]]]:
    """(channel suffix, rows) for each block of a sample panel: one block per channel of
    `channel_groups` (a single block, suffix "", for 1 channel or RGB). A row label names
    its channel ("truth c1", or "truth t2m" by `channel_names`) and, for prediction and
    persistence, that channel's MSE."""
    blocks = []
    for group, suffix in _channel_suffixes(inputs.shape[1], colormap, channel_names):
        rows = []
        for label, frames, kind, leads, reference in _panel_series(inputs, truth, prediction):
            part = frames[:, group]
            if kind == "error" and part.shape[1] == 3:
                part = part.mean(axis=1, keepdims=True)  # one error map for RGB
            first, *rest = label.split("\n")
            lines = [first + suffix, *rest]
            if reference is not None:
                lines.append(f"MSE {_mse(part, reference[:, group]):.4g}")
            rows.append(_Row("\n".join(lines), part, kind, leads))
        blocks.append((suffix, rows))
    return blocks


def _label_size(label: str) -> tuple[float, float]:
    """Width and height of a row label at LABEL_PT, inches: the widest line measured with
    matplotlib's own font metrics, LINE_IN a line."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=LABEL_PT)
    lines = label.split("\n")
    width = max(text_to_path.get_text_width_height_descent(s, prop, ismath=False)[0] for s in lines)
    return width / 72, len(lines) * LINE_IN


def _row_layout(blocks: list[tuple[str, list[_Row]]], cell_h: float) -> list[_Placed]:
    """Each row's place, top to bottom: frame numbers above a block's first row and its
    first lead-time row, a gap before its first |error| row and between blocks; a slot as
    tall as the frames, or as the row's label where that is taller (labels never overlap);
    the gaps widened where colour-bar labels would overlap (`_spaced_for_bar_labels`)."""
    placed = []
    for b, (_, rows) in enumerate(blocks):
        first_lead = next((i for i, r in enumerate(rows) if r.leads), None)
        first_error = next((i for i, r in enumerate(rows) if r.kind == "error"), None)
        for i, row in enumerate(rows):
            gap = ERROR_GAP_IN if i == first_error else BLOCK_GAP_IN if b > 0 and i == 0 else 0.0
            slot = max(cell_h, _label_size(row.label)[1])
            placed.append(_Placed(row, b, i == 0 or i == first_lead, gap, slot))
    return _spaced_for_bar_labels(placed, blocks, cell_h)


def _bar_label(kind: str, suffix: str) -> str:
    return ("value" if kind == "value" else "|error|") + suffix


def _bar_spans(
    placed: list[_Placed], cell_h: float
) -> tuple[dict[tuple[int, str], list[float]], float]:
    """((block, kind) → [top, bottom] depth of its rows' frames, i.e. of its colour bar, in
    inches from the panel's top, top to bottom; the depth below the last row)."""
    depth = TOP_IN
    spans: dict[tuple[int, str], list[float]] = {}
    for p in placed:
        depth += p.slot + (HEAD_IN if p.numbered else 0.0) + p.gap
        bottom = depth - (p.slot - cell_h) / 2
        spans.setdefault((p.block, p.row.kind), [bottom - cell_h, bottom])[1] = bottom
        depth += ROW_GAP_IN
    return spans, depth


BAR_LABEL_GAP_IN = 0.1
"""Least space between two colour bars' labels, and between the first one and the title."""


def _spaced_for_bar_labels(
    placed: list[_Placed], blocks: list[tuple[str, list[_Row]]], cell_h: float
) -> list[_Placed]:
    """`placed` with the gap above a colour bar's first row widened where its label, or
    the label of the bar above, is longer than its bar (long channel names: "value
    geopotential_500hPa" beside one or two rows) and the two would meet, or where the
    first label would reach the title. Labels shorter than their bars change nothing."""
    spans, _ = _bar_spans(placed, cell_h)
    first_row = {}
    for i, p in enumerate(placed):
        first_row.setdefault((p.block, p.row.kind), i)
    above = TOP_IN - BAR_LABEL_GAP_IN  # the lowest point of the title, roughly
    shift = 0.0  # how far the gaps widened so far moved this bar down
    placed = list(placed)
    for (block, kind), (top, bottom) in spans.items():
        length = _label_size(_bar_label(kind, blocks[block][0]))[0]
        reach = max(0.0, (length - (bottom - top)) / 2)  # beyond each end of its bar
        extra = max(0.0, above + BAR_LABEL_GAP_IN - (top + shift - reach))
        if extra:
            i = first_row[block, kind]
            placed[i] = placed[i]._replace(gap=placed[i].gap + extra)
            shift += extra
        above = bottom + shift + reach
    return placed


def _panel_height(
    placed: list[_Placed], blocks: list[tuple[str, list[_Row]]], cell_h: float
) -> float:
    """A panel's height, inches: title, rows and 0.1 below them; more where a colour bar's
    label is longer than its bar (a block of one row of wide frames)."""
    spans, depth = _bar_spans(placed, cell_h)
    overhangs = [(top + bottom + _label_size(_bar_label(kind, blocks[b][0]))[0]) / 2 + 0.05
                 for (b, kind), (top, bottom) in spans.items()]  # fmt: skip
    return max([depth + 0.1, *overhangs])


def _block_styles(rows: list[_Row], colormap: str | None) -> dict[str, tuple[str, float, float]]:
    """kind → (colormap name, vmin, vmax) of one block: its values on `_value_range` of its
    value rows, its |error| rows on 0 … their largest |error| (both rows share it)."""
    errors = [float(np.nanmax(r.frames)) for r in rows if r.kind == "error"]
    return {
        "value": (colormap or "gray", *_value_range(r.frames for r in rows if r.kind == "value")),
        "error": ("magma" if colormap else "gray_r", 0.0, max(errors + [1e-6])),
    }


def _scores(
    inputs: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray | None
) -> dict[str, float]:
    """The sample's MSE ('mse', with a prediction) and persistence's ('persistence_mse'),
    over all channels, where there is a truth."""
    if truth is None:
        return {}
    scores = {"persistence_mse": _mse(np.repeat(inputs[-1:], len(truth), axis=0), truth)}
    if prediction is not None:
        scores["mse"] = _mse(prediction, truth)
    return scores


def sample_figure(
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
    *,
    key: str = "",
    step: int | None = None,
    channel_names: Sequence[str] | None = None,
) -> Figure:
    """A sample panel as a matplotlib Figure (not yet saved): a title (key, step, the
    sample's MSE next to persistence's), labelled rows (input, truth, prediction,
    persistence, |error| of both; only what exists; one axes a row), input frames numbered
    −(T_in−1)…0 and lead times +1…+T_out, a colour bar for the values and one for |error|.
    Data of 2 or more channels (but 3-channel RGB) get a block of rows per channel, each
    with its own two colour bars ("value c1", "|error| c1"); `channel_names` (one per
    channel) name them instead ("truth t2m", "value t2m"). Without a colormap everything
    is gray (errors dark on white)."""
    from matplotlib.figure import Figure

    inputs = np.asarray(inputs_TCHW, np.float32)
    truth = None if truth_TCHW is None else np.asarray(truth_TCHW, np.float32)
    prediction = None if prediction_TCHW is None else np.asarray(prediction_TCHW, np.float32)
    blocks = _panel_blocks(inputs, truth, prediction, colormap, channel_names)
    rows = [row for _, block in blocks for row in block]
    columns = max(len(r.frames) for r in rows)
    h, w = inputs.shape[-2:]
    # the longer side of a frame gets CELL_IN: frames keep their aspect ratio
    cell_w, cell_h = CELL_IN * min(1.0, w / h), CELL_IN * min(1.0, h / w)
    gap_px = max(1, round(0.06 * w / cell_w))  # white lines between frames, in frame pixels
    scale = cell_w / w  # inches per frame pixel
    left = max(LEFT_IN, max(_label_size(r.label)[0] for r in rows) + 0.2)
    placed = _row_layout(blocks, cell_h)
    height = _panel_height(placed, blocks, cell_h)
    width = left + (columns * (w + gap_px) - gap_px) * scale + RIGHT_IN
    # whole pixels (rounded first: float noise must not add one)
    width, height = (math.ceil(round(v * DPI, 6)) / DPI for v in (width, height))
    fig = Figure(figsize=(width, height), dpi=DPI)
    styles = [_block_styles(block, colormap) for _, block in blocks]
    y = height - TOP_IN
    mappables: dict[tuple[int, str], Any] = {}
    extents: dict[tuple[int, str], list[float]] = {}  # → [lowest y, highest y] of its rows
    for p in placed:
        y -= p.slot + (HEAD_IN if p.numbered else 0.0) + p.gap
        bottom = y + (p.slot - cell_h) / 2  # the frames in the middle of their slot
        row_w = (len(p.row.frames) * (w + gap_px) - gap_px) * scale
        ax = fig.add_axes((left / width, bottom / height, row_w / width, cell_h / height))
        image = _draw_row(ax, p.row, styles[p.block][p.row.kind], gap_px, numbered=p.numbered)
        mappables.setdefault((p.block, p.row.kind), image)
        extents.setdefault((p.block, p.row.kind), [bottom, bottom + cell_h])[0] = bottom
        y -= ROW_GAP_IN
    _colour_bars(fig, mappables, extents, [s for s, _ in blocks], x=width - RIGHT_IN + 0.25)
    title = [key or "sample"] + ([f"step {step}"] if step is not None else [])
    scores = _scores(inputs, truth, prediction)
    if "mse" in scores:
        title.append(f"MSE {scores['mse']:.4g} (persistence {scores['persistence_mse']:.4g})")
    fitted_title(fig, "  ·  ".join(title))
    return fig


TITLE_PT, SMALLEST_TITLE_PT = 15, 8
"""A panel title's type size, and the smallest it is shrunk to before it is wrapped."""


def fitted_title(fig: Figure, text: str) -> Any:
    """`text` as the title at the top of `fig` (0.2 in below its edge), whole at any figure
    width: in smaller type (down to SMALLEST_TITLE_PT) where a short sequence makes the
    figure narrow, then a line per "  ·  " part, and a part still too wide (a long sample
    key) shortened in its middle ("station_12…_2019"). Drawn as written (no math text: a
    `$` in a sample key is a dollar sign)."""
    room_pt = fig.get_figwidth() * 72 * 0.92
    width_pt = _text_width_pt(text, TITLE_PT)
    size = TITLE_PT if width_pt <= room_pt else TITLE_PT * room_pt / width_pt
    if size < SMALLEST_TITLE_PT:
        size = SMALLEST_TITLE_PT
        text = "\n".join(_shortened(part, size, room_pt) for part in text.split("  ·  "))
    y = 1 - 0.2 / fig.get_figheight()
    return fig.suptitle(text, fontsize=size, y=y, va="top", parse_math=False)


def _text_width_pt(text: str, size: float) -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=size)
    return text_to_path.get_text_width_height_descent(text, prop, ismath=False)[0]


def _shortened(text: str, size: float, room_pt: float) -> str:
    """`text`, or its start and end around "…", as long as fits `room_pt` at `size`."""
    if _text_width_pt(text, size) <= room_pt:
        return text
    keep = len(text) - 1
    while keep > 2:
        short = f"{text[: (keep + 1) // 2]}…{text[len(text) - keep // 2 :]}"
        if _text_width_pt(short, size) <= room_pt:
            return short
        keep -= max(1, keep // 10)
    return text[:1] + "…"


def _draw_row(ax: Any, row: _Row, style: tuple, gap_px: int, *, numbered: bool) -> Any:
    """One row's frames side by side in `ax` (white gaps), labelled on the left; numbered
    on top (−(T−1)…0 for input frames, +1…+T for lead times) when `numbered`."""
    cmap_name, vmin, vmax = style
    t, c, h, w = row.frames.shape
    strip = np.full((h, t * (w + gap_px) - gap_px, c), np.nan, np.float32)
    for i, frame in enumerate(row.frames):
        strip[:, i * (w + gap_px) : i * (w + gap_px) + w] = frame.transpose(1, 2, 0)
    if c == 3:  # RGB: the values themselves, white gaps
        rgb = np.clip((strip - vmin) / (vmax - vmin), 0.0, 1.0)
        image = ax.imshow(np.where(np.isnan(strip), 1.0, rgb), interpolation="nearest")
    else:
        import matplotlib

        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="white")  # white gaps
        masked = np.ma.masked_invalid(strip[..., 0])
        image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if cmap_name == "gray_r":  # white-based scale: outline the frames to keep their edges
            from matplotlib.patches import Rectangle

            for i in range(t):
                corner = (i * (w + gap_px) - 0.5, -0.5)
                ax.add_patch(Rectangle(corner, w, h, fill=False, edgecolor="0.6", linewidth=0.8))
    ax.set_aspect("auto")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_yticks([])
    ax.set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=LABEL_PT)
    if numbered:
        centres = [i * (w + gap_px) + (w - 1) / 2 for i in range(t)]
        names = [f"+{i + 1}" if row.leads else ("0" if i == t - 1 else f"−{t - 1 - i}")
                 for i in range(t)]  # fmt: skip
        ax.xaxis.tick_top()
        ax.set_xticks(centres, names, fontsize=11)
        ax.tick_params(axis="x", length=0, pad=2)
    else:
        ax.set_xticks([])
    return image


def _colour_bars(
    fig: Figure, mappables: dict, extents: dict, suffixes: list[str], *, x: float
) -> None:
    """Beside each block (channel) a colour bar for its value rows ('value c1') and one
    for its |error| rows ('|error| c1'), each as tall as its rows; none for RGB rows."""
    width, height = fig.get_size_inches()
    for (block, kind), mappable in mappables.items():
        if mappable.get_array().ndim == 3:  # RGB frames: no colour scale to show
            continue
        low, high = extents[block, kind]
        cax = fig.add_axes((x / width, low / height, 0.18 / width, (high - low) / height))
        bar = fig.colorbar(mappable, cax=cax)
        bar.set_label(_bar_label(kind, suffixes[block]), fontsize=LABEL_PT)
        bar.ax.tick_params(labelsize=10)


_UNDRAWN_GLYPHS_SAID: list[bool] = [False]


@contextlib.contextmanager
def glyphs_said_once(path: Path) -> Iterator[None]:
    """Around building and saving a figure: characters matplotlib's font lacks (a sample
    key or variable name in CJK script: DejaVu Sans has no glyphs for them) are drawn as
    boxes and said once a process in one line, not as a warning per glyph with a source
    line. Only the display of that warning is taken over: every other warning is filtered
    and shown as without this (main thread only: `warnings` state is process-wide)."""
    import warnings

    shown, missing = warnings.showwarning, []

    def show(message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        if "missing from font" in str(message):
            missing.append(message)
        else:
            shown(message, category, filename, lineno, *rest)

    warnings.showwarning = show  # the filters untouched: a change resets once-per-place
    try:
        yield
    finally:
        warnings.showwarning = shown
    if missing and not _UNDRAWN_GLYPHS_SAID[0]:
        _UNDRAWN_GLYPHS_SAID[0] = True
        log.warning(
            "%s: some characters of its labels are not in matplotlib's font and are drawn "
            "as boxes (e.g. non-Latin sample keys or variable names)",
            as_final(path),
        )


def save_panel(
    path: str | Path,
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
    *,
    key: str | None = None,
    step: int | None = None,
    channel_names: Sequence[str] | None = None,
) -> Path:
    """The sample panel (`sample_figure`; the key defaults to the file's stem) as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with glyphs_said_once(path):
        fig = sample_figure(
            inputs_TCHW,
            truth_TCHW,
            prediction_TCHW,
            colormap,
            key=key or path.stem,
            step=step,
            channel_names=channel_names,
        )
        fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------- GIF
GIF_MIN_SIZE = 256
"""Smallest side of a GIF's frames in pixels (frames are enlarged, nearest neighbour)."""


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the small bitmap font only
        return ImageFont.load_default()


def _gif_strips(
    truth: np.ndarray | None,
    prediction: np.ndarray,
    colormap: str | None,
    channel_names: Sequence[str] | None = None,
) -> list[list[tuple[str, np.ndarray]]]:
    """For each channel group of `channel_groups` (the GIF's strips, top to bottom) its
    halves [(name, T×H×W×3 uint8)]: truth and prediction, or the prediction alone, both on
    the group's `_value_range` over all their frames, so they stay comparable; named with
    the channel's suffix ("truth c1", "truth t2m": `_channel_suffixes`)."""
    shown = [("prediction", prediction)]
    if truth is not None:
        shown.insert(0, ("truth", truth))
    strips = []
    for group, suffix in _channel_suffixes(prediction.shape[1], colormap, channel_names):
        value_range = _value_range(frames[:, group] for _, frames in shown)
        strips.append([(name + suffix, to_rgb8(frames[:, group], colormap, value_range))
                       for name, frames in shown])  # fmt: skip
    return strips


def _gif_labels(
    names: Sequence[str], leads: int, font: Any, room: float
) -> tuple[dict[str, list[list[str]]], int]:
    """(name → its label's lines at each lead time, the number of lines): "truth t2m  (lead
    +1)" on one line where every name's label fits in `room` pixels (the width of a GIF's
    half), else two lines, the name (cut, with "…", where it alone is wider) over "(lead
    +1)": long channel names ("prediction geopotential_500hPa") never run into the next
    half or off the picture."""

    def fits(text: str) -> bool:
        return font.getlength(text) <= room

    def cut(text: str) -> str:
        while len(text) > 1 and not fits(text):
            text = text[:-2] + "…"
        return text

    if all(fits(f"{name}  (lead +{leads})") for name in names):
        return {name: [[f"{name}  (lead +{t + 1})"] for t in range(leads)] for name in names}, 1
    return {name: [[cut(name), f"(lead +{t + 1})"] for t in range(leads)] for name in names}, 2


def gif_frames(
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray,
    colormap: str | None = None,
    *,
    key: str = "",
    min_size: int = GIF_MIN_SIZE,
    channel_names: Sequence[str] | None = None,
) -> list[Image.Image]:
    """The images of `save_gif`: truth (left) beside prediction (right), or the prediction
    alone, enlarged (nearest neighbour) to at least `min_size` pixels a side, under a
    caption with the key. Data of 2 or more channels (but 3-channel RGB) get one such
    strip per channel, stacked, each channel on its own colour range (`_gif_strips`).
    Each strip is labelled "truth (lead +t)" and "prediction (lead +t)" over its halves
    ("truth c1 (lead +t)" for channel 1 of several, "truth t2m (lead +t)" by
    `channel_names`; on two lines where a label is wider than its half: `_gif_labels`)."""
    from PIL import ImageDraw

    prediction = np.asarray(prediction_TCHW, np.float32)
    truth = None if truth_TCHW is None else np.asarray(truth_TCHW, np.float32)
    strips = _gif_strips(truth, prediction, colormap, channel_names)
    h, w = prediction.shape[-2:]
    zoom = max(1, math.ceil(min_size / min(h, w)))
    big_h, big_w, gap, line = h * zoom, w * zoom, 8, 22
    font = _font(16)
    names = [name for strip in strips for name, _ in strip]
    labels, lines = _gif_labels(names, len(prediction), font, big_w - 8)
    strip_h = lines * line + 6 + big_h  # a strip's label lines, then its frames
    halves = len(strips[0])
    width = halves * big_w + (halves - 1) * gap
    height = line + len(strips) * (strip_h + gap) - gap  # the caption line on top
    caption = key if len(key) * 9 <= width else key[: max(1, width // 9 - 1)] + "…"
    images = []
    for t in range(len(prediction)):
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 3), caption, fill="black", font=font)
        for s, strip in enumerate(strips):
            top = line + s * (strip_h + gap)
            for i, (name, frames) in enumerate(strip):
                x = i * (big_w + gap)
                frame = frames[t].repeat(zoom, axis=0).repeat(zoom, axis=1)
                canvas.paste(Image.fromarray(frame), (x, top + lines * line + 6))
                for k, text in enumerate(labels[name][t]):
                    draw.text((x + 4, top + 3 + k * line), text, fill="black", font=font)
        images.append(canvas)
    return images


def save_gif(
    path: str | Path,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray,
    fps: int = 4,
    colormap: str | None = None,
    *,
    key: str | None = None,
    min_size: int = GIF_MIN_SIZE,
    channel_names: Sequence[str] | None = None,
) -> Path:
    """An animated GIF, one frame per lead time (`gif_frames`; the key defaults to the
    file's stem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = gif_frames(
        truth_TCHW,
        prediction_TCHW,
        colormap,
        key=key or path.stem,
        min_size=min_size,
        channel_names=channel_names,
    )
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    return path


# ---------------------------------------------------------------------------- lead times
_AXIS_LABELS = {
    "mse": "MSE per pixel",
    "mse_raw": "MSE per pixel (unclamped)",
    "mse_frame": "MSE per frame (sum over pixels)",
    "mse_frame_raw": "MSE per frame (unclamped)",
    "mae": "MAE per pixel",
    "mae_raw": "MAE per pixel (unclamped)",
    "mae_frame": "MAE per frame (sum over pixels)",
    "mae_frame_raw": "MAE per frame (unclamped)",
    "rmse": "RMSE per pixel",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "ssim_openstl": "SSIM (OpenSTL's)",
}


def _axis_label(metric: str) -> str:
    """The y-axis label of a per-lead panel: `val/mse` → 'MSE per pixel'; scores without
    a known unit (thresholded ones such as `csi@0.5`) are labelled by their name."""
    name = metric.split("/", 1)[-1]
    return _AXIS_LABELS.get(name, name.upper() if len(name) <= 4 else name)


def _persistence_of(metric: str, per_lead: dict, persistence_mse: list) -> list | None:
    """Persistence's [(lead, value)] for `metric` where it follows exactly from the
    persistence MSE per pixel: the MSE (clamped or raw: the last input frame is in range),
    the per-frame MSE (a constant number of pixels times it) and the RMSE (its root)."""
    name = metric.split("/", 1)[-1]
    if name in ("mse", "mse_raw"):
        return persistence_mse
    if name == "rmse":
        return [(t, math.sqrt(v)) for t, v in persistence_mse]
    if name in ("mse_frame", "mse_frame_raw"):  # × the pixel count C·H·W, from a per-frame
        # sum and its own per-pixel mean (clamped or raw alike; `mse_frame_raw` / `mse`
        # mixed them: 4× too high for an unclamped model, a metrics review)
        prefix = metric.split("/", 1)[0]
        for frame_sum, pixel_mean in (("mse_frame", "mse"), ("mse_frame_raw", "mse_raw")):
            sums = dict(per_lead.get(f"{prefix}/{frame_sum}", []))
            means = dict(per_lead.get(f"{prefix}/{pixel_mean}", []))
            ratios = [v / means[t] for t, v in sums.items() if means.get(t)]
            if ratios:
                return [(t, v * ratios[0]) for t, v in persistence_mse]
    return None


def lead_time_series(
    results: dict[str, float],
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """(metric → [(lead, value)], model metric → persistence's [(lead, value)]): the
    persistence series for every metric that follows from `<prefix>/persistence_mse`, and
    persistence's own thresholded scores (`<prefix>/persistence_csi@20` for `csi@20`)."""
    per_lead: dict[str, list[tuple[int, float]]] = {}
    for key, (metric, lead) in lead_keys(results).items():
        value = results[key]
        if metric.count("/") > 1:  # per-variable series (`val/rmse/t850`): the table has them
            continue
        if isinstance(value, float) and math.isfinite(value):
            per_lead.setdefault(metric, []).append((lead, value))
    per_lead = {k: sorted(v) for k, v in per_lead.items()}
    persistence = {
        name.split("/")[0]: per_lead.pop(name)
        for name in list(per_lead)
        if name.endswith("/persistence_mse")
    }
    baseline = {}
    # persistence's own scores (`val/persistence_csi@20`) beside the model's (`val/csi@20`);
    # never a panel of their own (the model's may be undefined at every lead: no events)
    for name in [n for n in per_lead if "/persistence_" in n]:
        series, model_metric = per_lead.pop(name), name.replace("/persistence_", "/", 1)
        if model_metric in per_lead:
            baseline[model_metric] = series
    for metric in per_lead:
        if metric in baseline:
            continue
        prefix = metric.split("/")[0]
        if prefix in persistence:
            series = _persistence_of(metric, per_lead, persistence[prefix])
            if series:
                baseline[metric] = series
    return per_lead, baseline


def lead_time_figure(results: dict[str, float], *, title: str | None = None) -> Figure | None:
    """One panel per metric against lead time, each with its y-axis label, and a dashed
    persistence (last input frame held) line wherever it follows from the results; a
    figure title; None when the results hold no per-lead values."""
    per_lead, baseline = lead_time_series(results)
    if not per_lead:
        return None
    import matplotlib.ticker
    from matplotlib.figure import Figure

    # a per-frame sum (`mse_frame`, OpenSTL's) is the per-pixel mean × H·W: the same curve,
    # a panel that cost a tenth of the drawing time; the lead-time table keeps its values
    # thresholds in number order (csi@16 before csi@133)
    names = sorted((n for n in per_lead if _per_pixel_twin(n) not in per_lead), key=natural_key)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    width, height = round(3.6 * cols * DPI) / DPI, round((2.9 * rows + 0.6) * DPI) / DPI
    fig = Figure(figsize=(width, height), dpi=DPI)
    # fixed margins in inches (a constrained layout measures every tick label: it took
    # longer than the drawing): y label and tick labels on the left of each panel, its
    # title above, the x label below, the figure's title on top
    axes = fig.subplots(
        rows,
        cols,
        squeeze=False,
        gridspec_kw={
            "left": 0.85 / width,
            "right": 1 - 0.15 / width,
            "bottom": 0.5 / height,
            "top": 1 - 0.85 / height,
            "wspace": 0.95 / (3.6 - 0.95),
            "hspace": 0.8 / (2.9 - 0.8),
        },
    )
    for ax, name in zip(axes.flat, names):
        points = per_lead[name]
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o", label="model")
        if name in baseline:
            reference = baseline[name]
            ax.plot([t for t, _ in reference], [v for _, v in reference], "--", marker=".",
                    color="gray", label="persistence")  # fmt: skip
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("lead time (frames)", fontsize=9)
        ax.set_ylabel(_axis_label(name), fontsize=9)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    prefix = names[0].split("/")[0]
    # at a fixed height above the panels' titles (a share of a tall figure's height fell on them)
    fig.suptitle(title or f"{prefix} metrics by lead time (dashed: persistence)", fontsize=13,
                 y=1 - 0.2 / height, va="top")  # fmt: skip
    return fig


def _per_pixel_twin(name: str) -> str | None:
    """`val/mse` for `val/mse_frame`, `val/mse_raw` for `val/mse_frame_raw`; else None."""
    if "_frame" not in name.rsplit("/", 1)[-1]:
        return None
    return name.replace("_frame", "", 1) if name.count("_frame") == 1 else None


def plot_lead_times(
    results: dict[str, float], path: str | Path, *, title: str | None = None
) -> Path | None:
    """`lead_time_figure` as a PNG; None (nothing written) without per-lead values."""
    path = Path(path)
    with glyphs_said_once(path):
        fig = lead_time_figure(results, title=title)
        if fig is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return path
