"""Small in-memory data and a tiny module for trainer tests (tensors B×T×C×H×W)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stpdist import EnhancedModule

PYTHON_C = str(Path(__file__).parent / "python_c.py")
"""`[sys.executable, PYTHON_C, CODE, *args]` runs CODE as `python -c CODE *args` would, as a
script under tests/: the suite's fork server (tests/forkserver.py) starts it warm, never
`python -c` itself (a fresh interpreter spends seconds of a core importing torch). For a
program whose process is not itself under test (what a fresh interpreter has imported, its
pid, its threads)."""

# Inductor generates and builds C++ per kernel on a CPU: seconds a kernel, minutes for a
# suite's worth on two busy cores with an empty cache (as on CI). Tests whose subject is the
# generated kernel run under inductor where the run opts in (STPDIST_TEST_INDUCTOR=1); the
# default suite compiles the same graphs with aot_eager.
INDUCTOR_OPT_IN = pytest.mark.skipif(
    not os.environ.get("STPDIST_TEST_INDUCTOR"),
    reason="inductor on CPU takes minutes here; set STPDIST_TEST_INDUCTOR=1",
)


class TinySequences(Dataset):
    """`num` fixed random sequences: 3 input frames → 2 target frames of 1×4×4."""

    def __init__(self, num: int = 40, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)
        frames = torch.rand(num, 5, 1, 4, 4, generator=g)
        self.inputs, self.targets = frames[:, :3], frames[:, 3:]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):
        return self.inputs[i], self.targets[i]


class TinyModule(EnhancedModule):
    """A linear map from the input frames to the target frames (+ optional dropout)."""

    def __init__(self, dropout: float = 0.0, lr: float = 0.05, scheduler: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(48, 64), nn.Tanh(), nn.Dropout(dropout), nn.Linear(64, 32)
        )
        self.lr = lr
        self.use_scheduler = scheduler

    def forward(self, inputs):
        return self.net(inputs).view(-1, 2, 1, 4, 4)

    def configure_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def configure_lr_scheduler(self, optimizer):
        if not self.use_scheduler:
            return None
        return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 3, 0.5), "interval": "step"}

    def training_step(self, inputs, targets):
        return nn.functional.mse_loss(self(inputs), targets)

    def validation_step(self, inputs, targets):
        pred = self(inputs)
        return {
            "loss": nn.functional.mse_loss(pred, targets),
            "mae": (pred - targets).abs().mean(),
            "predictions": pred,
        }

    def predict_step(self, inputs, targets):
        return self(inputs)


def loader(num: int = 40, batch_size: int = 4, shuffle: bool = True) -> DataLoader:
    return DataLoader(TinySequences(num), batch_size=batch_size, shuffle=shuffle)


def forecaster(
    name: str,
    frame_shape: tuple[int, int, int],
    num_input_frames: int,
    num_output_frames: int,
    *,
    backbone: dict | None = None,
    patch_size: int = 1,
    lr: float = 1e-3,
    sampling: str = "none",
    **sampling_fields,
):
    """A Forecaster from a `ModelConfig` built of these few fields."""
    from stpdist.config import ModelConfig, OptimizerConfig, SamplingConfig
    from stpdist.task import Forecaster

    config = ModelConfig(
        name=name,
        backbone=dict(backbone or {}),
        patch_size=patch_size,
        optimizer=OptimizerConfig(lr=lr),
        sampling=SamplingConfig(mode=sampling, **sampling_fields),
    )
    return Forecaster(config, frame_shape, num_input_frames, num_output_frames)


class HostReads:
    """Counts host reads of tensor values (`item`, `tolist`, `numpy`, `cpu`, `bool`,
    `float`, `int`) made from stpdist's or accelerate's own code: on a GPU each one makes
    the host wait for the device. Reads are booked to the training step running when they
    happen (`mark(step)` starts a step)."""

    METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
    PACKAGES = ("stpdist", "accelerate")

    def __init__(self, monkeypatch) -> None:
        import sys

        self.per_step: dict[int, list[str]] = {}
        self.step: int | None = None
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                caller = sys._getframe(1)
                module = caller.f_globals.get("__name__", "")
                if self.step is not None and module.split(".")[0] in self.PACKAGES:
                    where = f"{module}:{caller.f_lineno} {_name}"
                    self.per_step.setdefault(self.step, []).append(where)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def mark(self, step: int) -> None:
        self.step = step
        self.per_step.setdefault(step, [])


def model_file_at(commit: str, name: str) -> types.ModuleType:
    """stpdist/models/<name>.py as it was at `commit`, imported beside today's models (to
    check that a change kept a model's numbers); skips where that history is missing."""
    root = Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{commit}:stpdist/models/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        import pytest  # (here: the multi-rank scripts import this file without pytest)

        if os.environ.get("CI"):  # CI clones with history: a skip there would hide a check
            pytest.fail(f"no git history with commit {commit} here (a shallow clone?)")
        pytest.skip(f"no git history with commit {commit} here")
    module = types.ModuleType(f"stpdist.models._at_{commit}_{name}")
    module.__package__ = "stpdist.models"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:{name}.py", "exec"), module.__dict__)
    return module


def debug_model_folder(root: Path) -> Path:
    """A model folder of configs/debug.yaml (4 → 4 frames of 1×32×32, values 0–255) with
    its initial weights (seed 0), under `root`: `model/` and the `data/train` split whose
    index.json it keeps. No training: what forecast and export checks need is the model."""
    import numpy as np
    from safetensors.torch import save_file

    from stpdist.build import build_module
    from stpdist.config import load_config, to_yaml
    from stpdist.data.format import SplitWriter, read_index

    rng = np.random.default_rng(0)
    with SplitWriter(root / "data" / "train", "train", value_scale=255.0) as writer:
        for i in range(2):
            writer.write(f"s{i}", rng.integers(0, 256, (8, 1, 32, 32), dtype=np.uint8))
    cfg = load_config(Path(__file__).parent.parent / "configs" / "debug.yaml")
    torch.manual_seed(0)
    module = build_module(cfg, index=read_index(root / "data" / "train"))
    folder = root / "model"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(to_yaml(cfg))
    (folder / "index.json").write_text((root / "data" / "train" / "index.json").read_text())
    return folder


def resum_tar_header(data: bytearray, offset: int = 0) -> None:
    """Rewrite the checksum of the tar header at `offset` after a test changed its bytes
    (readers refuse a header whose sum does not match)."""
    header = data[offset : offset + 512]
    header[148:156] = b" " * 8
    data[offset + 148 : offset + 156] = f"{sum(header):06o}\0 ".encode()


class Said(logging.Handler):
    """The warnings of the `stpdist` logger (which may not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def said_warnings():
    """The `stpdist` logger's warnings while the block runs, as a list of lines."""
    handler = Said()
    logging.getLogger("stpdist").addHandler(handler)
    try:
        yield handler.lines
    finally:
        logging.getLogger("stpdist").removeHandler(handler)


FORKED_MARK: list[str] = []
"""Set by a test in its own process: a forked data worker inherits it, a spawned one
imports this module afresh, without it."""


class StartMethodProbe(TinySequences):
    """TinySequences whose workers write into `record` how they were started."""

    def __init__(self, num: int, record: str) -> None:
        super().__init__(num)
        self.record = record

    def __getitem__(self, i: int):
        import os

        with open(self.record, "a") as handle:
            handle.write(f"{os.getpid()} {'forked' if FORKED_MARK else 'spawned'}\n")
        return super().__getitem__(i)
