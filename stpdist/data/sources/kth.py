"""KTH action videos `personNN_<action>_dM_uncomp.avi` (160×120 grayscale, 25 fps).

Decoded with PyAV, converted to grayscale, resized (default 128×128), cut into windows of
`num_frames` with `stride`. Split by person: `test_persons` (default 17–25) are test, the
others train (the usual split: persons 1–16 train).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import InputError, MissingInput, require_extra
from ..format import require_file
from .series import check_window

NAME = re.compile(r"^person(\d+)_([a-z]+)_d(\d+)_uncomp$")


def decode_gray(path: str | Path) -> np.ndarray:
    """All frames of a video as T×H×W uint8 grayscale."""
    av = require_extra("av", "formats", "decoding KTH videos")

    try:
        with av.open(str(path)) as container:
            declared = container.streams.video[0].frames  # 0: the container does not say
            frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    except Exception as exc:
        why = getattr(exc, "strerror", None) or str(exc)  # not "[Errno 1094995529] …"
        raise InputError(f"{path}: cannot decode video ({why})") from exc
    if not frames:
        raise InputError(f"{path}: no video frames")
    if declared and len(frames) < declared:  # cut short: its last windows were left out
        raise InputError(
            f"{path}: decoded {len(frames)} of the {declared} frames its header declares: the "
            "file is cut short or damaged; replace it (or move it out to convert the others)"
        )
    return np.stack(frames)


@dataclass
class KTHVideos:
    root: str
    num_frames: int = 20
    stride: int = 20
    image_size: int = 128
    test_persons: list[int] = field(default_factory=lambda: list(range(17, 26)))
    name: str = "kth-avi"
    value_scale: float = 255.0
    grid: float | None = None

    def __post_init__(self) -> None:  # before any video is read
        check_window(self.num_frames, self.stride)
        if self.image_size < 1:
            raise InputError(f"--size {self.image_size}: expected a frame size of at least 1")

    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        if not root.is_dir():
            raise MissingInput(f"{root}: no such folder")
        out: dict[str, list[Any]] = {"train": [], "test": []}
        videos = (  # not hidden ones (macOS's `._person01_….avi` copies; a formats review)
            p
            for p in root.rglob("*")
            if p.suffix.lower() == ".avi"
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and not p.is_dir()
        )
        for path in sorted(videos):  # any case: person01_walking_d1_uncomp.AVI too
            match = NAME.match(path.stem)
            if match is None:
                raise InputError(f"{path}: name is not personNN_<action>_dM_uncomp.avi")
            require_file(path)  # a FIFO would block the decoder
            split = "test" if int(match.group(1)) in self.test_persons else "train"
            out[split].append(str(path))
        return out

    def load(self, item: str) -> list[tuple[str, np.ndarray, dict]]:
        path = Path(item)
        video = decode_gray(path)
        size = (self.image_size, self.image_size)
        resized = np.stack(
            [np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in video]
        )
        if len(resized) < self.num_frames:  # no window: it used to vanish without a word
            raise InputError(
                f"{path}: {len(resized)} frames, fewer than --frames {self.num_frames} (one "
                "window); lower --frames, or move the video out (a damaged file?)"
            )
        person, action, scenario = NAME.match(path.stem).groups()
        out = []
        for start in range(0, len(resized) - self.num_frames + 1, self.stride):
            frames = resized[start : start + self.num_frames, None]
            meta = {
                "source": path.name,
                "person": int(person),
                "action": action,
                "scenario": int(scenario),
                "start_frame": start,
            }
            out.append((f"{path.stem}_{start:05d}", np.ascontiguousarray(frames), meta))
        return out

    def args(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "num_frames": self.num_frames,
            "stride": self.stride,
            "image_size": self.image_size,
            "test_persons": self.test_persons,
        }
