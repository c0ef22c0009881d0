"""The Python API refuses what it would not honour, in one message naming it, before any
training: a DataLoader sampler it would ignore, Trainer keywords of the wrong type,
validation data for a module without `validation_step`, schedulers and scheduler keys it
does not step, a loss that is not one number; and what it logs or predicts is what the
user asked for (a validated checkpoint's own step, predictions without metrics hooks)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PYTHON_C, TinyModule, TinySequences, loader
from torch.utils.data import DataLoader, SubsetRandomSampler, WeightedRandomSampler

from stpdist import EnhancedModule, Trainer
from stpdist.config import ConfigError, EmaConfig
from stpdist.errors import InputError


def trainer(tmp_path: Path, **fields) -> Trainer:
    fields = {"max_epochs": 1, "progress_bar": False, "output_dir": tmp_path / "run", **fields}
    return Trainer(**fields)


def test_a_sampler_the_trainer_would_ignore_is_refused(tmp_path):
    """The Trainer deals the dataset across ranks itself: a subset sampler would have
    trained on the validation samples, silently."""
    data = TinySequences(16)
    t = trainer(tmp_path)
    for sampler in (
        SubsetRandomSampler(range(4)),
        WeightedRandomSampler([1.0] * 16, 16),
        torch.utils.data.RandomSampler(data, num_samples=4),
    ):
        subset = DataLoader(data, batch_size=2, sampler=sampler)
        with pytest.raises(TypeError, match=f"has a {type(sampler).__name__} that would be"):
            t.fit(TinyModule(), subset)
        with pytest.raises(TypeError, match="torch.utils.data.Subset"):
            t.validate(TinyModule(), subset)
    assert not (tmp_path / "run" / "checkpoints").exists()
    part = torch.utils.data.Subset(data, range(12))  # what the message says to use
    t.fit(TinyModule(), DataLoader(part, batch_size=2, shuffle=True))
    results = t.validate(TinyModule(), DataLoader(torch.utils.data.Subset(data, range(12, 16))))
    assert results["val/num_samples"] == 4


def _mark_worker(folder: Path, worker_id: int) -> None:
    import signal

    ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the Trainer's setting kept
    (folder / f"worker-{worker_id}-{ignored}").touch()


def test_a_dataloaders_own_worker_init_fn_runs_in_training_and_evaluation_workers(tmp_path):
    """The Trainer builds its own DataLoaders from the one passed; the user's
    `worker_init_fn` (e.g. opening a file per worker) was dropped, silently."""
    import functools

    for role in ("train", "val"):
        (tmp_path / role).mkdir()
    data = TinySequences(16)

    def passed(role: str, **kwargs) -> DataLoader:
        init = functools.partial(_mark_worker, tmp_path / role)
        return DataLoader(data, batch_size=4, num_workers=2, worker_init_fn=init, **kwargs)

    trainer(tmp_path).fit(TinyModule(), passed("train", shuffle=True), passed("val"))
    for role in ("train", "val"):
        assert sorted(p.name for p in (tmp_path / role).iterdir()) == [
            "worker-0-True",
            "worker-1-True",
        ], role


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_epochs": 1.5}, "Trainer: bad value for 'max_epochs': Value '1.5' of type 'float'"),
        ({"strategy": "deepspeed"}, "'strategy': Invalid value 'deepspeed', expected one of"),
        ({"compile": "yes"}, "Trainer: 'compile' is 'yes'; expected true or false"),
        ({"seed": 0.5}, "bad value for 'seed'"),
        ({"ema": True}, "'ema' is true; expected a mapping of EmaConfig's keys"),
        ({"ema": {"decai": 0.9}}, "unknown key 'ema.decai'; valid keys there: decay"),
        ({"max_epochz": 2}, "unknown key 'max_epochz'; valid keys there: output_dir"),
        ({"mixed_precision": "fp32"}, "'mixed_precision': Invalid value 'fp32'"),
    ],
)
def test_trainer_keywords_are_typed_as_a_config_files_values(tmp_path, fields, message):
    with pytest.raises(ConfigError) as caught:
        trainer(tmp_path, **fields)
    assert message in str(caught.value)


def test_a_mapping_for_a_section_becomes_that_section(tmp_path):
    t = trainer(tmp_path, ema={"decay": 0.5}, checkpoint={"keep_last": 1}, max_epochs="2")
    assert t.config.ema == EmaConfig(decay=0.5)
    assert t.config.checkpoint.keep_last == 1 and t.config.checkpoint.keep_best == 1
    assert t.config.max_epochs == 2 and t.config.output_dir == str(tmp_path / "run")


class NoValidation(EnhancedModule):
    """TinyModule's layers and hooks but `validation_step`."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyModule(scheduler=False)

    def forward(self, inputs):
        return self.inner(inputs)

    def configure_optimizer(self):
        return self.inner.configure_optimizer()

    def training_step(self, inputs, targets):
        return self.inner.training_step(inputs, targets)

    def predict_step(self, inputs, targets):
        return self(inputs)


