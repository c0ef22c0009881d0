"""Mistakes in a user's own module that used to train on nonsense, train the ranks apart or
fail an epoch late: refused before the first step, or at the step they happen, in one line
naming the hook, parameter or state entry."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_ranks
from helpers import TinyModule, TinySequences, said_warnings
from torch.utils.data import DataLoader

import stpdist.trainer as trainer_module
from stpdist import Trainer

HERE = Path(__file__).parent


def _loader() -> DataLoader:
    return DataLoader(TinySequences(8), batch_size=2)


def _trainer(tmp_path) -> Trainer:
    return Trainer(max_steps=2, output_dir=tmp_path / "run", progress_bar=False)


def test_a_layer_unfrozen_during_fit_on_two_ranks_stops_naming_it(tmp_path):
    """Its gradient would be each rank's own (DDP all-reduces what was trainable at the
    start): the ranks' weights drifted apart, silently, until this check."""
    with pytest.raises(AssertionError) as failed:
        run_ranks([str(HERE / "dist_unfreeze.py"), "unfreeze", str(tmp_path / "run")], 2)
    said = str(failed.value)
    assert "Changing changed which parameters train at step 2 (became trainable: " in said
    assert "'net.4.weight', 'net.4.bias')" in said and "trained" not in said


def test_a_layer_frozen_during_fit_is_named_too():
    module = TinyModule()
    at_start = trainer_module._trainable(module)
    trainer_module._check_trainable_unchanged(module, at_start, 1)  # nothing changed: nothing said
    module.net[1].requires_grad_(False)
    with pytest.raises(
        RuntimeError, match=r"at step 3 \(was frozen: 'net.1.weight', 'net.1.bias'\)"
    ):
        trainer_module._check_trainable_unchanged(module, at_start, 3)


class _Lightning(TinyModule):
    def training_step(self, batch, batch_idx):
        inputs, targets = batch  # at batch size 2: the two input sequences
        return torch.nn.functional.mse_loss(self(inputs), targets)


class _OneArgument(TinyModule):
    def validation_step(self, batch):
        return super().validation_step(*batch)


class _OneArgumentPredict(TinyModule):
    def predict_step(self, inputs, targets, batch_idx):
        return self(inputs)


def test_lightnings_batch_and_batch_idx_hook_is_refused_before_a_step(tmp_path):
    """`(batch, batch_idx)` is called with (inputs, targets): at batch size 2 it unpacked
    the inputs into two "frames" and trained on them without an error."""
    with pytest.raises(TypeError, match=r"_Lightning.training_step\(batch, batch_idx\) takes "
                       r"Lightning's batch_idx; .* training_step\(self, inputs, targets\)"):  # fmt: skip
        _trainer(tmp_path).fit(_Lightning(), _loader())
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_validation_step_of_the_wrong_arity_is_refused_before_training(tmp_path):
    """It failed at the first validation, after an epoch, with Python's own TypeError."""
    with pytest.raises(TypeError, match=r"_OneArgument.validation_step\(batch\) cannot be "
                       r"called as validation_step\(inputs, targets\)"):  # fmt: skip
        _trainer(tmp_path).fit(_OneArgument(), _loader(), _loader())
    assert not (tmp_path / "run" / "checkpoints").exists()
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    with pytest.raises(TypeError, match="cannot be called as validation_step"):
        trainer.validate(_OneArgument(), _loader())


def test_a_predict_step_that_wants_a_batch_index_is_refused_before_writing(tmp_path):
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    with pytest.raises(TypeError, match=r"predict_step\(inputs, targets, batch_idx\) takes "):
        trainer.predict(_OneArgumentPredict(), _loader(), metrics=False, out=tmp_path / "p")
    assert not list(tmp_path.glob("p/*.npz"))


class _ExtraState(TinyModule):
    def get_extra_state(self):
        return {"counter": 3}

    def set_extra_state(self, state):
        pass


