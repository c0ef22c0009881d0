"""stpdist used from a notebook: several Trainers, fits and failures in one process. Each
Trainer keeps its own settings, finished ones are freed, a fit after a failed one starts a
clean log, and a batch that cannot train is named."""

from __future__ import annotations

import gc
import json
import os
import weakref
from pathlib import Path

import pytest
import torch
from helpers import TinyModule, TinySequences
from torch.utils.data import DataLoader

import stpdist
from stpdist import Trainer


def test_a_later_trainer_leaves_an_earlier_ones_accumulation_and_precision(tmp_path):
    """Built after B, C reset accelerate's process-wide state: B then trained with
    accumulation 1 (16 optimizer steps instead of 4) and reported precision 'no'."""
    b = Trainer(max_epochs=1, output_dir=tmp_path / "b", progress_bar=False,
                gradient_accumulation_steps=4, mixed_precision="bf16")  # fmt: skip
    c = Trainer(max_epochs=1, output_dir=tmp_path / "c", progress_bar=False)
    state = b.fit(TinyModule(), DataLoader(TinySequences(16), batch_size=1))
    assert state.global_step == 4
    assert (b.accelerator.gradient_accumulation_steps, b.accelerator.mixed_precision) == (4, "bf16")
    assert c.fit(TinyModule(), DataLoader(TinySequences(16), batch_size=1)).global_step == 16
    assert (c.accelerator.gradient_accumulation_steps, c.accelerator.mixed_precision) == (1, "no")


def test_a_finished_trainer_and_its_module_are_freed(tmp_path):
    """An exit hook held every Trainer (and so its module) for the life of the process: a
    notebook's loop over runs kept every model in memory."""
    trainer, module = Trainer(max_steps=2, output_dir=tmp_path, progress_bar=False), TinyModule()
    trainer.fit(module, DataLoader(TinySequences(8), batch_size=4))
    refs = weakref.ref(trainer), weakref.ref(module)
    del trainer, module
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


class Failing(TinyModule):
    def training_step(self, inputs, targets):
        if self.global_step == 3:
            raise RuntimeError("a bug in the module")
        return super().training_step(inputs, targets)


def test_a_fit_after_a_failed_one_starts_a_clean_log(tmp_path):
    """The same Trainer fit again after a failure before its first checkpoint appended the
    new run's rows to the failed one's (steps 1, 2, 3, 1, 2, …)."""
    trainer = Trainer(max_steps=6, output_dir=tmp_path, progress_bar=False, log_every_n_steps=1)
    with pytest.raises(RuntimeError, match="a bug in the module"):
        trainer.fit(Failing(), DataLoader(TinySequences(24), batch_size=4))
    trainer.fit(TinyModule(), DataLoader(TinySequences(24), batch_size=4))
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[:6] == [1, 2, 3, 4, 5, 6] and steps == sorted(steps)
    earlier = (tmp_path / "metrics.earlier-1.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in earlier] == [1, 2, 3]


class InputsOnly(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"inputs": torch.zeros(3, 1, 4, 4)}


def test_training_batches_without_targets_are_named(tmp_path):
    """A dict batch with 'inputs' only reached training_step with targets None: an
    AttributeError inside the loss."""
    trainer = Trainer(max_steps=1, output_dir=tmp_path, progress_bar=False)
    with pytest.raises(TypeError, match="a training batch has no targets"):
        trainer.fit(TinyModule(), DataLoader(InputsOnly(), batch_size=4))


def test_the_package_lists_each_name_once():
    assert stpdist.Trainer is Trainer
    names = dir(stpdist)
    assert len(names) == len(set(names)) and "Trainer" in names


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_freed_unclosed_trainer_leaves_no_process_group_to_the_interpreters_teardown(
    tmp_path, nproc
):
    """Since Trainers are held weakly, one a script never closed could be freed before the
    exit hook that closed it ran; its process group then outlived every hook, and tearing it
    down with the interpreter now and then aborted a finished 2-rank run (exit 134,
    "terminate called without an active exception": 5 errors of one suite run here). One
    rank under a launcher (torchrun --nproc_per_node 1) has a process group too."""
    import subprocess
    import sys

    from conftest import free_port

    script = str(Path(__file__).parent / "dist_unclosed.py")
    ranks = [sys.executable, str(Path(__file__).parent / "ranks.py")]
    proc = subprocess.run(
        [*ranks, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), script,
         str(tmp_path)],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a Trainer after one that was closed joins the ranks again: it failed with "Default
    # process group has not been initialized" at its first collective
    for name in ("closed", "unclosed"):
        expected = f"{name}: 2 steps on {nproc} ranks"
        assert proc.stdout.splitlines().count(expected) == nproc, proc.stdout
    lines = [line for line in proc.stdout.splitlines() if "process group alive" in line]
    assert lines == ["process group alive after stpdist's exit hook: False"] * nproc, proc.stdout