def test_validation_data_without_validation_step_is_refused_before_training(tmp_path):
    t = trainer(tmp_path)
    with pytest.raises(NotImplementedError, match="NoValidation has no validation_step()"):
        t.fit(NoValidation(), loader(8), loader(4, shuffle=False))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_predict_needs_no_validation_step(tmp_path):
    t = trainer(tmp_path)
    module = NoValidation()
    t.fit(module, loader(8))
    assert t.predict(module, loader(6, shuffle=False), out=tmp_path / "p") == {}
    from stpdist.trainer import load_predictions

    predicted = load_predictions(tmp_path / "p")
    assert len(predicted) == 6 and {v.shape for v in predicted.values()} == {(2, 1, 4, 4)}


class Days(TinySequences):
    def key(self, index: int) -> str:
        return f"day{index:03d}"


def test_predictions_of_a_subset_are_named_by_the_samples_they_hold(tmp_path):
    """`Subset(dataset, indices)`, as the docs advise for part of a dataset: its samples
    were named by their place in the subset (two subsets: the same keys), the dataset's
    own `key` ignored."""
    from torch.utils.data import Subset

    from stpdist.trainer import load_predictions

    t = trainer(tmp_path)
    module = TinyModule()
    t.fit(module, loader(8))
    for dataset, name in ((Days(10), "days"), (TinySequences(10), "plain")):
        part = Subset(Subset(dataset, [3, 7, 8, 9]), [1, 2, 3])  # 7, 8, 9 of the dataset
        t.predict(module, DataLoader(part, batch_size=2), out=tmp_path / name)
        keys = sorted(load_predictions(tmp_path / name))
        assert keys == (["day007", "day008", "day009"] if name == "days"
                        else ["00000007", "00000008", "00000009"])  # fmt: skip


def test_the_samples_an_epoch_leaves_out_are_said(tmp_path, capsys):
    """15 samples at batch 4 × accumulation 2 make one optimizer step: 7 were never trained
    on (a DataLoader that does not shuffle: the same 7 every epoch), without a word."""
    t = trainer(tmp_path, gradient_accumulation_steps=2)
    t.fit(TinyModule(), loader(15, shuffle=False))
    assert (
        "7 of 15 training samples are left out of each epoch (epochs end on a whole optimizer "
        "step on every rank: 1 rank(s) × batch 4 × accumulation 2); the same ones every "
        "epoch: the DataLoader does not shuffle"
    ) in capsys.readouterr().out


class ReservedNames(TinyModule):
    def training_step(self, inputs, targets):
        return {"loss": super().training_step(inputs, targets), "lr": 123.0, "mine": 1.0}

    def validation_step(self, inputs, targets):
        return {"loss": super().validation_step(inputs, targets), "num_samples": 999.0}


class ForgotReturn(TinyModule):
    def validation_step(self, inputs, targets):
        self(inputs)


def test_entries_under_the_trainers_own_names_are_said_not_silently_overwritten(tmp_path, capsys):
    """A module's `lr` (or `grad_norm`, `epoch_loss`, `num_samples`) was replaced by the
    Trainer's value, or mixed into the epoch's row, without a word."""
    t = trainer(tmp_path, log_every_n_steps=1)
    t.fit(ReservedNames(), loader(8), loader(5, shuffle=False))
    said = capsys.readouterr().err
    assert "training_step's entry 'lr' is not logged: the Trainer logs its own value" in said
    assert "validation_step's entry 'num_samples' is not logged" in said
    rows = _rows(tmp_path / "run")
    assert all(r["train/lr"] != 123.0 for r in rows if "train/lr" in r)
    assert any(r.get("train/mine") == 1.0 for r in rows)
    assert [r["val/num_samples"] for r in rows if "val/num_samples" in r] == [5]
    with pytest.raises(TypeError, match="validation_step returned NoneType; expected its loss "
                       r".*did it forget its `return`\?"):  # fmt: skip
        trainer(tmp_path / "b").fit(ForgotReturn(), loader(8), loader(4, shuffle=False))


class Weighted(TinyModule):
    def training_step(self, inputs, targets, weight):
        return super().training_step(inputs, targets) * weight.mean()


class WithWeights(TinySequences):
    def __getitem__(self, i: int):
        return (*super().__getitem__(i), torch.tensor(float(i)))


def test_a_hook_taking_an_extra_the_batch_lacks_says_where_extras_come_from(tmp_path):
    """A tuple batch's third item is its keys: a hook declaring `weight` failed with
    Python's bare "missing 1 required positional argument: 'weight'"."""
    with pytest.raises(TypeError) as exc:
        trainer(tmp_path).fit(Weighted(), DataLoader(WithWeights(8), batch_size=4))
    assert str(exc.value) == (
        "Weighted.training_step takes weight, which the batch does not carry (its extras: "
        "keys): extras come in a dict batch ({'inputs': …, 'targets': …, 'weight': …}); a "
        "tuple batch's third item is its sample keys"
    )


