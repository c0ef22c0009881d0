"""The one message channel: everything stpdist tells a person goes through the `stpdist`
logger. `setup(is_main)` gives it a handler that writes through tqdm (so progress bars stay
whole) and lets only the main process speak below warnings. Also the console formats of
results: one-line summaries and the metric × lead-time table.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("stpdist")
LEAD = re.compile(r"^(.+)/t(\d{2,})$")
"""What a per-lead-time key looks like: `<split>/<metric>[/<variable>]/t<lead>`."""


def lead_keys(keys: Any) -> dict[str, tuple[str, int]]:
    """key → (metric key, lead) for the per-lead-time keys among `keys`. Leads run 1..N
    without a gap for each metric, so a variable that merely looks like a lead (ERA5's
    `t850`, in `val/rmse/t850`) is not taken for lead 850 of `val/rmse`."""
    found: dict[str, dict[int, str]] = {}
    for key in keys:
        match = LEAD.match(key)
        if match:
            found.setdefault(match.group(1), {})[int(match.group(2))] = key
    leads = {}
    for metric, by_lead in found.items():
        lead = 1
        while lead in by_lead:
            leads[by_lead[lead]] = (metric, lead)
            lead += 1
    return leads


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:  # warnings on stderr, where scripts look for them; results on stdout
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
        except Exception:  # logging must never raise into training
            self.handleError(record)


def setup(is_main: bool) -> None:
    """Messages at INFO from the main process, warnings from every process."""
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False  # printed once, here, whatever the root logger does
    log.setLevel(logging.INFO if is_main else logging.WARNING)


def say(message: str) -> None:
    """A line for the person running stpdist (main process only, after `setup`)."""
    log.info(message)


def plain(value: Any) -> Any:
    """A JSON-friendly scalar (tensors to numbers, non-finite floats to strings)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def format_scalars(values: dict[str, Any]) -> str:
    """`a 0.0123, b 4` — compact, for one-line summaries (per-lead-time values left out)."""
    parts = []
    leads = lead_keys(values)
    for key, value in values.items():
        if key in leads:
            continue
        value = plain(value)
        parts.append(f"{key} {value:.5g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def lead_time_table(results: dict[str, Any]) -> str:
    """Rows = metrics, columns = all and each lead time."""
    per_lead: dict[str, dict[int, float]] = {}
    lead_of = lead_keys(results)
    for key, (metric, lead) in lead_of.items():
        per_lead.setdefault(metric, {})[lead] = results[key]
    leads = sorted({t for values in per_lead.values() for t in values})
    lines = [f"{'metric':<22}{'all':>11}" + "".join(f"{'t' + str(t):>10}" for t in leads)]
    for key, value in results.items():
        if key in lead_of:
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