def test_a_state_entry_that_is_not_a_tensor_is_refused_before_training(tmp_path):
    """Checkpoints are safetensors: the first save, an epoch later, failed with
    "'dict' object has no attribute 'detach'" and left no checkpoint."""
    with pytest.raises(TypeError, match=r"_ExtraState's state_dict entry '_extra_state' is a "
                       r"dict, not a tensor \(get_extra_state\?\)"):  # fmt: skip
        _trainer(tmp_path).fit(_ExtraState(), _loader())
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_hooks_of_the_contract_and_with_extras_pass(tmp_path):
    """(inputs, targets), (inputs, labels, **extras), (inputs, targets=None): all taken."""

    class Fine(TinyModule):
        def training_step(self, x, labels, mask=None, **extras):
            return super().training_step(x, labels)

        def validation_step(self, inputs, targets=None):
            return super().validation_step(inputs, targets)

    state = _trainer(tmp_path).fit(Fine(), _loader(), _loader())
    assert state.global_step == 2


TASK = """
import torch
from stpdist import EnhancedModule


class Mine(EnhancedModule):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def configure_optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def training_step(self, inputs, targets):
        return (inputs[:, -targets.shape[1]:] * self.scale - targets).square().mean()

    def validation_step(self, inputs, targets):
        return {"loss": self.training_step(inputs, targets)}
"""


def test_forecast_and_export_of_a_task_module_say_what_they_need(tmp_path, monkeypatch):
    """A run of the user's own EnhancedModule (model.name an import path) is no Forecaster:
    `forecast` and `export` ended in "AttributeError: 'Mine' object has no attribute
    'num_input_frames'"; now one line each, exit 2, nothing written."""
    from conftest import run_cli

    (tmp_path / "mytask.py").write_text(TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    debug = (HERE.parent / "configs" / "debug.yaml").read_text()
    config = debug.split("model:")[0] + "model:\n  name: 'mytask:Mine'\n"
    (tmp_path / "mine.yaml").write_text(config.replace("max_epochs: 2", "max_epochs: 1"))
    run_cli("train", "mine.yaml", "logging.num_samples=0", cwd=tmp_path, check=True)
    frames = tmp_path / "frames"
    frames.mkdir()
    np.save(frames / "a.npy", np.zeros((4, 1, 32, 32), np.uint8))
    for command, args in [("forecast", ("frames",)), ("export", ())]:
        proc = run_cli(command, "runs/debug", *args, "--out", "out", "--trust-code", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert (
            f"holds a Mine, a task module of your own, not a Forecaster: `stpdist {command}` "
            "needs a model of the zoo or an import-path backbone"
        ) in proc.stderr
        assert not (tmp_path / "out").exists()


class _FailsOnItsSecondBatch(TinyModule):
    def predict_step(self, inputs, targets):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise RuntimeError("a bad batch")
        return self(inputs)


def _keyed(num: int) -> DataLoader:
    sequences = TinySequences(num)
    items = [(sequences[i][0], sequences[i][1], f"s{i}") for i in range(num)]
    return DataLoader(items, batch_size=2)


def test_a_predict_that_fails_leaves_the_earlier_predictions(tmp_path):
    """Trainer.predict deleted the earlier predictions before its pass: one that failed
    left none. They are replaced only once the new ones are all written."""
    from stpdist.trainer import load_predictions

    out = tmp_path / "predictions"
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    trainer.predict(TinyModule(), _keyed(6), out=out, metrics=False)
    earlier = load_predictions(out)
    assert sorted(earlier) == ["s0", "s1", "s2", "s3", "s4", "s5"]
    with pytest.raises(RuntimeError, match="a bad batch"):
        trainer.predict(_FailsOnItsSecondBatch(), _keyed(6), out=out, metrics=False)
    kept = load_predictions(out)
    assert kept.keys() == earlier.keys()
    assert all(np.array_equal(kept[k], earlier[k]) for k in kept)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"predictions-r000-{i:06d}.npz" for i in range(3)
    )  # nothing half-written left beside them
    trainer.predict(TinyModule(), _keyed(2), out=out, metrics=False)  # a success replaces all
    assert sorted(load_predictions(out)) == ["s0", "s1"]


def test_a_predict_stopped_while_it_replaces_the_predictions_loses_neither(
    tmp_path, monkeypatch, caplog
):
    """A Ctrl-C while Trainer.predict moved its new files over the earlier ones: it had
    deleted the earlier ones first, and the next predict deleted the new ones (its
    `.predicting` folder), so a failing one left no prediction at all. The complete pass
    is now renamed `.predicted` (on disk first), and a reader or the next predict finishes
    the swap: the new predictions, whole."""
    import os

    from stpdist.trainer import iter_predictions, load_predictions

    out = tmp_path / "predictions"
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    trainer.predict(TinyModule(), _keyed(6), out=out, metrics=False)
    real, moved = os.replace, []

    def stopped(src, dst, *args, **kwargs):
        if Path(src).parent.name == ".predicted":
            moved.append(src)
            if len(moved) == 2:
                raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)

    torch.manual_seed(5)
    module = TinyModule()
    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        trainer.predict(module, _keyed(6), out=out, metrics=False)
    monkeypatch.setattr(os, "replace", real)
    assert (out / ".predicted").is_dir()
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        new = load_predictions(out)  # the reader finishes it
    assert "finished replacing the predictions" in caplog.text
    assert not (out / ".predicted").exists() and sorted(new) == [f"s{i}" for i in range(6)]
    assert dict(iter_predictions(out)).keys() == new.keys()
    trainer.predict(module, _keyed(6), out=tmp_path / "again", metrics=False)
    again = load_predictions(tmp_path / "again")  # the stopped pass's, whole
    assert all(np.array_equal(again[k], new[k]) for k in new)
    with pytest.raises(RuntimeError, match="a bad batch"):  # and a failing predict after
        trainer.predict(_FailsOnItsSecondBatch(), _keyed(6), out=out, metrics=False)
    kept = load_predictions(out)
    assert all(np.array_equal(kept[k], new[k]) for k in new)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"predictions-r000-{i:06d}.npz" for i in range(3)
    )  # no lock file, nothing else left