class _TimmLike:
    """timm's schedulers' calling convention: `step(epoch)`, the epoch given."""

    def __init__(self, optimizer) -> None:
        self.optimizer = optimizer

    def step(self, epoch, metric=None) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


class _Stateless:
    def step(self) -> None:
        pass


class Scheduled(TinyModule):
    def __init__(self, returned) -> None:
        super().__init__()
        self.returned = returned

    def configure_lr_scheduler(self, optimizer):
        return self.returned(optimizer)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (torch.optim.lr_scheduler.ReduceLROnPlateau, "returned a ReduceLROnPlateau, which steps"),
        (
            lambda o: {
                "scheduler": torch.optim.lr_scheduler.StepLR(o, 1),
                "interval": "epoch",
                "frequency": 2,
            },
            "dict has 'frequency', which the Trainer does not honour",
        ),
        # Lightning's list form: failed at step 1 ("'list' object has no attribute 'step'")
        (lambda o: [torch.optim.lr_scheduler.StepLR(o, 1)], "returned a list of 1; the Trainer"),
        (lambda o: "cosine", "returned a str, which has no step\\(\\)"),
        # a schedules review: these failed a whole epoch in (at its end, or its first save)
        (lambda o: _TimmLike(o), r"returned a _TimmLike whose step\(epoch, metric=None\) needs"),
        (lambda o: _Stateless(), r"returned a _Stateless without state_dict\(\) or load_state"),
    ],
)
def test_schedulers_the_trainer_would_not_step_as_asked_are_refused(tmp_path, returned, message):
    with pytest.raises((TypeError, ValueError), match=message):
        trainer(tmp_path).fit(Scheduled(returned), loader(8))
    assert not (tmp_path / "run" / "checkpoints").exists()


class LightningOptimizers(TinyModule):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def configure_optimizer(self):
        optimizer = super().configure_optimizer()
        if self.form == "list":
            return [optimizer]
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1),
        }


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ("list", r"returned a list, expected a torch.optim.Optimizer; the Trainer steps one"),
        ("dict", r"returned a dict, .*its scheduler from configure_lr_scheduler\(optimizer\)"),
    ],
)
def test_lightnings_other_optimizer_forms_are_refused_naming_the_hook(tmp_path, form, message):
    with pytest.raises(TypeError, match=message):
        trainer(tmp_path).fit(LightningOptimizers(form), loader(8))
    assert not (tmp_path / "run" / "checkpoints").exists()


class Unreduced(TinyModule):
    def training_step(self, inputs, targets):
        return torch.nn.functional.mse_loss(self(inputs), targets, reduction="none")


class UnreducedValidation(TinyModule):
    def validation_step(self, inputs, targets):
        return torch.nn.functional.mse_loss(self(inputs), targets, reduction="none")


def test_a_loss_that_is_not_one_number_is_named_with_its_shape(tmp_path):
    with pytest.raises(
        TypeError, match=r"training_step returned a tensor of shape \(4, 2, 1, 4, 4"
    ):
        trainer(tmp_path).fit(Unreduced(), loader(8))
    with pytest.raises(TypeError, match=r"validation_step returned a tensor of shape \(4, 2"):
        trainer(tmp_path).validate(UnreducedValidation(), loader(8, shuffle=False))


def test_resume_and_ckpt_values(tmp_path):
    t = trainer(tmp_path)
    t.fit(TinyModule(), loader(8))
    with pytest.raises(InputError, match=r"resume='last': to go on from the newest checkpoint"):
        t.fit(TinyModule(), loader(8), resume="last")
    with pytest.raises(TypeError, match="resume is True; expected None, 'auto'"):
        t.fit(TinyModule(), loader(8), resume=True)
    assert t.checkpoints.choose(2).name == "step-00000002"  # a step number


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_rows_name_the_step_and_epoch_they_are_of(tmp_path):
    """The end-of-epoch validation row is of the epoch just finished; a validation of a
    checkpoint logs at that checkpoint's step (a weights file, which knows none: no row)."""
    from stpdist.checkpoint import MODEL_FILE

    run = tmp_path / "run"
    t = trainer(tmp_path, max_epochs=2)
    t.fit(TinyModule(), loader(8), loader(4, shuffle=False))  # 2 steps an epoch
    rows = [r for r in _rows(run) if "val/loss" in r]
    assert [(r["step"], r["epoch"]) for r in rows] == [(2, 0), (4, 1)]
    fresh = trainer(tmp_path, max_epochs=2)
    ckpt = run / "checkpoints" / "step-00000002"
    fresh.validate(TinyModule(), loader(4, shuffle=False), ckpt=ckpt, split="test")
    assert [(r["step"], r["epoch"]) for r in _rows(run)][-1] == (2, 0)
    assert "test/loss" in _rows(run)[-1]
    # a step validated already: its first row stays the record (no second one beside it,
    # which a resume would send to wandb in its place)
    count = len(_rows(run))
    fresh.validate(TinyModule(), loader(4, shuffle=False), ckpt=ckpt)
    fresh.validate(TinyModule(), loader(4, shuffle=False), ckpt=ckpt, split="test")
    assert len(_rows(run)) == count
    weights = run / "checkpoints" / "step-00000004" / MODEL_FILE
    fresh.validate(TinyModule(), loader(4, shuffle=False), ckpt=weights)
    assert len(_rows(run)) == count


