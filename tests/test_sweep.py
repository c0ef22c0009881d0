"""wandb sweeps over dotted config keys (issue 27): trials with stubbed agent parameters
(`stpdist sweep ... --params JSON`, what the agent's function runs, without a sweep
server) train in their own folders under offline wandb, each logging its parameters and
the sweep's metric; a parameter that is not a config key is refused before anything is
written; the shipped sweep files are valid against the recipes they name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli
from test_cli import DEBUG
from test_cli import stpdist as launch

from stpdist.config import load_config
from stpdist.sweep import check_parameters, read_sweep

pytest.importorskip("wandb")

SWEEP = {
    "method": "grid",
    "metric": {"name": "val/mse", "goal": "minimize"},
    "parameters": {
        "model.optimizer.lr": {"values": [0.003, 0.001]},
        "model.backbone.hidden_channels": {"values": [[8, 8], [4, 4]]},
    },
}


def _fixture(tmp_path: Path, sweep: dict) -> tuple[Path, list[str]]:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    overrides = [
        f"data.root={tmp_path / 'data'}",
        f"data.synthesize.root={tmp_path / 'data'}",
        f"trainer.output_dir={tmp_path / 'runs'}",
        "trainer.max_epochs=1",
        "logging.num_samples=0",
    ]
    return path, overrides


def _run_file(path: Path) -> tuple[dict, dict]:
    """(config, summary) of an offline wandb run file, read with wandb's own protobuf
    `Record` (offline, wandb 0.31 writes neither files/config.yaml nor the summary JSON)."""
    from wandb.proto import wandb_internal_pb2

    from stpdist.tracking import _log_records

    config, summary = {}, {}
    for data in _log_records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind in ("config", "summary"):
            target = config if kind == "config" else summary
            for item in getattr(record, kind).update:
                target[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return config, summary


def test_two_trials_with_stubbed_agent_parameters(tmp_path):
    sweep, overrides = _fixture(tmp_path, SWEEP)
    stubs = [
        {"model.optimizer.lr": 0.003, "model.backbone.hidden_channels": [8, 8]},
        {"model.optimizer.lr": 0.001, "model.backbone.hidden_channels": [4, 4]},
    ]
    for params in stubs:
        args = ("sweep", DEBUG, str(sweep), *overrides, "--params", json.dumps(params))
        run_cli(*args, cwd=tmp_path, check=True)
    trials = sorted((tmp_path / "runs" / "sweep-local").iterdir())
    assert len(trials) == 2  # one folder per trial
    for folder in trials:
        result = json.loads((folder / "sweep.json").read_text())
        params = result["parameters"]
        assert params in stubs
        cfg = load_config(folder / "config.yaml")  # what was trained: the agent's values
        assert cfg.model.optimizer.lr == params["model.optimizer.lr"]
        assert cfg.model.backbone["hidden_channels"] == params["model.backbone.hidden_channels"]
        assert cfg.trainer.output_dir == str(folder)
        assert list((folder / "checkpoints").iterdir())
        # the wandb run is the trial's: its id names the folder and tracker.json
        run_id = folder.name
        assert json.loads((folder / "tracker.json").read_text())["run_id"] == run_id
        (wandb_run,) = (folder / "wandb").glob(f"offline-run-*-{run_id}")
        logged, summary = _run_file(wandb_run / f"run-{run_id}.wandb")
        assert logged["model"]["optimizer"]["lr"] == params["model.optimizer.lr"]
        backbone = logged["model"]["backbone"]
        assert backbone["hidden_channels"] == params["model.backbone.hidden_channels"]
        # the metric: its best logged value, in sweep.json and the run's summary
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        best = min(r["val/mse"] for r in records if "val/mse" in r)
        assert result["run_id"] == run_id
        assert result["metric"] == {"name": "val/mse", "goal": "minimize", "value": best}
        assert summary["val/mse"] == pytest.approx(best)
    lrs = {load_config(t / "config.yaml").model.optimizer.lr for t in trials}
    assert lrs == {0.003, 0.001}  # each stub trained once

    # the trials compared (a sweeps review: there was no way but one's own script)
    (tmp_path / "runs" / "sweep-local" / "broken").mkdir()
    (tmp_path / "runs" / "sweep-local" / "broken" / "sweep.json").write_text("{")
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--summary", cwd=tmp_path, check=True)
    values = {t.name: json.loads((t / "sweep.json").read_text())["metric"]["value"] for t in trials}
    order = sorted(values, key=values.get)  # minimize: the best first
    rows = [
        line for line in proc.stdout.splitlines() if line.startswith("| ") and "sweep" not in line
    ]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == order
    assert f"| {order[0]} | local | {values[order[0]]:.6g} | yes | model.optimizer.lr=" in rows[0]
    assert "unreadable (not listed): " in proc.stdout and "broken/sweep.json" in proc.stdout
    assert proc.stdout.startswith(f"2 trial(s) of val/mse (minimize) under {tmp_path / 'runs'}")


def test_the_run_summary_keeps_the_best_value_when_the_last_is_not_it(tmp_path):
    """wandb holds the newest step's row until its finish, and sending it then overwrote
    the summary's best with the last value (the sweep ranks trials by the summary). Goal
    maximize on a falling val/mse: the best is the first validation's, not the last's."""
    sweep, overrides = _fixture(tmp_path, {**SWEEP, "metric": {"name": "val/mse",
                                                               "goal": "maximize"}})  # fmt: skip
    args = ("sweep", DEBUG, str(sweep), *overrides, "trainer.max_epochs=3", "--params", "{}")
    run_cli(*args, cwd=tmp_path, check=True)
    (folder,) = (tmp_path / "runs" / "sweep-local").iterdir()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    values = [r["val/mse"] for r in records if "val/mse" in r]
    assert len(values) == 3 and max(values) != values[-1], values  # the case under test
    (wandb_run,) = (folder / "wandb").glob(f"offline-run-*-{folder.name}")
    deadline = time.time() + 20  # wandb's service may write the run's last block a moment
    while True:  # after `finish` returns, on a loaded machine
        _, summary = _run_file(wandb_run / f"run-{folder.name}.wandb")  # each key's last
        if "val/mse" in summary or time.time() > deadline:
            break
        time.sleep(0.5)
    assert summary["val/mse"] == pytest.approx(max(values))
    assert json.loads((folder / "sweep.json").read_text())["metric"]["value"] == max(values)


@pytest.mark.parametrize("how", ["params", "sweep"])
def test_bad_parameter_key_refused_before_anything_is_written(tmp_path, how):
    bad = {**SWEEP, "parameters": {**SWEEP["parameters"], "model.optimizer.lrr": {"value": 1}}}
    sweep, overrides = _fixture(tmp_path, bad)
    extra = ["--params", '{"model.optimizer.lr": 0.001}'] if how == "params" else []
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'model.optimizer.lrr'" in lines[0] and str(sweep) in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("flags", [["--count", "3"], ["--agent", "xyz"]])
def test_count_or_agent_beside_params_is_refused(tmp_path, flags):
    """They were ignored: one trial ran, with no agent, and nothing said so."""
    sweep, overrides = _fixture(tmp_path, SWEEP)
    params = ["--params", '{"model.optimizer.lr": 0.001}']
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, *flags, *params, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"stpdist: error: --params runs one trial with the values given, without an agent: "
        f"{flags[0]} would be ignored; drop them, or drop --params"
    ]
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_metric_stops_the_trial_at_its_first_validation(tmp_path):
    """The sweep's metric is checked against the first validation's results: a typo ends
    the trial there, naming it and what there is, not after the whole training. In a
    process of its own: the error is its last words, wandb's run ended at exit without a
    traceback (before, finishing it after wandb's own exit hook printed one)."""
    typo = {**SWEEP, "metric": {"name": "val/msee", "goal": "minimize"}}
    sweep, overrides = _fixture(tmp_path, typo)
    params = {"model.optimizer.lr": 0.003, "model.backbone.hidden_channels": [4, 4]}
    overrides = [*overrides, "trainer.max_epochs=3"]  # 8 steps an epoch, validated each
    proc = subprocess.run(
        [sys.executable, "-m", "stpdist", "sweep", DEBUG, str(sweep), *overrides,
         "--params", json.dumps(params)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("stpdist: error:")]
    assert "the sweep's metric 'val/msee' is not among the validation results (" in line
    assert "val/mse," in line
    (folder,) = (tmp_path / "runs" / "sweep-local").iterdir()
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 8  # stopped at the first epoch's validation


def test_min_above_max_is_refused(tmp_path):
    reversed_ = {**SWEEP, "parameters": {"model.optimizer.lr": {"min": 0.01, "max": 0.001}}}
    sweep, overrides = _fixture(tmp_path, reversed_)
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params", "{}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'model.optimizer.lr': min 0.01 and max 0.001" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_wandb_distributions_are_checked_by_the_values_they_draw():
    """log_uniform's min and max are exponents (e^-9 … e^-5): they were checked as the
    values, and a valid sweep was refused ("-9.0; expected a positive finite number");
    a normal distribution was refused as if it were nested parameters."""
    from stpdist.errors import InputError
    from stpdist.sweep import sample_values

    log_uniform = {"distribution": "log_uniform", "min": -9, "max": -5}
    assert sample_values("s.yaml", "lr", log_uniform) == pytest.approx([1.234e-4, 6.738e-3],
                                                                      rel=1e-3)  # fmt: skip
    inverse = {"distribution": "inv_log_uniform", "min": 5, "max": 9}
    assert sample_values("s.yaml", "lr", inverse) == pytest.approx([1.234e-4, 6.738e-3], rel=1e-3)
    values = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}
    assert sample_values("s.yaml", "lr", values) == [1e-4, 1e-2]
    assert sample_values("s.yaml", "lr", {"distribution": "normal", "mu": 3e-3, "sigma": 1e-3}) == [
        3e-3
    ]
    spec = {"method": "random", "metric": {"name": "val/mse", "goal": "minimize"},
            "parameters": {"model.optimizer.lr": log_uniform}}  # fmt: skip
    check_parameters(DEBUG, spec, "s.yaml", [])  # accepted
    spec["parameters"]["model.optimizer.lr"] = {**log_uniform, "distribution": "uniform"}
    with pytest.raises(InputError, match="'model.optimizer.lr' is -9"):
        check_parameters(DEBUG, spec, "s.yaml", [])


def test_a_metric_named_without_its_split_is_refused_before_training(tmp_path):
    """`metric: {name: mse}` trained the whole trial, then said it was never logged."""
    sweep, overrides = _fixture(tmp_path, {**SWEEP, "metric": {"name": "mse"}})
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params", "{}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"stpdist: error: {sweep}: metric name 'mse': results are logged as <split>/<name> "
        "(val/mse, train/loss): name one of them"
    ]
    assert not (tmp_path / "runs").exists()
    # a split no training scores (a sweeps review: test/mse trained the whole trial first)
    sweep, overrides = _fixture(tmp_path, {**SWEEP, "metric": {"name": "test/mse"}})
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params", "{}", cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "runs").exists()
    assert "a trial logs its training's results, train/… and val/… (val/mse)" in proc.stderr


