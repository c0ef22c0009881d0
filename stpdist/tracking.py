"""Where results go, main process only: `<output_dir>/metrics.jsonl`, sample pictures in
`<output_dir>/samples/`, and wandb through accelerate's trackers when enabled.

No other rank imports wandb or builds media. Without wandb installed, or with its mode
`disabled`, training works the same and the local files are still written.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

LEAD = re.compile(r"^(val/[^/]+)/t(\d+)$")


class MetricsLog:
    """Appends one JSON object per `log` call to `metrics.jsonl`; a no-op off the main rank."""

    def __init__(self, output_dir: str | Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"

    def log(self, values: dict[str, Any], *, step: int, epoch: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch, "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in values.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def format_scalars(values: dict[str, Any]) -> str:
    """`a 0.0123, b 4` — compact, for one-line summaries (per-lead-time values left out)."""
    parts = []
    for key, value in values.items():
        if LEAD.match(key):
            continue
        value = _plain(value)
        parts.append(f"{key} {value:.5g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def lead_time_table(results: dict[str, float]) -> str:
    """Rows = metrics, columns = all and each lead time."""
    per_lead: dict[str, dict[int, float]] = {}
    for key, value in results.items():
        match = LEAD.match(key)
        if match:
            per_lead.setdefault(match.group(1), {})[int(match.group(2))] = value
    leads = sorted({t for values in per_lead.values() for t in values})
    lines = [f"{'metric':<22}{'all':>11}" + "".join(f"{'t' + str(t):>10}" for t in leads)]
    for key, value in results.items():
        if LEAD.match(key):
            continue
        row = f"{key:<22}{_fmt(value):>11}"
        row += "".join(f"{_fmt(per_lead.get(key, {}).get(t)):>10}" for t in leads)
        lines.append(row)
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_lead_times(results: dict[str, float], path: str | Path) -> Path | None:
    """A PNG with one panel per metric against lead time; None when there is none."""
    per_lead: dict[str, list[tuple[int, float]]] = {}
    for key, value in results.items():
        match = LEAD.match(key)
        if match and isinstance(value, float) and math.isfinite(value):
            per_lead.setdefault(match.group(1), []).append((int(match.group(2)), value))
    if not per_lead:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = sorted(per_lead)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = sorted(per_lead[name])
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("lead time (frames)", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Tracker:
    """metrics.jsonl + sample pictures (+ wandb when `wandb_mode` is not disabled)."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        is_main: bool,
        num_samples: int = 4,
        colormap: str | None = None,
        wandb: Any = None,
        config: Any = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.is_main = is_main
        self.num_samples = num_samples
        self.colormap = colormap
        self.metrics = MetricsLog(output_dir, is_main)
        self.wandb_config = wandb if wandb is not None and wandb.mode != "disabled" else None
        self.config = config
        self.accelerator: Any = None

    @property
    def log_with(self) -> str | None:
        """The accelerate tracker to create, if any."""
        if self.wandb_config is None:
            return None
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ImportError(
                "logging.wandb.mode is not 'disabled' but wandb is not installed "
                "(pip install 'stpdist[wandb]')"
            )
        return "wandb"

    def start(self, accelerator: Any) -> None:
        """Initialise the trackers (main process only: accelerate guards it)."""
        self.accelerator = accelerator
        if self.wandb_config is None or not self.is_main:
            return
        w = self.wandb_config
        config = asdict(self.config) if self.config is not None else {}
        accelerator.init_trackers(
            w.project,
            config=config,
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

    def log(self, values: dict[str, Any], *, step: int, epoch: int) -> None:
        self.metrics.log(values, step=step, epoch=epoch)
        if self._wandb_on:
            every = self.wandb_config.log_every_n_steps
            if every and step % every and any(k.startswith("train/") for k in values):
                return
            self.accelerator.log({k: _plain(v) for k, v in values.items()}, step=step)

    @property
    def _wandb_on(self) -> bool:
        return self.is_main and self.wandb_config is not None and self.accelerator is not None

    def log_samples(
        self,
        samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
        results: dict[str, float],
        *,
        step: int,
    ) -> Path | None:
        """Panels (PNG), GIFs and the per-lead-time plot of a validation, main process only."""
        if not self.is_main or not samples:
            return None
        from .visualize import save_gif, save_panel

        folder = self.output_dir / "samples" / f"step-{step:08d}"
        images, videos = [], []
        for key, inputs, truth, pred in samples:
            png = save_panel(folder / f"{key}.png", inputs, truth, pred, self.colormap)
            gif = save_gif(folder / f"{key}.gif", truth, pred, colormap=self.colormap)
            images.append((key, png))
            videos.append((key, gif))
        plot = plot_lead_times(results, folder / "lead_time.png")
        if self._wandb_on:
            import wandb

            payload = {
                "samples/panels": [wandb.Image(str(p), caption=k) for k, p in images],
                "samples/gifs": [wandb.Video(str(g), caption=k, format="gif") for k, g in videos],
            }
            if plot is not None:
                payload["val/lead_time"] = wandb.Image(str(plot))
            self.accelerator.get_tracker("wandb", unwrap=True).log(payload, step=step)
        return folder
