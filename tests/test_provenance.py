"""A run folder records what reproduces it (a reproducibility review: no commit, torch
version, command line, thread count, or fine-tuning source was recorded, and a resume with
other settings rewrote config.yaml without a word): `provenance.jsonl`, a line a start and
a resume."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path

import torch
from conftest import run_cli

ROOT = Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
checked = functools.partial(run_cli, check=True)


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "provenance.jsonl").read_text().splitlines()]


def test_a_run_records_its_command_versions_data_and_changed_settings(tmp_path, monkeypatch):
    short = ["trainer.max_steps=4", "trainer.max_epochs=1", "logging.num_samples=0"]
    monkeypatch.setenv("STPDIST_TEST_MAP", "cividis")  # a value from the environment
    checked("train", DEBUG, *short, "logging.colormap=${oc.env:STPDIST_TEST_MAP}", cwd=tmp_path)
    run = tmp_path / "runs" / "debug"
    text = (run / "provenance.jsonl").read_text()
    assert "cividis" not in text  # kept as its interpolation, as config.yaml keeps it
    (start,) = _lines(run)
    assert start["config"]["logging"]["colormap"] == "${oc.env:STPDIST_TEST_MAP}"
    assert start["event"] == "start" and start["step"] == 0
    assert start["command"][-len(short) - 1 : -1] == short  # as given
    assert start["torch"] == torch.__version__ and start["threads"] == torch.get_num_threads()
    assert start["world_size"] == 1 and start["config"]["trainer"]["max_steps"] == 4
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    if commit:  # a checkout: the commit read from .git, without running git
        assert start["commit"] == commit
    index = tmp_path / "data" / "debug" / "train" / "index.json"
    if not index.is_file():
        index = next(tmp_path.rglob("train/index.json"))
    assert start["train_data"]["sha256"] == hashlib.sha256(index.read_bytes()).hexdigest()

    # a resume with another setting: said, and recorded beside the config.yaml it rewrote
    done = checked("train", DEBUG, *short[1:], "trainer.max_steps=8", "trainer.grad_clip_norm=0.5",
                   "logging.colormap=${oc.env:STPDIST_TEST_MAP}", "--resume", "auto",
                   cwd=tmp_path)  # fmt: skip
    assert "settings changed since the run's previous start: " in done.stdout
    assert "trainer.grad_clip_norm" in done.stdout and "trainer.max_steps 4 → 8" in done.stdout
    _, resumed = _lines(run)
    assert resumed["event"] == "resume" and resumed["step"] == 4
    assert "trainer.max_steps 4 → 8" in resumed["changed"]

    # a fine-tuning: the weights it started from, by path and SHA-256 (a run folder's best
    # moves on as that run goes on)
    checked("train", DEBUG, *short, f"model.init_weights={run}",
            f"trainer.output_dir={tmp_path / 'tuned'}", cwd=tmp_path)  # fmt: skip
    (tuned,) = _lines(tmp_path / "tuned")
    weights = Path(tuned["init_weights"]["path"])
    assert weights.is_file() and weights.is_relative_to(run)
    assert tuned["init_weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_fine_tuning_that_normalises_otherwise_says_so(tmp_path):
    """A fine-tuning review: weights trained on `scale`d inputs fine-tuned with
    `standardize` (or the other way) trained without a word, where `validate` refuses
    the same change."""
    short = ["trainer.max_steps=2", "trainer.max_epochs=1", "logging.num_samples=0"]
    checked("train", DEBUG, *short, cwd=tmp_path)
    run = tmp_path / "runs" / "debug"
    tuned = checked("train", DEBUG, *short, f"model.init_weights={run}", "data.normalize=standardize",
                    f"trainer.output_dir={tmp_path / 'tuned'}", cwd=tmp_path)  # fmt: skip
    assert "the weights were trained with data.normalize 'scale'" in tuned.stderr, tuned.stderr
    assert "this run normalises its inputs by 'standardize'" in tuned.stderr
    same = checked("train", DEBUG, *short, f"model.init_weights={run}",
                   f"trainer.output_dir={tmp_path / 'same'}", cwd=tmp_path)  # fmt: skip
    assert "data.normalize" not in same.stderr
    # frames of another size: every mismatched tensor counted, and the likely cause named
    bigger = run_cli("train", DEBUG, *short, f"model.init_weights={run}",
                     f"data.root={tmp_path / 'd48'}", f"data.synthesize.root={tmp_path / 'd48'}",
                     "data.synthesize.image_size=48", f"trainer.output_dir={tmp_path / 'big'}",
                     cwd=tmp_path)  # fmt: skip
    assert bigger.returncode == 2
    line = bigger.stderr.strip().splitlines()[-1]
    assert "(and " in line and " more)" in line, line
    assert "the weights were trained on frames C×H×W 1×32×32, this run's are 1×48×48" in line
    # validate --ckpt takes a run folder as init_weights, load and export do: its best
    scored = checked("validate", DEBUG, "--ckpt", str(run),
                     f"trainer.output_dir={tmp_path / 'eval'}", cwd=tmp_path)  # fmt: skip
    assert f"--ckpt {run}: a run folder; its best checkpoint, {run / 'checkpoints'}" in (
        scored.stdout
    )


def test_ranks_a_resume_adds_draw_streams_of_their_own(tmp_path):
    """A review resumed a 2-rank run on 4: ranks 2 and 3 had no RNG state in the checkpoint
    and kept what set_seed(seed) left, drawing alike (the shared masks rank seeds avoid)."""
    from types import SimpleNamespace

    from accelerate.utils import set_seed

    from stpdist.checkpoint import _restore_rng

    checked("train", DEBUG, "trainer.max_steps=2", "trainer.max_epochs=1",
            "logging.num_samples=0", cwd=tmp_path)  # fmt: skip
    ckpt = next((tmp_path / "runs" / "debug" / "checkpoints").glob("step-*"))
    draws = []
    for rank in (2, 3):
        set_seed(0)
        _restore_rng(ckpt, SimpleNamespace(process_index=rank))
        draws.append(torch.rand(4))
    set_seed(0)
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], torch.rand(4))


def test_the_python_api_records_its_settings_and_a_cut_line_is_ended(tmp_path):
    """A diff review: a Trainer of keywords recorded no settings and the program's whole
    command line (a token among its arguments); a line a kill cut short swallowed the next;
    after `cli.main` in a program, a later fit recorded that stpdist command."""
    import sys

    from helpers import TinyModule, loader

    from stpdist import Trainer, provenance

    run_cli("inspect", "nowhere", cwd=tmp_path)  # cli.main, then a program's own fit
    assert provenance.COMMAND is None
    Trainer(output_dir=tmp_path / "api", max_steps=2, seed=3, progress_bar=False).fit(
        TinyModule(), loader(shuffle=False)
    )
    (line,) = _lines(tmp_path / "api")
    assert line["config"]["trainer"]["seed"] == 3 and line["command"] == sys.argv[:1]
    with open(tmp_path / "api" / "provenance.jsonl", "a") as f:
        f.write('{"event": "start", "cut sh')  # a kill mid-line
    Trainer(output_dir=tmp_path / "api", max_steps=4, seed=3, progress_bar=False).fit(
        TinyModule(), loader(shuffle=False), resume="auto"
    )
    lines = (tmp_path / "api" / "provenance.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["event"] == "resume"
    assert "trainer.max_steps 2 → 4" in json.loads(lines[2])["changed"]


def test_the_source_digest_tells_code_that_differs_from_its_commit(tmp_path):
    """A reproducibility review: a checkout with changes not committed recorded the same
    commit as the clean one. The digest of the package's Python files tells them apart,
    whatever the install."""
    import shutil
    import sys

    from stpdist import provenance

    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from stpdist import provenance; "
        "print(provenance.source_sha256())"
    )
    copy = tmp_path / "copy"
    shutil.copytree(
        ROOT / "stpdist", copy / "stpdist", ignore=shutil.ignore_patterns("__pycache__")
    )

    def digest() -> str:
        return subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip

    assert digest() == provenance.source_sha256()  # the same code, elsewhere
    (copy / "stpdist" / "metrics.py").write_text(
        (copy / "stpdist" / "metrics.py").read_text() + "\n# a change not committed\n"
    )
    assert digest() != provenance.source_sha256()
