"""Using a trained model: load a model folder, forecast from inputs alone, export.

A model folder is any checkpoint folder (`runs/x/checkpoints/step-N/`) or the folder
`stpdist export` writes: `model.safetensors`, the resolved `config.yaml` and the data's
`index.json` (frame shape, value scale, per-channel statistics). `load("runs/x")` picks the
best (or last) checkpoint of a run folder.

Legend: N samples, T time, C channels, H×W frame size.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .checkpoint import MODEL_FILE, CheckpointManager, load_weights
from .config import Config, load_config
from .data.format import INDEX_FILE, SplitIndex, read_index
from .module import EnhancedModule

EXPORT_FORMATS = ("torchscript", "exported-program", "onnx")


def model_folder(path: str | Path, ckpt: str = "best") -> Path:
    """The checkpoint folder `path` names: itself when it holds `model.safetensors`, else the
    `ckpt` ("best", "last" or a step folder name) checkpoint of the run folder `path`."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    root = path / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"{path}: neither a model folder ({MODEL_FILE}) nor a run folder")
    if ckpt not in ("best", "last"):
        return model_folder(root / ckpt)
    manager = CheckpointManager(root)
    found = (manager.best() if ckpt == "best" else None) or manager.latest()
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint in {root}")
    return found


def _config_and_index(folder: Path) -> tuple[Config, SplitIndex | None]:
    config = next((p for p in (folder / "config.yaml", folder.parent.parent / "config.yaml")
                   if p.is_file()), None)  # fmt: skip
    if config is None:
        raise FileNotFoundError(f"{folder}: no config.yaml beside the weights or in the run")
    index = read_index(folder) if (folder / INDEX_FILE).is_file() else None
    return load_config(config), index


def load(
    path: str | Path,
    ckpt: str = "best",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> EnhancedModule:
    """A ready module in eval mode from a model folder or a run folder (its `ckpt`
    checkpoint: "best", "last" or a folder name), on `device` (in `dtype` if given).
    The Forecaster's `forecast(frames)` then takes and returns physical units."""
    from .build import build_module, dataset_index

    folder = model_folder(path, ckpt)
    cfg, index = _config_and_index(folder)
    if index is None:  # a checkpoint written before checkpoints kept the index
        index = dataset_index(cfg)
    # forecasting and export never score: the LPIPS weights of the training machine
    # need not exist here
    cfg.model.evaluation.lpips_weights = None
    module = build_module(cfg, index=index)
    load_weights(folder, module)
    module.eval().to(device)
    if dtype is not None:
        module.to(dtype)
    module.model_folder = folder
    return module


# ---------------------------------------------------------------------------- inputs alone
class InputFrames(Dataset):
    """Input-only samples for `forecast`, in the model's scaled units: an .npy/.npz array
    (T×C×H×W or N×T×C×H×W), a folder of such files, or a folder of PNG frames (one
    sequence, in name order). When a sequence holds more than T_in frames the last T_in
    are used: a forecast continues from the newest frames."""

    def __init__(self, source: str | Path, module: Any) -> None:
        self.source = Path(source)
        self.num_input_frames = module.num_input_frames
        self.from_physical = module.from_physical
        self.items: list[tuple[str, np.ndarray]] = []  # (key, T×C×H×W in physical units)
        if self.source.is_dir() and any(self.source.glob("*.png")):
            self._add_pngs(module)
        elif self.source.is_dir():
            files = sorted(p for p in self.source.iterdir() if p.suffix in (".npy", ".npz"))
            if not files:
                raise FileNotFoundError(f"{self.source}: no .npy/.npz files or PNG frames")
            for file in files:
                self._add_array(file)
        elif self.source.suffix in (".npy", ".npz"):
            self._add_array(self.source)
        else:
            raise ValueError(
                f"{self.source}: forecast inputs are a shard split folder, an .npy/.npz "
                "array (T×C×H×W or N×T×C×H×W), a folder of them, or a folder of PNG frames"
            )

    def _add_array(self, file: Path) -> None:
        from .data.sources.common import load_array

        array = load_array(file)
        if array.ndim == 4:
            self._add(_key(file.stem), array, file)
        elif array.ndim == 5:
            for i, sequence in enumerate(array):
                self._add(f"{_key(file.stem)}_{i:06d}", sequence, file)
        else:
            raise ValueError(f"{file}: expected T×C×H×W or N×T×C×H×W, got {array.shape}")

    def _add_pngs(self, module: Any) -> None:
        from PIL import Image

        mode = {1: "L", 3: "RGB"}.get(module.frame_shape[0])
        if mode is None:
            raise ValueError(
                f"PNG frames need a 1- or 3-channel model; this one has {module.frame_shape[0]}"
            )
        frames = []
        for png in sorted(self.source.glob("*.png")):
            image = np.asarray(Image.open(png).convert(mode))
            frames.append(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
        self._add(_key(self.source.name), np.stack(frames), self.source)

    def _add(self, key: str, frames: np.ndarray, where: Path) -> None:
        if frames.shape[0] < self.num_input_frames:
            raise ValueError(
                f"{where}: {frames.shape[0]} frames, fewer than the model's "
                f"num_input_frames {self.num_input_frames}"
            )
        self.items.append((key, frames[-self.num_input_frames :]))

    def __len__(self) -> int:
        return len(self.items)

    def key(self, index: int) -> str:
        return self.items[index][0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames = torch.as_tensor(np.asarray(self.items[index][1], dtype=np.float32))
        return {"inputs": self.from_physical(frames)}


def _key(text: str) -> str:
    """A sample key from a file name (keys hold no dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "sample"


# ---------------------------------------------------------------------------- export
class _Forward(torch.nn.Module):
    """inputs B×T_in×C×H×W (scaled units) → predictions B×T_out×C×H×W: what is exported."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module.predict_frames(inputs)


def export(
    path: str | Path, out: str | Path, *, ckpt: str = "best", formats: tuple[str, ...] = ()
) -> dict[str, float]:
    """Write a model folder (weights, config.yaml, index.json) to `out`, plus each of
    `formats` (torchscript → model.ts, exported-program → model.pt2, onnx → model.onnx),
    each checked against the eager model on a test batch. Returns the largest absolute
    difference per format."""
    folder = model_folder(path, ckpt)
    module = load(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, "config.yaml", INDEX_FILE):
        source = folder / name if (folder / name).is_file() else folder.parent.parent / name
        if source.is_file():
            shutil.copy2(source, out / name)
    wrapped = _Forward(module).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(2, module.num_input_frames, *module.frame_shape, generator=generator)
    with torch.no_grad():
        expected = wrapped(sample)
    differences = {}
    for fmt in formats:
        run = _EXPORTERS[fmt](wrapped, sample, out)
        with torch.no_grad():
            got = run(sample)
        differences[fmt] = float((torch.as_tensor(got) - expected).abs().max())
    return differences


def _torchscript(wrapped: torch.nn.Module, sample: torch.Tensor, out: Path) -> Any:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # the frame loops unroll for the model's T_in/T_out: exactly what is wanted here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
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
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "--format onnx needs onnx and onnxruntime (pip install 'stpdist[onnx]')"
        ) from exc
    torch.onnx.export(wrapped, (sample,), str(out / "model.onnx"), input_names=["inputs"],
                      output_names=["predictions"], dynamo=False)  # fmt: skip
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    return lambda x: session.run(None, {"inputs": x.numpy()})[0]


_EXPORTERS = {
    "torchscript": _torchscript,
    "exported-program": _exported_program,
    "onnx": _onnx,
}
