"""Where scalars go: `<output_dir>/metrics.jsonl` (always) and the console, main process only."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per `log` call to `metrics.jsonl`; a no-op off the main rank."""

    def __init__(self, output_dir: str | Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, values: dict[str, Any], *, step: int, epoch: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch, "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def format_scalars(values: dict[str, Any]) -> str:
    """`a 0.0123, b 4` — compact, for one-line summaries."""
    parts = []
    for key, value in values.items():
        value = _plain(value)
        parts.append(f"{key} {value:.5g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)
