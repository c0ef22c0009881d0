"""Early stopping: end training when a validation metric stops improving
(`trainer.early_stopping`).

Every rank decides by itself from the validation results, which are identical on every
rank (`EvalSums.reduce` all-reduces the sums, and every rank derives the metrics from the
same reduced numbers), so the ranks agree without another collective.

The best value, its step and the count of validations without an improvement are saved
in every checkpoint as `early_stopping.json` (listed in its manifest). A checkpoint is
written before the validation of its step; when that validation's results are recorded
in it (`validation.json`), a resume counts them again from there (`resume`), so a
resumed run stops at the same step as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, TrainState
from .config import EarlyStoppingConfig
from .console import json_number, strict_json, warn_main
from .errors import InputError

STATE_FILE = "early_stopping.json"
log = logging.getLogger("stpdist")


class EarlyStopping:
    """Counts validations without an improvement of `config.monitor`; `should_stop` once
    there were `config.patience` of them in a row."""

    def __init__(self, config: EarlyStoppingConfig) -> None:
        self.config = config
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0
        self.last_step: int | None = None
        """The step of the last validation counted."""

    @property
    def should_stop(self) -> bool:
        return self.bad_validations >= self.config.patience

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        delta = self.config.min_delta
        if self.config.mode == "min":
            return value < self.best - delta
        return value > self.best + delta

    def check(self, step: int, results: dict[str, Any]) -> bool:
        """Count the validation of step `step`; returns `should_stop`. The monitored key
        must be among `results` (an `InputError` naming it and the available ones)."""
        monitor = self.config.monitor
        if monitor not in results:
            available = ", ".join(k for k in results if k.count("/") == 1)
            raise InputError(
                f"trainer.early_stopping.monitor {monitor!r} is not among the validation "
                f"results ({available}); set it to one of them (this step's checkpoint is saved)"
            )
        if self.last_step == step:  # already counted (a validation run twice)
            return self.should_stop
        value = float(results[monitor])
        if self._improves(value):
            self.best, self.best_step, self.bad_validations = value, step, 0
        else:
            self.bad_validations += 1
        self.last_step = step
        return self.should_stop

    def reason(self, step: int) -> str:
        """The one line that says why training stopped."""
        cfg = self.config
        best = f"{self.best:.6g} at step {self.best_step}" if self.best is not None else "none"
        return (
            f"early stopping after step {step}: {cfg.monitor} did not improve "
            f"(mode {cfg.mode}, min_delta {cfg.min_delta:g}) in {self.bad_validations} "
            f"validation(s) in a row (patience {cfg.patience}); best {best}"
        )

    # ------------------------------------------------------------------ saved state
    def to_json(self) -> str:
        return strict_json(
            {
                "monitor": self.config.monitor,
                "mode": self.config.mode,
                "best": self.best,
                "best_step": self.best_step,
                "bad_validations": self.bad_validations,
                "last_step": self.last_step,
            },
            indent=2,
        )

    def restore(self, folder: Path, state: TrainState, *, count_recorded: bool = True) -> None:
        """The counter saved in checkpoint `folder`, then the validation of its own step
        when its results are recorded there but were not yet counted (`count_recorded`:
        it was on the validation schedule; a run's last validation off it never counts)."""
        file = Path(folder) / STATE_FILE
        if file.is_file():
            self._load(file)
        if count_recorded and state.metrics_step == state.global_step and state.metrics:
            self.check(state.global_step, state.metrics)

    def _load(self, file: Path) -> None:
        try:
            raw = json.loads(file.read_text())
            counts = [raw["bad_validations"], raw["last_step"], raw["best_step"]]
            if not all(v is None or (isinstance(v, int) and v >= 0) for v in counts):
                raise ValueError("counts must be integers >= 0 or null")
            best = raw["best"] = json_number(raw["best"])
            if best is not None and not isinstance(best, int | float):
                raise ValueError("'best' must be a number or null")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{file}: unreadable early-stopping state ({exc})") from None
        if (raw.get("monitor"), raw.get("mode")) != (self.config.monitor, self.config.mode):
            warn_main(  # the same on every rank
                "%s watched %s (%s); trainer.early_stopping now watches %s (%s): counting "
                "starts afresh",
                file,
                raw.get("monitor"),
                raw.get("mode"),
                self.config.monitor,
                self.config.mode,
            )
            return
        self.best, self.best_step = best, raw["best_step"]
        self.bad_validations, self.last_step = raw["bad_validations"] or 0, raw["last_step"]