def test_a_trial_refused_by_the_run_lock_writes_no_record(tmp_path, monkeypatch):
    """A sweeps review: two jobs of one run id at once; the one the run lock refused had
    written its parameters into sweep.json, and the other's score was filed under them."""
    from stpdist import sweep as sweep_module
    from stpdist.runlock import RunLock

    sweep, overrides = _fixture(tmp_path, SWEEP)
    held, found = [], sweep_module.trial_folder

    def raced(*args, **kwargs):  # the other job takes the folder after this one's check
        folder = found(*args, **kwargs)
        held.append(RunLock(folder).acquire())
        return folder

    monkeypatch.setattr(sweep_module, "trial_folder", raced)
    monkeypatch.setenv("WANDB_RUN_ID", "twice")
    params = json.dumps({"model.optimizer.lr": 0.001, "model.backbone.hidden_channels": [4, 4]})
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params", params, cwd=tmp_path)
    held[0].release()
    assert proc.returncode == 75 and "in use by another run" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "runs" / "sweep-local" / "twice" / "sweep.json").exists()


def test_a_sweep_needs_the_server(tmp_path):
    """Offline, `stpdist sweep` without --params says so (wandb has no local sweep)."""
    sweep, overrides = _fixture(tmp_path, SWEEP)
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, cwd=tmp_path)
    assert proc.returncode == 2 and "--params" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=str)