def test_a_reader_waits_for_a_live_swap_and_an_emptied_one_is_removed(tmp_path):
    """A diff review: a reader took a live predict's `.predicted` for a stopped swap and
    broke it (the writer then failed on a file the reader had moved), and a swap stopped
    while removing `.predicted` (its list gone) stopped every later predict and reader."""
    import threading

    from stpdist.trainer import _swap_in_predictions, _swap_lock, load_predictions

    out = tmp_path / "predictions"
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    trainer.predict(TinyModule(), _keyed(4), out=out, metrics=False)
    earlier = load_predictions(out)
    ready = out / ".predicted"  # a live predict's complete pass, about to be swapped in
    ready.mkdir()
    (ready / ".names.json").write_text('["predictions-r000-000000.npz"]')
    shutil.copy(out / "predictions-r000-000001.npz", ready / "predictions-r000-000000.npz")
    read: list = []
    with said_warnings() as said:
        with _swap_lock(out):
            reader = threading.Thread(target=lambda: read.append(load_predictions(out)))
            reader.start()
            reader.join(1.0)
            assert reader.is_alive() and (ready / ".names.json").is_file()  # it waits
            # and says so
            assert said == [f"{out}: another process is reading or replacing its predictions; "
                            "waiting for it"], said  # fmt: skip
            _swap_in_predictions(out, ready)  # the live predict's own swap
        reader.join(30)
    assert not any("finished replacing" in line for line in said), said  # the predict did
    assert read and sorted(read[0]) == ["s2", "s3"]  # the new predictions, whole
    assert np.array_equal(read[0]["s2"], earlier["s2"])
    ready.mkdir()  # stopped while removing it: its list gone, every file moved
    assert sorted(load_predictions(out)) == ["s2", "s3"] and not ready.exists()