def test_resuming_an_ema_run_without_ema_says_the_average_is_dropped(tmp_path):
    trainer(tmp_path, ema={"decay": 0.5}).fit(TinyModule(), loader(8))
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("stpdist")
    logger.addHandler(handler)
    try:
        trainer(tmp_path, max_epochs=2).fit(TinyModule(), loader(8), resume="auto")
    finally:
        logger.removeHandler(handler)
    assert any(
        "holds an EMA of the weights (ema.safetensors) but trainer.ema is off" in s for s in said
    )


class Odd(TinyModule):
    def __init__(self, returned) -> None:
        super().__init__()
        self.returned = returned

    def predict_step(self, inputs, targets):
        return self.returned(self(inputs))


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda pred: {"predictions": pred}, "Odd.predict_step returned a dict; expected a tensor"),
        (lambda pred: pred[:, :1], r"shape \(4, 1, 1, 4, 4\), the batch's targets are \(4, 2"),
        (lambda pred: pred[:2], r"shape \(2, 2, 1, 4, 4\) for a batch of 4"),
    ],
)
def test_predictions_that_are_not_one_per_sample_shaped_as_the_targets_are_refused(
    tmp_path, returned, message
):
    with pytest.raises((TypeError, ValueError), match=message):
        trainer(tmp_path).predict(Odd(returned), loader(8, shuffle=False), metrics=False)


def test_a_resume_refuses_another_seed_and_data_that_shrank_mid_epoch(tmp_path):
    """Python-API runs have no config.yaml: the checkpoint's state records the seed (which
    orders every epoch's data) and the batch size, resolved. A resume past the end of an
    epoch that now has fewer batches (the data shrank) is refused instead of looping."""
    trainer(tmp_path, max_epochs=None, max_steps=7).fit(TinyModule(), loader(32, 4))  # 8 a epoch
    with pytest.raises(InputError, match=r"trainer\.seed 0 \(the checkpoint's\) → 7"):
        trainer(tmp_path, seed=7, max_epochs=2).fit(TinyModule(), loader(32, 4), resume="auto")
    with pytest.raises(InputError, match=r"data\.batch_size 4 \(the checkpoint's\) → 2"):
        trainer(tmp_path, max_epochs=2).fit(TinyModule(), loader(32, 2), resume="auto")
    # the dataset's length is recorded too (since 2026-12-07; a checkpoint from before
    # meets the refusal of a micro-batch past the epoch's end)
    with pytest.raises(InputError, match=r"data\.shards 32 samples \(the checkpoint's\) → 16"):
        trainer(tmp_path, max_epochs=2).fit(TinyModule(), loader(16, 4), resume="auto")
    state = trainer(tmp_path, max_epochs=2).fit(TinyModule(), loader(32, 4), resume="auto")
    assert state.global_step == 16


# ------------------------------------------- hook outputs a new user's module may return
class Keyed(TinySequences):
    def __init__(self, num: int, keys) -> None:
        super().__init__(num)
        self.keys = keys

    def __getitem__(self, i: int):
        inputs, targets = super().__getitem__(i)
        return {"inputs": inputs, "targets": targets, "keys": self.keys(i)}


def test_predict_writes_under_the_samples_own_keys_and_refuses_one_key_twice(tmp_path):
    """Once, a dataset's own 'keys' were replaced by its indices, and a key shared by every
    sample wrote one file entry per sample under the same name."""
    from stpdist.trainer import load_predictions

    t = trainer(tmp_path)
    module = TinyModule()
    own = DataLoader(Keyed(6, lambda i: f"sample {i}"), batch_size=4)
    t.predict(module, own, out=tmp_path / "p")
    assert sorted(load_predictions(tmp_path / "p")) == [f"sample {i}" for i in range(6)]
    numbered = DataLoader(Keyed(3, lambda i: 100 + i), batch_size=2)  # numbers: collated
    t.predict(module, numbered, out=tmp_path / "n")
    assert sorted(load_predictions(tmp_path / "n")) == ["100", "101", "102"]
    with pytest.raises(ValueError, match=r"sample key 'dup' appears twice in the test data"):
        t.predict(module, DataLoader(Keyed(6, lambda i: "dup"), batch_size=4), out=tmp_path / "d")


class SkipsEverything(TinyModule):
    def training_step(self, inputs, targets):
        return None


def test_an_epoch_that_trained_on_nothing_says_so_and_logs_no_loss(tmp_path, caplog):
    """It logged train/epoch_loss 0 and said nothing."""
    t = trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        t.fit(SkipsEverything(), loader(8))
    assert "epoch 0: training_step returned None for all 2 micro-batches" in caplog.text
    rows = _rows(tmp_path / "run")
    assert not [r for r in rows if "train/epoch_loss" in r] and [r for r in rows if "time_s" in r]