def test_shipped_sweeps_are_valid(path):
    """Each shipped sweep's parameters are keys (and values) of the recipe its command
    trains; the command passes the agent's values as --params."""
    spec = read_sweep(path)
    command = spec["command"]
    at = command.index("sweep")
    config, named = command[at + 1], command[at + 2]
    assert (ROOT / named).resolve() == path.resolve()
    assert command[-2:] == ["--params", "${args_json}"]
    check_parameters(ROOT / config, spec, path, [])


def test_trial_says_its_parameters_and_folder(tmp_path):
    """The line said before the Trainer exists (the trial's values and folder) is printed."""
    sweep, overrides = _fixture(tmp_path, SWEEP)
    params = {"model.optimizer.lr": 0.003, "model.backbone.hidden_channels": [4, 4]}
    args = ("sweep", DEBUG, str(sweep), *overrides, "--params", json.dumps(params))
    out = run_cli(*args, cwd=tmp_path, check=True).stdout
    (folder,) = (tmp_path / "runs" / "sweep-local").iterdir()
    said = (
        f"sweep local trial {folder.name}: model.optimizer.lr=0.003 "
        f"model.backbone.hidden_channels=[4, 4] in {folder}"
    )
    assert said in out.splitlines()
    # and its end, with the best value (a sweeps review: a trial ended without a word)
    assert f"sweep trial {folder.name} finished: best val/mse " in out
    record = json.loads((folder / "sweep.json").read_text())
    assert record["config"] == DEBUG and record["overrides"] == overrides


