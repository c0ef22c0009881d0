"""Early stopping (`trainer.early_stopping`): stops at the step its counter says, after that
step's checkpoint, resumes with its counter, refuses a monitor validation does not
produce, and stops every rank at the same step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_ranks
from dist_early_stop import Frozen, digest, val_loader
from helpers import loader
from safetensors.torch import load_file

from stpdist import Trainer
from stpdist.config import CheckpointConfig, ConfigError, EarlyStoppingConfig
from stpdist.early_stopping import STATE_FILE
from stpdist.ema import EMA_FILE
from stpdist.errors import InputError


def make_trainer(out: Path, steps: int, **kwargs) -> Trainer:
    kwargs.setdefault("early_stopping", EarlyStoppingConfig(patience=3))
    return Trainer(
        output_dir=out,
        max_epochs=None,
        max_steps=steps,
        val_every_n_steps=1,
        progress_bar=False,
        log_every_n_steps=1,
        checkpoint=CheckpointConfig(every_n_steps=1, keep_last=100, keep_best=0),
        **kwargs,
    )


def val_losses(out: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["val/loss"] for x in lines if "val/loss" in x}


def test_stops_after_patience_validations_without_improvement(tmp_path, capsys):
    torch.manual_seed(0)
    state = make_trainer(tmp_path, 30).fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    losses = val_losses(tmp_path)
    # the run the test needs: better at steps 1..3, the same from step 4 on
    assert losses[1] > losses[2] > losses[3]
    assert losses[3] == losses[4] == losses[5] == losses[6]
    assert state.global_step == 6  # 3 validations in a row without an improvement
    assert max(losses) == 6
    # the checkpoint of the stopping step is written, with the counter in its manifest
    last = tmp_path / "checkpoints" / "step-00000006"
    assert (last / "manifest.json").is_file() and STATE_FILE in (last / "manifest.json").read_text()
    assert not (tmp_path / "checkpoints" / "step-00000007").exists()
    out = capsys.readouterr().out
    assert "early stopping after step 6: val/loss did not improve" in out
    assert "best " in out and "at step 3" in out


def test_min_delta_and_mode_max(tmp_path):
    # val/loss here: 0.2027, 0.1466, 0.1219, then 0.1219 for good (the test above checks
    # the shape). An improvement must beat the best by more than min_delta: step 3's gain
    # of 0.025 does not beat 0.03, so the best stays at step 2 and the run stops at 5.
    stopper = EarlyStoppingConfig(patience=3, min_delta=0.03)
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path / "delta", 30, early_stopping=stopper)
    state = trainer.fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    assert (state.global_step, trainer.early_stopping.best_step) == (5, 2)
    # mode max on the loss: the first validation is the best, every later one worse
    stopper = EarlyStoppingConfig(mode="max", patience=2)
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path / "max", 30, early_stopping=stopper)
    state = trainer.fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    assert (state.global_step, trainer.early_stopping.best_step) == (3, 1)


def test_resumes_with_its_counter(tmp_path):
    torch.manual_seed(0)
    # stopped by max_steps at step 5: two validations without an improvement so far
    make_trainer(tmp_path, 5).fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    saved = json.loads((tmp_path / "checkpoints" / "step-00000005" / STATE_FILE).read_text())
    assert saved["best_step"] == 3
    # the checkpoint precedes its step's validation (recorded beside it): a resume counts
    # that validation again from the recorded results, as the uninterrupted run did
    assert saved["bad_validations"] == 1 and saved["last_step"] == 4
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path, 30)
    state = trainer.fit(Frozen(frozen_after=3), loader(40, 4), val_loader(), resume="auto")
    assert state.global_step == 6  # one more, not three more
    assert trainer.early_stopping.bad_validations == 3
    # resuming the stopped run stops again at once, training nothing
    torch.manual_seed(0)
    again = make_trainer(tmp_path, 30).fit(
        Frozen(frozen_after=3), loader(40, 4), val_loader(), resume="auto"
    )
    assert again.global_step == 6


def test_a_monitor_validation_does_not_produce_is_refused_at_the_first_validation(tmp_path):
    stopper = EarlyStoppingConfig(monitor="val/nope")
    trainer = make_trainer(tmp_path, 10, early_stopping=stopper)
    with pytest.raises(InputError, match=r"'val/nope' is not among .*val/loss, val/mae"):
        trainer.fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    assert (tmp_path / "checkpoints" / "step-00000001").is_dir()  # the step is saved


def test_early_stopping_that_could_never_stop_is_refused_before_any_step(tmp_path):
    """No validation data, or validation only after the last step: early stopping would be
    inert; refused at start, nothing written."""
    with pytest.raises(InputError, match="would never stop this run: this run has no valid"):
        make_trainer(tmp_path / "a", 4).fit(Frozen(frozen_after=3), loader(40, 4))
    trainer = Trainer(output_dir=tmp_path / "b", max_epochs=2, val_every_n_epochs=0,
                      early_stopping=EarlyStoppingConfig(patience=3), progress_bar=False)  # fmt: skip
    with pytest.raises(InputError, match="validation runs only after the last step"):
        trainer.fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    assert not (tmp_path / "a" / "checkpoints").exists()
    assert not (tmp_path / "b" / "checkpoints").exists()
    # a schedules review: periods that all fall at or after the last step ran silently
    # (10 steps an epoch, 20 in all: validations every 5 epochs, or every 100 steps)
    for name, periods in (("c", {"val_every_n_epochs": 5}),
                          ("d", {"val_every_n_epochs": 0, "val_every_n_steps": 100})):  # fmt: skip
        trainer = Trainer(output_dir=tmp_path / name, max_epochs=2, progress_bar=False,
                          early_stopping=EarlyStoppingConfig(patience=3), **periods)  # fmt: skip
        with pytest.raises(InputError, match=r"its 20 steps end before its first validation"):
            trainer.fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
        assert not (tmp_path / name / "checkpoints").exists()


def test_a_resumed_run_that_early_stopping_cannot_stop_is_told_not_refused(tmp_path, capsys):
    """A diff review: the refusal stopped runs begun before it existed from resuming (and a
    requeued job of a finished one exited 2)."""
    periods = {"val_every_n_epochs": 5, "max_epochs": 2, "progress_bar": False}
    Trainer(output_dir=tmp_path, **periods).fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    again = Trainer(output_dir=tmp_path, early_stopping=EarlyStoppingConfig(patience=3), **periods)
    again.fit(Frozen(frozen_after=3), loader(40, 4), val_loader(), resume="auto")
    again.close()
    assert "trainer.early_stopping cannot stop this run: its 20 steps end before" in (
        capsys.readouterr().err
    )


def test_early_stopping_with_too_few_validations_to_stop_says_so(tmp_path, caplog):
    """Validations every 5 steps of 20: three before the last, one short of patience 3's
    four (the first sets the best): a warning at start, and the run goes on."""
    trainer = Trainer(output_dir=tmp_path, max_epochs=2, val_every_n_epochs=0,
                      val_every_n_steps=5, early_stopping=EarlyStoppingConfig(patience=3),
                      progress_bar=False)  # fmt: skip
    trainer.fit(Frozen(frozen_after=3), loader(40, 4), val_loader())
    trainer.close()
    assert "trainer.early_stopping cannot stop this run: it plans 3 validation(s) before its " \
        "last step, and a stop needs 4" in caplog.text  # fmt: skip


def test_settings_are_checked():
    for bad, match in (
        ({"patience": 0}, r"'early_stopping.patience' is 0"),
        ({"min_delta": -0.1}, r"'early_stopping.min_delta' is -0.1"),
        ({"min_delta": float("nan")}, r"'early_stopping.min_delta' is nan"),
    ):
        with pytest.raises(ConfigError, match=match):
            make_trainer(Path("unused"), 1, early_stopping=EarlyStoppingConfig(**bad))


@pytest.mark.multiprocess
def test_two_ranks_stop_at_the_same_step_with_the_same_ema(tmp_path):
    script = str(Path(__file__).parent / "dist_early_stop.py")
    run_ranks([script, str(tmp_path)], 2, timeout=240)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    # the EMA keeps improving val/loss after the weights froze at step 3, by less each
    # step (× 0.6): gains under min_delta 1e-3 from step 8 on, so 2 bad ones stop at 9
    assert (ranks[0]["step"], ranks[0]["best_step"], ranks[0]["bad"]) == (9, 7, 2)
    # every rank's EMA is the one rank 0 saved in the checkpoint of the stopping step
    saved = load_file(str(tmp_path / "checkpoints" / "step-00000009" / EMA_FILE))
    assert digest([saved[n] for n in ranks[0]["ema_names"]]) == ranks[0]["ema"]