class Extras(TinyModule):
    def configure_optimizer(self):
        body, head = self.net[1].parameters(), self.net[4].parameters()
        return torch.optim.SGD([{"params": body}, {"params": head, "lr": 0.01}], lr=0.1)

    def validation_step(self, inputs, targets):
        pred = self(inputs)
        per_lead = (pred - targets).pow(2).mean(dim=(0, 2, 3, 4))
        return {"loss": per_lead.mean(), "per_lead": per_lead, "note": "text", "predictions": pred}


def test_unlogged_entries_are_named_once_and_every_group_rate_is_logged(tmp_path, caplog):
    t = trainer(tmp_path, log_every_n_steps=1)
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        t.fit(Extras(), loader(8), loader(8, shuffle=False))
    warned = [r.getMessage() for r in caplog.records if "not one number" in r.getMessage()]
    assert len(warned) == 2  # once each, not per batch; predictions are used, not warned
    assert "'per_lead' is a tensor of shape (2,)" in warned[0] and "'note' is a str" in warned[1]
    logged = [r for r in _rows(tmp_path / "run") if "train/lr" in r]
    assert logged and all((r["train/lr"], r["train/lr_group1"]) == (0.1, 0.01) for r in logged)


class BadLoss(TinyModule):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def training_step(self, inputs, targets):
        loss = super().training_step(inputs, targets)
        return {
            "detached": lambda: loss.detach(),
            "integer": lambda: torch.tensor(3),
            "tuple": lambda: (loss, 1.0),
        }[self.form]()


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ("detached", r"returned a loss at step 1 that autograd cannot differentiate"),
        ("integer", r"returned a torch.int64 loss at step 1"),
        ("tuple", r"returned a tuple at step 1; expected the loss"),
    ],
)
def test_a_loss_autograd_cannot_use_is_named_with_the_step(tmp_path, form, message):
    with pytest.raises(TypeError, match=message):
        trainer(tmp_path).fit(BadLoss(form), loader(8))


class Named(TinyModule):
    channel_names = ["u", "v"]  # two names, for data of one channel


def test_channel_names_that_do_not_fit_the_data_leave_the_pictures_to_c0_not_stop_a_run(
    tmp_path, capsys
):
    """A module attribute named `channel_names` (what the Forecaster names its variables
    with) that did not fit the data stopped `fit` at its first validation."""
    from stpdist.config import LoggingConfig

    t = Trainer(
        max_epochs=2, progress_bar=False, output_dir=tmp_path / "run",
        logging=LoggingConfig(num_samples=1, trackers=[]),
    )  # fmt: skip
    t.fit(Named(), loader(8), loader(4, shuffle=False))
    warned = [line for line in capsys.readouterr().err.splitlines() if "channel_names" in line]
    assert len(warned) == 1 and "not one name per channel of the 1-channel data" in warned[0]
    assert len(list((tmp_path / "run" / "samples").glob("step-*/*.png"))) >= 2


def test_a_scheduler_of_none_in_the_dict_form_is_no_scheduler(tmp_path):
    state = trainer(tmp_path).fit(
        Scheduled(lambda o: {"scheduler": None, "interval": "step"}), loader(8)
    )
    assert state.global_step == 2


def test_train_lr_is_the_next_steps_rate_at_an_epoch_schedules_boundary_too(tmp_path):
    """`train/lr` is the rate after the step; with `interval: epoch` the epoch's last step
    logged the rate it had trained with, one step behind the schedule."""
    halving = Scheduled(
        lambda o: {"scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.5), "interval": "epoch"}
    )
    trainer(tmp_path, max_epochs=2, log_every_n_steps=1).fit(halving, loader(8))
    rows = [r for r in _rows(tmp_path / "run") if "train/lr" in r]
    assert [(r["step"], r["epoch"], r["train/lr"]) for r in rows] == [
        (1, 0, 0.05), (2, 0, 0.025), (3, 1, 0.025), (4, 1, 0.0125),
    ]  # fmt: skip


class _CtrlCAtStep2(TinyModule):
    def training_step(self, inputs, targets):
        if self.global_step == 1:
            import signal

            signal.raise_signal(signal.SIGINT)  # a terminal's Ctrl-C: fit's handler notes it
        return super().training_step(inputs, targets)


def test_ctrl_c_in_an_experiment_loop_is_not_swallowed_by_except_exception(tmp_path):
    """`fit` raised Preempted (a RuntimeError) after Ctrl-C: a loop over trials with
    `except Exception: continue` went on to the next trial, one Ctrl-C per trial. It is now
    `Interrupted`, a KeyboardInterrupt carrying the checkpoint, and resumes as before."""
    from stpdist.trainer import Interrupted, Preempted

    trials = []
    with pytest.raises(Interrupted) as stop:
        for trial in range(3):
            try:
                trials.append(trial)
                Trainer(max_epochs=1, output_dir=tmp_path / f"t{trial}", progress_bar=False).fit(
                    _CtrlCAtStep2(), loader(16)
                )
            except Exception:  # a failed trial: the next one
                continue
    assert trials == [0] and isinstance(stop.value, KeyboardInterrupt)
    assert not isinstance(stop.value, Preempted) and stop.value.exit_code == 130
    assert stop.value.checkpoint == tmp_path / "t0" / "checkpoints" / "step-00000002"
    assert "stopped on Ctrl-C after step 2" in str(stop.value)
    state = Trainer(max_epochs=1, output_dir=tmp_path / "t0", progress_bar=False).fit(
        TinyModule(), loader(16), resume="auto"
    )
    assert state.global_step == 4


_README_PATTERN = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from stpdist import EnhancedModule, Trainer

class Net(EnhancedModule):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)
    def configure_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)
    def training_step(self, x, y):
        return torch.nn.functional.mse_loss(self(x), y)