def test_params_outside_the_sweep_are_said(tmp_path, monkeypatch, caplog):
    """A sweeps review: a value outside the sweep's values, a parameter left out and an
    override the parameters replace each ran silently."""
    from stpdist import sweep as sweep_module

    sweep, overrides = _fixture(tmp_path, SWEEP)
    trials = []
    monkeypatch.setattr(sweep_module, "run_trial", lambda *a, **kw: trials.append(kw))
    params = {"model.optimizer.lr": 0.5}
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "model.optimizer.lr=0.1",
                   "--params", json.dumps(params), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and len(trials) == 1, proc.stderr
    said = proc.stderr
    assert f"--params: model.optimizer.lr 0.5 is not among {sweep}'s values [0.003, 0.001]" in said
    assert "--params: model.backbone.hidden_channels is not given: the config's value" in said
    assert ("--params: model.optimizer.lr is both an override (model.optimizer.lr=0.1) and a "
            "parameter: the parameter's 0.5 trains") in said  # fmt: skip
    ranged = {**SWEEP, "parameters": {"model.optimizer.lr": {
        "distribution": "log_uniform_values", "min": 0.0003, "max": 0.003}}}  # fmt: skip
    sweep, overrides = _fixture(tmp_path, ranged)
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params",
                   json.dumps({"model.optimizer.lr": 5.0}), cwd=tmp_path)  # fmt: skip
    assert "model.optimizer.lr 5.0 is outside" in proc.stderr and "range 0.0003 … 0.003" in (
        proc.stderr
    )
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params",
                   json.dumps({"model.optimizer.lr": 0.001}), cwd=tmp_path)  # fmt: skip
    assert "--params:" not in proc.stderr  # inside: nothing to say
    # `1e-3` in a YAML file is text to PyYAML: the number 0.001 is among its values
    listed = {**SWEEP, "parameters": {"model.optimizer.lr": {"values": ["1e-3", "3e-3"]}}}
    sweep, overrides = _fixture(tmp_path, listed)
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params",
                   json.dumps({"model.optimizer.lr": 1e-3}), cwd=tmp_path)  # fmt: skip
    assert "is not among" not in proc.stderr, proc.stderr


@pytest.mark.multiprocess
def test_trial_on_two_ranks_trains_in_one_folder(tmp_path):
    """On 2 ranks, every rank trains the trial in the folder of one run id (drawn on
    rank 0 and shared), and the trial's line is said once."""
    sweep, overrides = _fixture(tmp_path, SWEEP)
    params = json.dumps({"model.optimizer.lr": 0.001})
    proc = launch("sweep", DEBUG, str(sweep), *overrides, "--params", params, cwd=tmp_path, nproc=2)
    (folder,) = (tmp_path / "runs" / "sweep-local").iterdir()
    said = [line for line in proc.stdout.splitlines() if line.startswith("sweep local trial")]
    assert said == [f"sweep local trial {folder.name}: model.optimizer.lr=0.001 in {folder}"]
    assert "2 process(es)" in proc.stdout
    result = json.loads((folder / "sweep.json").read_text())
    assert result["run_id"] == folder.name and result["metric"]["value"] is not None
    assert json.loads((folder / "tracker.json").read_text())["run_id"] == folder.name
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-00000004"]