def test_a_predict_and_a_reader_waiting_for_each_other_say_so(tmp_path):
    """A reader holding the predictions (`load_predictions` of a large pass) made the next
    predict wait at its swap without a word, and a predict's swap the readers: each says
    once what it waits for."""
    import fcntl
    import threading

    from stpdist.trainer import _swap_lock, load_predictions

    out = tmp_path / "predictions"
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    trainer.predict(TinyModule(), _keyed(4), out=out, metrics=False)
    for held, waiter, said in [
        (fcntl.LOCK_SH, lambda: trainer.predict(TinyModule(), _keyed(4), out=out,
                                                metrics=False),
         "another process is reading or replacing its predictions; waiting for it"),
        (fcntl.LOCK_EX, lambda: load_predictions(out),
         "its predictions are being replaced (a predict swapping its pass in); waiting"),
    ]:  # fmt: skip
        fd = os.open(out, os.O_RDONLY)
        with said_warnings() as lines:
            try:
                fcntl.flock(fd, held)  # another process' lock (flock: per open file)
                thread = threading.Thread(target=waiter)
                thread.start()
                deadline = time.monotonic() + 60
                while not any(said in line for line in lines) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert any(said in line for line in lines) and thread.is_alive(), lines
            finally:
                os.close(fd)  # released: the waiter goes on
            thread.join(60)
        assert not thread.is_alive()
        assert sum("waiting" in line for line in lines) == 1, lines  # once
    with said_warnings() as lines, _swap_lock(out, shared=True):
        assert sorted(load_predictions(out)) == ["s0", "s1", "s2", "s3"]  # readers alike
    assert lines == []  # no wait, nothing said