g = torch.Generator().manual_seed(1)
data = TensorDataset(torch.rand(16, 4, 1, 8, 8, generator=g), torch.rand(16, 4, 1, 8, 8, generator=g))
trainer = Trainer(max_epochs=1, output_dir="run", progress_bar=False)
trainer.fit(net := Net(), DataLoader(data, batch_size=4, shuffle=True))
print(repr(float(net.conv.weight.double().sum())))
"""


def test_the_readme_pattern_gives_the_same_weights_in_every_process(tmp_path):
    """torch seeds itself differently in every process, and `Trainer(seed=…)` seeded only
    as `fit` started: a module built in Python got other weights every run (val/loss
    0.1995 vs 0.2161), against "the same seed gives bitwise-identical weights"."""
    import os
    import subprocess
    import sys

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    found = [
        subprocess.run([sys.executable, PYTHON_C, _README_PATTERN], cwd=tmp_path / run, env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout.split()[-1]
        for run in ("a", "b")
    ]  # fmt: skip
    assert found[0] == found[1]


class _NumpyScalars(TinyModule):
    def training_step(self, inputs, targets):
        import numpy as np

        loss = super().training_step(inputs, targets)
        return {"loss": loss, "f32": np.float32(2.0), "i64": np.int64(3), "zero_d": np.array(4.0)}


def test_numpy_scalars_of_a_hook_are_logged(tmp_path, capsys):
    """`np.float32(2.0)` was "a float32, not one number: it is not logged"."""
    Trainer(max_epochs=1, output_dir=tmp_path, progress_bar=False, log_every_n_steps=2).fit(
        _NumpyScalars(), loader(16)
    )
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/f32" in r]
    assert len(logged) == 2
    assert {(r["train/f32"], r["train/i64"], r["train/zero_d"]) for r in logged} == {(2, 3, 4)}
    assert "not one number" not in capsys.readouterr().err


class _PlannedOneCycle(TinyModule):
    def configure_lr_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.01, total_steps=self.planned_steps)


def test_a_one_cycle_of_ones_own_module_lengthened_on_resume_says_how_from_python(tmp_path):
    """A schedules review: the refusal told a Python module to set model.init_weights, a key
    of stpdist's configs that such a run has not."""
    trainer(tmp_path).fit(_PlannedOneCycle(), loader(8))
    longer = trainer(tmp_path, max_epochs=2)
    with pytest.raises(InputError, match=r"cannot be lengthened.*module\.load_state_dict\("
                       r"safetensors\.torch\.load_file\('.*step-00000002/model\.safetensors'\)\)"):  # fmt: skip
        longer.fit(_PlannedOneCycle(), loader(8), resume="auto")


def test_numpy_numbers_and_mappings_are_trainer_settings(tmp_path):
    """A Python API review: a sweep loop over `np.linspace` failed ("Value 'float64' is not a
    supported primitive type"), and `logging={"num_samples": 0}` was a TypeError while
    `ema={…}` was taken."""
    import numpy as np

    from stpdist import Trainer

    for clip in np.linspace(0.5, 1.0, 2):
        trainer = Trainer({"output_dir": str(tmp_path / "run"), "max_epochs": np.int64(1)},
                          logging={"num_samples": np.int32(0)}, grad_clip_norm=clip,
                          seed=np.int64(3), progress_bar=np.bool_(False))  # fmt: skip
        assert type(trainer.config.grad_clip_norm) is float and trainer.config.seed == 3
        assert trainer.config.max_epochs == 1 and trainer.tracker.config.num_samples == 0
        trainer.close()


