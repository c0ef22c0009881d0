"""`stpdist reproduce ... --resume auto` (the multi-day GPU job's way on): a reproduce
stopped by SIGTERM says the reproduce command that continues it; that command finishes
the stopped seed and trains the finished one no further; a later call with more
`--seeds` keeps the earlier seeds' results and adds the new seed's."""

from __future__ import annotations

import json
import shlex
import sys

import pytest
from conftest import run_cli, run_ranks
from test_cli import DEBUG, _stop_line, stop_at_step

FAST = ["trainer.max_epochs=1", "logging.num_samples=0"]


def _training_rows(seed_dir):
    """metrics.jsonl's rows but the test split's (each call scores the seed again)."""
    rows = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if not any(key.startswith("test/") for key in row)]


def _checkpoints(seed_dir):
    return sorted(p.name for p in (seed_dir / "checkpoints").iterdir())


def test_stopped_reproduce_resumes_and_extends_to_more_seeds(tmp_path, monkeypatch):
    rep = tmp_path / "rep"
    stop_at_step(monkeypatch, 2, where="seed1")  # seed 0 finishes, seed 1 is stopped
    proc = run_cli(
        "reproduce", DEBUG, *FAST, "--seeds", "2", "--out", "rep", "--keep-global-batch",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 75, proc.stderr[-3000:]
    line = _stop_line(proc.stderr)
    command = (
        f"stpdist reproduce {DEBUG} {' '.join(FAST)} --keep-global-batch --seeds 2 --out rep "
        "--resume auto"
    )
    assert line.endswith(f"; resume with {command}"), line
    assert "saved checkpoint rep/seed1/checkpoints/step-0000000" in line
    assert _checkpoints(rep / "seed0") == ["step-00000008"]  # 8 steps: the seed's end
    assert _checkpoints(rep / "seed1") != ["step-00000008"]
    for seed in ("seed0", "seed1"):  # the flag reached every seed's run
        assert "keep_global_batch: true" in (rep / seed / "config.yaml").read_text()
    finished = _training_rows(rep / "seed0")

    monkeypatch.undo()  # no more stops
    proc = run_cli(*shlex.split(command)[1:], cwd=tmp_path, check=True)
    assert "resumed from rep/seed0/checkpoints/step-00000008" in proc.stdout
    assert "resumed from rep/seed1/checkpoints/step-0000000" in proc.stdout
    assert _training_rows(rep / "seed0") == finished  # trained no more
    assert _checkpoints(rep / "seed0") == ["step-00000008"]
    assert "step-00000008" in _checkpoints(rep / "seed1")  # finished now
    two = json.loads((rep / "reproduce.json").read_text())
    assert len(two["runs"]) == 2

    # a third seed: the two finished ones keep their results, the table covers all three
    proc = run_cli(
        "reproduce", DEBUG, *FAST, "--seeds", "3", "--out", "rep", "--resume", "auto",
        cwd=tmp_path, check=True,
    )  # fmt: skip
    assert f"no checkpoint in {rep.relative_to(tmp_path) / 'seed2' / 'checkpoints'}" in proc.stdout
    three = json.loads((rep / "reproduce.json").read_text())
    assert three["runs"][:2] == two["runs"] and len(three["runs"]) == 3
    assert _checkpoints(rep / "seed2") == ["step-00000008"]
    mse = three["table"]["MSE / pixel"]
    assert mse["values"] == [run["mse"] for run in three["runs"]]
    # which seed each run is, and the checkpoint scored (a reproducibility review could
    # tell them only from each seed's metrics.jsonl)
    assert [entry["seed"] for entry in three["scored"]] == [0, 1, 2]
    assert three["scored"][0]["checkpoint"].endswith("seed0/checkpoints/step-00000008")
    assert "3 seed(s)" in (rep / "reproduce.md").read_text()

    # other settings under --resume auto: refused (a sweeps review: one table averaged
    # seeds trained at two learning rates, its header naming the last call's alone)
    table = (rep / "reproduce.json").read_text()
    proc = run_cli(
        "reproduce", DEBUG, *FAST, "model.optimizer.lr=0.01", "--seeds", "3", "--out", "rep",
        "--resume", "auto", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "this call differs: model.optimizer.lr 0.003 → 0.01. Resume with those settings" in (
        proc.stderr
    )
    assert (rep / "reproduce.json").read_text() == table
    # what leaves the training as it is may differ: the evaluation batch, a default written
    # out (a diff review: both were refused)
    proc = run_cli(
        "reproduce", DEBUG, *FAST, "data.eval_batch_size=2", "model.backbone.variant=stpdist",
        "--seeds", "3", "--out", "rep", "--resume", "auto", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.multiprocess
def test_reproduce_on_two_ranks_writes_and_prints_its_table_once(tmp_path):
    """Every rank holds the scores; the main process alone writes reproduce.json/.md and
    prints the table (the others wrote the same files at the same time, before)."""
    args = ["-m", "stpdist", "reproduce", DEBUG, "--seeds", "1", "--out", "rep", *FAST]
    proc = run_ranks(["--no-python", sys.executable, *args], 2, cwd=tmp_path)
    assert proc.stdout.count("| metric |") == 1, proc.stdout[-2000:]
    assert proc.stdout.count("written: rep/reproduce.json") == 1
    assert json.loads((tmp_path / "rep" / "reproduce.json").read_text())["seeds"] == 1