def test_a_missing_validation_shard_is_named_before_the_first_step(tmp_path):
    """The train shards were checked before step 1, the validation ones at the first
    validation: an epoch of training (and each resume's) lost to a missing file."""
    from conftest import run_cli

    from stpdist.data.synthetic import write_moving_digits

    write_moving_digits(tmp_path / "data", {"train": 8, "val": 4}, num_frames=8, image_size=32,
                        progress=False)  # fmt: skip
    (shard,) = (tmp_path / "data" / "val").glob("*.tar")
    shard.unlink()
    debug = HERE.parent / "configs" / "debug.yaml"
    proc = run_cli("train", str(debug), f"data.root={tmp_path / 'data'}", "data.synthesize=null",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and f"{shard}: no such file" in proc.stderr
    assert not (tmp_path / "runs" / "debug" / "checkpoints").exists()


def test_resuming_a_finished_run_says_it_trains_nothing_and_keeps_its_config(tmp_path):
    """It printed the banner and "resumed from", exited 0 and rewrote the run's config.yaml
    with the new (smaller) plan, which no longer matched its weights."""
    from conftest import run_cli

    debug = str(HERE.parent / "configs" / "debug.yaml")
    quick = ["logging.num_samples=0", "trainer.max_epochs=1"]
    run_cli("train", debug, *quick, cwd=tmp_path, check=True)
    written = (tmp_path / "runs" / "debug" / "config.yaml").read_text()
    again = run_cli("train", debug, *quick, "trainer.log_every_n_steps=3", "--resume", "auto",
                    cwd=tmp_path, check=True)  # fmt: skip
    assert (
        "nothing to train: the checkpoint stands at step 8 (epoch 1), at or past this run's "
        "end at step 8 (max_epochs 1); raise trainer.max_epochs or trainer.max_steps to "
        "train on"
    ) in again.stdout + again.stderr
    assert (tmp_path / "runs" / "debug" / "config.yaml").read_text() == written


def test_the_closing_line_names_the_step_of_a_validation_that_is_not_the_last_steps(tmp_path):
    """Resumed onto data without a validation split, a run trained from step 8 to 16 and
    printed step 8's validation as "final validation"."""
    from conftest import run_cli

    from stpdist.data.synthetic import write_moving_digits

    debug = str(HERE.parent / "configs" / "debug.yaml")
    quick = ["logging.num_samples=0", "data.synthesize=null"]
    write_moving_digits(tmp_path / "data", {"train": 32, "val": 8}, num_frames=8, image_size=32,
                        progress=False)  # fmt: skip
    first = run_cli("train", debug, *quick, f"data.root={tmp_path / 'data'}",
                    "trainer.max_epochs=1", cwd=tmp_path, check=True)  # fmt: skip
    assert "final validation MSE per pixel" in first.stdout
    shutil.rmtree(tmp_path / "data" / "val")
    again = run_cli("train", debug, *quick, f"data.root={tmp_path / 'data'}", "--resume",
                    "auto", cwd=tmp_path, check=True)  # fmt: skip
    assert "validation at step 8 MSE per pixel" in again.stdout, again.stdout
    assert "final validation" not in again.stdout


class _PerSampleLoss(TinyModule):
    def validation_step(self, inputs, targets):
        return {"loss": (self(inputs) - targets).square().mean(dim=(1, 2, 3, 4))}


def test_a_validation_loss_per_sample_in_a_dict_is_refused_as_the_tensor_form_is(tmp_path):
    """As a tensor it was refused; inside a dict only warned about and dropped: val/loss,
    what best-k checkpoints are ranked by, silently missing."""
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    with pytest.raises(TypeError, match=r"validation_step returned a 'loss' of shape \(2,\)"):
        trainer.validate(_PerSampleLoss(), _loader())


def test_a_layer_left_out_of_a_later_steps_loss_on_two_ranks_is_named(tmp_path):
    """The first step's check passes; DDP then failed the next step with its long message
    naming parameter indices (and an environment variable to learn their names)."""
    with pytest.raises(AssertionError) as failed:
        run_ranks([str(HERE / "dist_unfreeze.py"), "sometimes", str(tmp_path / "run")], 2)
    said = str(failed.value)
    assert (
        "Changing.training_step at step 2: parameter(s) 'net.4.weight', 'net.4.bias' took no "
        "part in the loss on rank"
    ) in said, said[-3000:]


def test_a_data_root_without_its_train_split_is_told_to_add_that_split(tmp_path):
    """A root holding val and test splits (another recipe's, or `shard … --splits
    val=1000,test=-1`) for a recipe that reads a train split: the advice was to convert a
    validation split, which it held already."""
    from conftest import run_cli

    from stpdist.data.synthetic import write_moving_digits

    write_moving_digits(tmp_path / "data", {"val": 4, "test": 4}, num_frames=8, image_size=32,
                        progress=False)  # fmt: skip
    debug = str(HERE.parent / "configs" / "debug.yaml")
    root = tmp_path / "data"
    proc = run_cli("train", debug, f"data.root={root}", f"data.synthesize.root={root}",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "convert a train split into it as well" in proc.stderr, proc.stderr
    assert "data.train_source: moving_digits" in proc.stderr


def test_predict_on_a_filesystem_without_flock_swaps_without_the_lock(tmp_path, monkeypatch):
    """A diff review: on a filesystem without flock (NFS without lockd: ENOLCK) the swap's
    lock failed after the whole pass, and the pass was lost. As the checkpoints' read
    leases do, the swap goes on without a lock there."""
    import errno
    import fcntl
    import os
    import stat

    from stpdist.trainer import load_predictions

    real = fcntl.flock

    def no_locks_on_folders(fd, operation):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_locks_on_folders)
    out = tmp_path / "predictions"
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    trainer.predict(TinyModule(), _keyed(4), out=out, metrics=False)
    assert sorted(load_predictions(out)) == ["s0", "s1", "s2", "s3"]


def test_a_walk_of_predictions_replaced_meanwhile_stops_saying_so(tmp_path):
    """A diff review: `iter_predictions` went on in the files of a pass swapped in while it
    walked (s0, s1 of one pass, s2, s3 of the other), silently. It stops, saying why."""
    import torch

    from stpdist.trainer import iter_predictions

    out = tmp_path / "predictions"
    trainer = Trainer(output_dir=tmp_path / "eval", progress_bar=False)
    trainer.predict(TinyModule(), _keyed(4), out=out, metrics=False)
    walk = iter_predictions(out)
    assert next(walk)[0] == "s0"
    torch.manual_seed(9)
    trainer.predict(TinyModule(), _keyed(4), out=out, metrics=False)
    with pytest.raises(RuntimeError, match="predictions were replaced while they were read"):
        list(walk)
    assert [key for key, _ in iter_predictions(out)] == ["s0", "s1", "s2", "s3"]