class RateOf(TinyModule):
    def __init__(self, lr: float, kind: str = "sgd") -> None:
        super().__init__(lr=lr, scheduler=False)
        self.kind = kind

    def configure_optimizer(self):
        if self.kind == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def test_a_resume_with_another_optimizer_from_python_is_scaled_or_refused(tmp_path, capsys):
    """A Python API review: another lr in `configure_optimizer` was ignored on resume without
    a word (the checkpoint's went on), another optimizer class failed in torch with
    KeyError 'step'. Other rates of one ratio scale the restored state, as a config's
    `model.optimizer.lr` does: the new rate from the resumed step on."""
    trainer(tmp_path, max_epochs=1, log_every_n_steps=1).fit(RateOf(0.1), loader(16, 4))
    with pytest.raises(InputError, match=r"optimizer SGD \(the checkpoint's\) → Adam"):
        trainer(tmp_path, max_epochs=2).fit(RateOf(0.1, "adam"), loader(16, 4), resume="auto")
    resumed = trainer(tmp_path, max_epochs=2, log_every_n_steps=1)
    resumed.fit(RateOf(0.5), loader(16, 4), resume="auto")
    assert "the optimizer's lr 0.1 (the checkpoint's) → 0.5" in capsys.readouterr().out
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rates = {r["step"]: r["train/lr"] for r in map(json.loads, lines) if "train/lr" in r}
    assert rates[4] == pytest.approx(0.1) and rates[5] == pytest.approx(0.5), rates


def test_a_dataloaders_worker_start_method_is_kept(tmp_path, capsys):
    """A Python API review: the Trainer's own loaders dropped `multiprocessing_context`
    (workers forked whatever was asked: libraries that break after fork broke), pinned
    memory and prefetching, and said nothing of `persistent_workers`."""
    import helpers

    from stpdist.data import loading

    loading._SAID_OF_LOADERS.clear()  # said once a process
    record = tmp_path / "workers.txt"
    helpers.FORKED_MARK.append("parent")
    try:
        data = DataLoader(helpers.StartMethodProbe(8, str(record)), batch_size=4, num_workers=1,
                          multiprocessing_context="spawn", persistent_workers=True)  # fmt: skip
        val = DataLoader(helpers.StartMethodProbe(4, str(record)), batch_size=4, num_workers=1,
                         multiprocessing_context="spawn")  # fmt: skip
        trainer(tmp_path).fit(TinyModule(), data, val)  # its validation too (a diff review)
    finally:
        helpers.FORKED_MARK.clear()
    started = {line.split()[1] for line in record.read_text().splitlines()}
    assert started == {"spawned"}, started
    assert "DataLoader(persistent_workers=True) does not apply" in capsys.readouterr().err


def test_after_fit_with_ema_the_average_is_reachable_as_documented(tmp_path):
    """A Python API review: after `fit` with `ema` the module holds the raw weights, and no
    page said how to reach the average from Python."""
    module = TinyModule()
    fitted = trainer(tmp_path, ema={"decay": 0.5})
    fitted.fit(module, loader(16, 4))
    average = fitted.ema.state_dict()
    raw = {k: v.clone() for k, v in module.state_dict().items()}
    assert any(not torch.equal(raw[k], average[k]) for k in average)
    with fitted.evaluation_weights():
        assert all(torch.equal(module.state_dict()[k], average[k]) for k in average)
    assert all(torch.equal(module.state_dict()[k], raw[k]) for k in raw)
    fitted.close()


class VectorMetric(TinyModule):
    def validation_step(self, inputs, targets):
        pred = self(inputs)
        err = (pred - targets).pow(2).mean(dim=(2, 3, 4)).sum(0)  # per lead time
        return {"loss": torch.nn.functional.mse_loss(pred, targets), "sums": {"sq": err}}

    def metrics_from_sums(self, sums):
        return {"mse_t1": sums["sq"][0], "mse_per_t": sums["sq"]}


def test_a_vector_from_metrics_from_sums_is_named_before_anything(tmp_path):
    """A Python API review: a vector result of `metrics_from_sums` failed after the
    checkpoint, in the console's formatting ("a Tensor with 2 elements cannot be converted
    to Scalar"), naming neither the hook nor the key; `validate` returned tensors."""
    with pytest.raises(InputError, match=r"metrics_from_sums returned \(2,\) for 'mse_per_t'"):
        trainer(tmp_path).validate(VectorMetric(), loader(8, 4, False))

    class Scalars(VectorMetric):
        def metrics_from_sums(self, sums):
            return {"mse_t1": sums["sq"][0]}

    results = trainer(tmp_path / "b").validate(Scalars(), loader(8, 4, False))
    assert type(results["val/mse_t1"]) is float


def test_inputs_alone_are_predicted_from(tmp_path):
    """A Python API review: `predict` over a TensorDataset of inputs, or a DataLoader over a
    tensor, was refused, the message listing only forms with targets."""
    from torch.utils.data import TensorDataset

    from stpdist.trainer import load_predictions

    inputs = TinySequences(6).inputs
    module = TinyModule()
    for data, out in ((DataLoader(TensorDataset(inputs), batch_size=4), "a"),
                      (DataLoader(inputs, batch_size=4), "b")):  # fmt: skip
        trainer(tmp_path).predict(module, data, out=tmp_path / out)
        predicted = load_predictions(tmp_path / out)
        assert len(predicted) == 6
        with torch.no_grad():
            expected = module(inputs[:1])[0].numpy()
        first = predicted[sorted(predicted)[0]]
        np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-7)  # batch of 4 vs 1