def test_a_stopped_trial_resumed_with_train_finishes_as_the_sweep_would(tmp_path, monkeypatch):
    """Continued with `stpdist train <folder>/config.yaml --resume auto` (what its stop
    line says), a trial wrote no sweep.json and its summary was the last value, not the
    best; the continuation now finishes it as the sweep would."""
    from test_cli import stop_at_step

    sweep, overrides = _fixture(tmp_path, SWEEP)
    params = json.dumps({"model.optimizer.lr": 0.003})
    stop_at_step(monkeypatch, 4)
    proc = run_cli("sweep", DEBUG, str(sweep), *overrides, "--params", params, cwd=tmp_path)
    assert proc.returncode == 75, proc.stderr[-2000:]
    (folder,) = (tmp_path / "runs" / "sweep-local").iterdir()
    record = json.loads((folder / "sweep.json").read_text())
    assert (record["finished"], record["metric"]["value"]) == (False, None)
    assert f"stpdist train {folder / 'config.yaml'}" in proc.stderr
    # a process of its own, as a user's continuation is (wandb writes no second offline run
    # file for a run resumed in the process that began it); begun a second after the first
    # run: wandb names an offline run's folder by the second it began, and a continuation
    # begun within the same second (a fork-served process on a fast machine) went into the
    # first one's folder and file, where the summary read below was the first run's
    time.sleep(1.1)
    out = launch("train", str(folder / "config.yaml"), "--resume", "auto", cwd=tmp_path).stdout
    record = json.loads((folder / "sweep.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    best = min(r["val/mse"] for r in records if "val/mse" in r)
    assert record["finished"] and record["metric"]["value"] == best
    assert record["parameters"] == {"model.optimizer.lr": 0.003}
    assert f"sweep trial {folder.name} finished: best val/mse {best}" in out
    newest = sorted((folder / "wandb").glob(f"offline-run-*-{folder.name}"))[-1]
    assert _run_file(newest / f"run-{folder.name}.wandb")[1]["val/mse"] == pytest.approx(best)


def test_a_trial_that_never_logged_its_metric_says_so_when_relaunched(tmp_path):
    """Its record holds `value: null`: the relaunch named "best val/mse None"."""
    from stpdist.errors import InputError
    from stpdist.sweep import TRIAL_FILE, trial_folder

    folder = tmp_path / "sweep-local" / "t1"
    folder.mkdir(parents=True)
    record = {"finished": True, "metric": {"name": "val/mse", "goal": "minimize", "value": None}}
    (folder / TRIAL_FILE).write_text(json.dumps(record))
    with pytest.raises(InputError) as raised:
        trial_folder(tmp_path, "local", "t1")
    assert "trial t1 finished before (val/mse never logged, in sweep.json)" in str(raised.value)


def test_sweep_files_are_checked_as_their_trials_will_run(tmp_path):
    """From a review of the config paths: a parameter listed twice was swept over its last
    values only (YAML's later key won); an integer setting under `uniform` passed its
    integer bounds, and every trial then refused its float draw; values checked one
    parameter at a time passed a grid whose combinations fail (min_lr above lr); and
    `logging.wandb.mode` could be swept, though each server trial runs online."""
    from stpdist.config import ConfigError
    from stpdist.errors import InputError

    metric = {"name": "val/mse", "goal": "minimize"}
    (tmp_path / "dup.yaml").write_text(
        "method: grid\nmetric: {name: val/mse}\nparameters:\n"
        "  model.optimizer.lr: {values: [0.001, 0.002]}\n"
        "  model.optimizer.lr: {values: [0.0005]}\n"
    )
    with pytest.raises(InputError, match=r"dup\.yaml.*duplicate key 'model\.optimizer\.lr'"):
        read_sweep(tmp_path / "dup.yaml")
    (tmp_path / "merged.yaml").write_text(  # YAML's merge keys still read (a review)
        "base: &base {values: [0.001, 0.002]}\nmethod: grid\nmetric: {name: val/mse}\n"
        "parameters:\n  model.optimizer.lr:\n    <<: *base\n"
    )
    assert read_sweep(tmp_path / "merged.yaml")["parameters"]["model.optimizer.lr"] == {
        "values": [0.001, 0.002]
    }

    def refused(parameters: dict, match: str, overrides=()) -> None:
        spec = {"method": "random", "metric": metric, "parameters": parameters}
        with pytest.raises((ConfigError, InputError), match=match):
            check_parameters(DEBUG, spec, "s.yaml", list(overrides))

    refused(
        {"data.batch_size": {"distribution": "uniform", "min": 4, "max": 16}},
        r"sweep parameter 'data.batch_size': .*wandb's uniform draws floats: an integer "
        r"setting takes int_uniform",
    )
    check_parameters(DEBUG, {"method": "random", "metric": metric, "parameters": {
        "data.batch_size": {"distribution": "int_uniform", "min": 4, "max": 16}}}, "s.yaml", [])  # fmt: skip
    refused(
        {"model.optimizer.lr": {"values": [1e-4, 1e-3]}, "model.schedule.min_lr": {"value": 5e-4}},
        r"sweep parameters together \(model\.optimizer\.lr=0\.0001, model\.schedule\.min_lr="
        r"0\.0005\): .*'model\.schedule\.min_lr' is 0\.0005, above 'model\.optimizer\.lr'",
        ["model.schedule.name=cosine"],
    )
    refused({"logging.wandb.mode": {"values": ["online", "offline"]}}, "set by each trial")
