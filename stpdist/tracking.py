"""Where results go, main process only: `<output_dir>/metrics.jsonl` (always), sample
pictures in `<output_dir>/samples/`, and the trackers named in `logging.trackers` (wandb,
tensorboard) through accelerate's tracker API.

No other rank builds media or talks to a tracker. Without a tracker configured, training
works the same and the local files are still written.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, LoggingConfig, to_dict
from .console import plain

_PACKAGES = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}
"""tracker → (module to find, stpdist extra that installs it)."""


class MetricsLog:
    """Appends one JSON object per `log` call to `metrics.jsonl`."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"

    def log(self, values: dict[str, Any], *, step: int, epoch: int) -> None:
        record = {"step": step, "epoch": epoch, "time": round(time.time(), 3)}
        record.update({k: plain(v) for k, v in values.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class Tracker:
    """metrics.jsonl + sample pictures + the configured trackers, from `logging`."""

    def __init__(
        self, output_dir: str | Path, config: LoggingConfig, *, run_config: Config | None = None
    ) -> None:
        self.output_dir = Path(output_dir)
        self.config = config
        self.run_config = run_config
        self.is_main = False  # set by the Trainer once the Accelerator knows
        self.metrics = MetricsLog(output_dir)
        self.accelerator: Any = None

    @property
    def num_samples(self) -> int:
        return self.config.num_samples

    @property
    def log_with(self) -> list[str]:
        """The accelerate trackers to create; a missing package is a clear error."""
        for name in self.config.trackers:
            module, extra = _PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ImportError(
                    f"logging.trackers holds {name} but it is not installed "
                    f"(pip install 'stpdist[{extra}]')"
                )
        return list(self.config.trackers)

    def start(self, accelerator: Any) -> None:
        """Initialise the trackers (accelerate does it on the main process only)."""
        self.accelerator = accelerator
        if not self.config.trackers or not self.is_main:
            return
        w = self.config.wandb
        # as saved: values read from the environment stay `${oc.env:NAME}` (secrets)
        config = to_dict(self.run_config) if self.run_config is not None else {}
        accelerator.init_trackers(
            w.project,
            # tensorboard's hparams take flat scalars only; wandb shows the nesting
            config=_flat(config) if "tensorboard" in self.config.trackers else config,
            init_kwargs={
                "wandb": {
                    "entity": w.entity,
                    "name": w.name,
                    "tags": list(w.tags),
                    "mode": w.mode,
                    "dir": str(self.output_dir),
                }
            },
        )

    @property
    def _tracking(self) -> bool:
        return self.is_main and self.accelerator is not None and bool(self.accelerator.trackers)

    def log(self, values: dict[str, Any], *, step: int, epoch: int) -> None:
        if not self.is_main:
            return
        self.metrics.log(values, step=step, epoch=epoch)
        if not self._tracking:
            return
        every = self.config.trackers_every_n_steps
        if every and step % every and any(k.startswith("train/") for k in values):
            return
        scalars = {k: plain(v) for k, v in values.items() if not isinstance(plain(v), str)}
        self.accelerator.log(scalars, step=step)

    def log_samples(
        self,
        samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
        results: dict[str, Any],
        *,
        step: int,
    ) -> Path | None:
        """Panels (PNG), GIFs and the per-lead-time plot of a validation, in
        `samples/step-N/` and on every tracker (images; GIF videos on wandb)."""
        if not self.is_main or not samples:
            return None
        from .visualize import plot_lead_times, save_samples

        folder = self.output_dir / "samples" / f"step-{step:08d}"
        # file names (and tracker tags) from sanitised keys: a key never leaves `folder`
        written = save_samples(folder, samples, self.config.colormap, step=step)
        panels = [(stem, png) for stem, png, _ in written]
        gifs = [(stem, gif) for stem, _, gif in written if gif is not None]
        plot = plot_lead_times(results, folder / "lead_time.png")
        if self._tracking:
            self._send_pictures(panels, gifs, plot, step)
        return folder

    def _send_pictures(
        self,
        panels: list[tuple[str, Path]],
        gifs: list[tuple[str, Path]],
        plot: Path | None,
        step: int,
    ) -> None:
        from PIL import Image

        images = {f"samples/{key}": [np.asarray(Image.open(p).convert("RGB"))] for key, p in panels}
        if plot is not None:
            images["val/lead_time"] = [np.asarray(Image.open(plot).convert("RGB"))]
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                stacked = {k: np.stack(v) for k, v in images.items()}
                tracker.log_images(stacked, step=step, dataformats="NHWC")
            else:
                tracker.log_images(images, step=step)
        if "wandb" in self.config.trackers:  # animations: wandb's own media type
            import wandb

            videos = [wandb.Video(str(g), caption=k, format="gif") for k, g in gifs]
            self.accelerator.get_tracker("wandb", unwrap=True).log(
                {"samples/gifs": videos}, step=step
            )


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → `a.b.c` keys; lists and None as strings (tensorboard's hparams)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            keep = isinstance(value, int | float | str | bool)
            flat[f"{prefix}{key}"] = value if keep else str(value)
    return flat