def test_a_mistyped_checkpoint_is_said_not_there_with_those_that_are(tmp_path):
    """A Python API review: a checkpoint path that never existed (a typo) was said to be
    retired by a run still training."""
    from stpdist.checkpoint import RetiredCheckpoint

    fitted = trainer(tmp_path)
    fitted.fit(TinyModule(), loader(16, 4))  # step-00000004
    typo = tmp_path / "run" / "checkpoints" / "step-00000009"
    with pytest.raises(RetiredCheckpoint) as missing:
        fitted.validate(TinyModule(), loader(8, 4, False), ckpt=typo)
    said = str(missing.value)
    assert f"checkpoint {typo} is not there (the checkpoints in" in said
    assert "step-00000004" in said and "still training" not in said
    folder = tmp_path / "runn" / "checkpoints" / "step-00000004"  # a mistyped run folder
    with pytest.raises(RetiredCheckpoint, match=f"is not there \\({folder.parent} is no folder"):
        fitted.validate(TinyModule(), loader(8, 4, False), ckpt=folder)


class NoPredictions(TinyModule):
    def validation_step(self, inputs, targets):
        return {"loss": torch.nn.functional.mse_loss(self(inputs), targets)}


def test_sample_pictures_asked_of_a_module_without_predictions_are_said(tmp_path, capsys):
    """A Python API review: `num_samples` with a validation_step that returns no
    'predictions' drew no pictures, without a word."""
    from stpdist.config import LoggingConfig

    fitted = trainer(tmp_path, max_epochs=2, logging=LoggingConfig(num_samples=2))
    fitted.fit(NoPredictions(), loader(8, 4), loader(4, 4, False))
    said = capsys.readouterr().out
    assert said.count("logging.num_samples is 2, but validation_step returns no") == 1, said
    assert not (tmp_path / "run" / "samples").exists() or not any(
        (tmp_path / "run" / "samples").iterdir()
    )


class RateScheduled(RateOf):
    def __init__(self, lr: float, schedule: str) -> None:
        super().__init__(lr)
        self.schedule = schedule

    def configure_lr_scheduler(self, optimizer):
        sched = torch.optim.lr_scheduler
        if self.schedule == "restarts":
            return sched.CosineAnnealingWarmRestarts(optimizer, T_0=5)
        if self.schedule == "cyclic":
            return sched.CyclicLR(optimizer, self.lr / 10, self.lr, step_size_up=3)
        return sched.SequentialLR(optimizer, [sched.LinearLR(optimizer, 0.5, total_iters=2),
                                              sched.CosineAnnealingLR(optimizer, 6)], [2])  # fmt: skip


@pytest.mark.parametrize("schedule", ["restarts", "cyclic", "sequential"])
def test_a_module_schedule_resumed_at_another_lr_follows_the_new_rates(tmp_path, schedule):
    """A diff review: a scheduler that recomputes its rates from its own restored bases
    (CosineAnnealingWarmRestarts, CyclicLR) was said "scaled" and went on at the old
    rates. Resumed at twice the lr, the rates from there are those of a run at twice the
    lr from the start."""

    def rates(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["train/lr"] for r in map(json.loads, lines) if "train/lr" in r}

    first = tmp_path / "a"
    Trainer(output_dir=first, max_epochs=1, log_every_n_steps=1, progress_bar=False).fit(
        RateScheduled(0.1, schedule), loader(16, 4)
    )
    Trainer(output_dir=first, max_epochs=2, log_every_n_steps=1, progress_bar=False).fit(
        RateScheduled(0.2, schedule), loader(16, 4), resume="auto"
    )
    whole = tmp_path / "b"
    Trainer(output_dir=whole, max_epochs=2, log_every_n_steps=1, progress_bar=False).fit(
        RateScheduled(0.2, schedule), loader(16, 4)
    )
    resumed, expected = rates(first), rates(whole)
    assert [resumed[s] for s in range(5, 9)] == pytest.approx([expected[s] for s in range(5, 9)])


def test_module_rates_change_by_one_ratio_with_frozen_groups_left_out():
    """A diff review: a frozen param group at lr 0 made a uniform change of the others a
    refusal, said as about the optimizer's kind."""
    from stpdist.trainer import _ratio, _settings_refusal

    assert _ratio("0, 0.001", "0, 0.002") == pytest.approx(2.0)
    assert _ratio("0.0001, 0.001", "0.0002, 0.002") == pytest.approx(2.0)
    assert _ratio("0.0001, 0.001", "0.0001, 0.002") is None  # two ratios
    assert _ratio("0, 0.001", "0.001, 0.001") is None  # a frozen group thawed
    said = _settings_refusal(Path("ck"), ["optimizer.lrs 1e-4, 1e-3 (the checkpoint's) → x"],
                             from_config=False)  # fmt: skip
    assert "scales a module's learning rates by one ratio only" in said
    assert "kind and weight decay" not in said
