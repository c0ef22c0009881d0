"""The benchmarks and the GPU check: `stpdist bench data` (interleaved rounds, medians,
each loader's own memory, a whole-batch in-RAM ceiling), `stpdist bench model` wiring and
its recompile count, and `launch/gpu_check.sh --dry` end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PYTHON_C

from stpdist import bench
from stpdist.gpu_check import HostReads, bf16_peak_tflops

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------ bench data
def test_rounds_rotate_so_no_loader_always_runs_first_and_medians_are_per_loader():
    order = []
    rates = iter([10, 20, 30, 40, 21, 31, 41, 11, 32, 42, 12, 22])

    def run(kind, workers, round_):
        order.append((kind, workers, round_))
        return {
            "samples_per_s": next(rates),
            "mb_per_s": 1.0,
            "process_mb": float(round_),
            "workers_mb": float(workers),
            "memory_method": "high-water mark",
            "samples": 48,
        }

    results = bench.interleaved_rounds(run, ["shards", "npz"], (0, 2), rounds=3)
    assert order == [
        ("shards", 0, 0), ("shards", 2, 0), ("npz", 0, 0), ("npz", 2, 0),
        ("shards", 2, 1), ("npz", 0, 1), ("npz", 2, 1), ("shards", 0, 1),
        ("npz", 0, 2), ("npz", 2, 2), ("shards", 0, 2), ("shards", 2, 2),
    ]  # fmt: skip
    rows = {(r["loader"], r["workers"]): r for r in bench.summarize_rounds(results)}
    shards0 = rows[("shards", 0)]
    assert shards0["samples_per_s_runs"] == [10, 11, 12]
    assert (shards0["samples_per_s"], shards0["samples_per_s_min"]) == (11, 10)
    assert shards0["samples_per_s_max"] == 12
    assert rows[("npz", 2)]["samples_per_s"] == 41  # median of 40, 41, 42
    assert shards0["process_mb"] == 2.0  # the largest of its rounds, not the last
    assert rows[("npz", 2)]["workers_mb"] == 2.0


def test_in_ram_ceiling_gathers_each_batch_with_one_index_of_the_preloaded_array():
    frames = torch.arange(10 * 3 * 1 * 2 * 2, dtype=torch.uint8).reshape(10, 3, 1, 2, 2)
    stored = bench._InRamBatches(frames, batch=4, seed=5, floats=False, scale=255.0)
    assert len(stored) == 2  # the remainder of 2 is dropped, as the shard stream does
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(stored[1], frames[order[4:8]])
    seen = torch.cat([stored[0], stored[1]])
    assert len({tuple(s.flatten().tolist()) for s in seen}) == 8  # no sample twice
    inputs, targets = bench._InRamBatches(frames, 4, 5, floats=True, scale=255.0)[0]
    torch.testing.assert_close(inputs, frames[order[:4], :1].float() / 255)
    torch.testing.assert_close(targets, frames[order[:4], 1:].float() / 255)


def test_memory_watch_reports_what_was_added_in_the_process_and_in_workers():
    # In a fresh interpreter, as the bench's probes are: in this pytest worker, memory
    # freed by earlier tests (a garbage collection inside the watch, pages the allocator
    # kept) can offset the 64 MB and make the reading depend on test order.
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_WATCH_CHECK],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 3:
        pytest.skip("no /proc/self/status here")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, second, workers = json.loads(proc.stdout.splitlines()[-1])
    assert 60 <= first <= 80, first
    # a new watch starts from the memory held then: the 64 MB peak before is not its own
    assert 14 <= second <= 30, second
    assert workers >= 30, workers  # the worker's 32 MB, counted for it


_MEMORY_WATCH_CHECK = """
import json, sys, time
import torch
from stpdist import bench

class Hog(torch.utils.data.Dataset):
    # a worker that holds 32 MB of its own while it serves 3 items
    def __len__(self):
        return 3
    def __getitem__(self, i):
        if i == 0:
            Hog.held = torch.ones(32 * 2**20 // 4)
        time.sleep(0.3)  # a few of the watch's 50 ms samples
        return torch.tensor(i)

def added(megabytes):
    baseline = bench._status_kb("self", "VmRSS")
    if baseline is None:
        sys.exit(3)
    with bench.MemoryWatch(baseline, workers=False) as watch:
        held = torch.ones(megabytes * 2**20 // 4)  # written
        time.sleep(0.05)
    del held
    return watch.result()["process_mb"]

first, second = added(64), added(16)
loader = torch.utils.data.DataLoader(Hog(), batch_size=None, num_workers=1)
with bench.MemoryWatch(bench._status_kb("self", "VmRSS"), workers=True) as watch:
    assert [int(x) for x in loader] == [0, 1, 2]
print(json.dumps([first, second, watch.result()["workers_mb"]]))
"""


def test_bench_data_rounds_table_and_each_loaders_own_memory(tmp_path, capsys):
    from stpdist.data.synthetic import write_moving_digits

    write_moving_digits(tmp_path / "ds", {"train": 128}, num_frames=10, progress=False)
    array_mb = 128 * 10 * 64 * 64 / 2**20  # 5 MB of uint8 frames
    result = bench.bench_data(tmp_path / "ds", workers=(0,), rounds=2)
    out = capsys.readouterr().out
    assert "2 interleaved round(s)" in out and "median (min–max)" in out
    assert "shards / per-file npz" in out and "plain tar" in out
    assert "OMP_WAIT_POLICY=" in out and "load average" in out
    rows = {r["loader"]: r for r in result["rows"]}
    assert set(rows) == {"shards", "npz", "ram"}
    for row in rows.values():
        assert row["rounds"] == 2 and len(row["samples_per_s_runs"]) == 2
        assert row["samples"] == 128
        assert row["samples_per_s_min"] <= row["samples_per_s"] <= row["samples_per_s_max"]
    # each loader's memory is its own: the in-RAM array's preload shows in its figures
    # only (the shard stream's own is mostly its shuffle buffer, 256 raw samples). RSS
    # growth can fall short of the 5 MB by memory the allocator already held (freed before
    # the baseline): 4.4 to 6.3 MB measured for the same code as the process' imports
    # differ; the others' stay under 1 MB
    assert rows["ram"]["process_mb"] >= 0.75 * array_mb
    assert result["setup_mb"]["ram"] >= 0.75 * array_mb
    assert result["setup_mb"]["shards"] < 0.2 * array_mb
    assert result["setup_mb"]["npz"] < 0.2 * array_mb
    assert result["threads"]["torch_threads"] >= 1


def test_bench_data_cli_passes_batch_worker_counts_and_rounds(monkeypatch):
    import stpdist.bench
    from stpdist.cli import main

    calls = []
    monkeypatch.setattr(stpdist.bench, "bench_data", lambda *a, **k: calls.append((a, k)))
    assert main(["bench", "data", "ds", "--loader-workers", "0,2", "--rounds", "4"]) == 0
    assert calls == [(("ds",), {"batch": 16, "workers": (0, 2), "rounds": 4})]
    assert main(["bench", "data", "ds", "--batch-size", "4"]) == 0
    assert calls[1] == (("ds",), {"batch": 4, "workers": (0, 2), "rounds": 3})


# ----------------------------------------------------------------------- bench model
def test_compile_watch_counts_recompiles_and_sees_the_limit():
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0  # an int attribute: compiled as a constant, guarded

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.step

    module = Scaled()
    compiled = torch.compile(module, backend="eager")
    x = torch.ones(2)
    compiled(x)
    with torch._dynamo.config.patch(recompile_limit=3), bench.CompileWatch() as watch:
        for step in range(1, 6):
            module.step = step
            compiled(x)
        compiles, limit_hit = watch.count()
    assert (compiles, limit_hit) == (3, True)  # steps 1, 2 recompiled; step 3 hit the limit
    with bench.CompileWatch() as watch:
        compiled(x)  # cache hit (or eager after the limit): nothing compiled
    assert watch.count() == (0, False)


def test_bench_model_cli_takes_the_recipe_with_its_scheduled_sampling(monkeypatch):
    import stpdist.bench
    from stpdist.cli import main

    calls = []
    monkeypatch.setattr(stpdist.bench, "bench_model", lambda *a, **k: calls.append((a, k)))
    recipe = str(ROOT / "configs" / "mmnist" / "convlstm.yaml")
    assert main(["bench", "model", "--config", recipe, "--compile", "--rounds", "2"]) == 0
    (name, shape, t_out, patch, backbone), kwargs = calls[0]
    assert (name, shape, t_out, patch) == ("convlstm", (16, 10, 1, 64, 64), 10, 4)
    assert backbone["hidden_channels"] == [128, 128, 128, 128]
    model = kwargs["model_config"]
    assert (model.sampling.mode, model.sampling.decay, model.loss_frames) == ("linear", 2e-5, "all")
    assert kwargs["compile_"] and kwargs["rounds"] == 2 and kwargs["compile_target"] == "trainer"
    argv = ["bench", "model", "--config", recipe, "--shape", "2x3x1x16x16", "--sampling", "none"]
    assert main([*argv, "--backbone", '{"hidden_channels": [4]}', "--patch", "2"]) == 0
    (_, shape, _, patch, backbone), kwargs = calls[1]
    assert shape == (2, 3, 1, 16, 16) and patch == 2 and backbone["hidden_channels"] == [4]
    assert backbone["kernel_size"] == 5  # the recipe's, under the flag's
    assert kwargs["model_config"].sampling.mode == "none"
    assert main(["bench", "model", "predrnn", "--config", recipe]) == 2  # another backbone


# ------------------------------------------------------------------------- gpu check
def test_bf16_peaks_by_device_name():
    assert bf16_peak_tflops("NVIDIA H200") == 989
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756
    assert bf16_peak_tflops("NVIDIA H100 NVL") == 835
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert bf16_peak_tflops("Tesla V100-SXM2-32GB") is None


def test_host_reads_are_counted_per_step_without_the_optimizers_own():
    class Stepped:
        global_step = 0

    module, value = Stepped(), torch.tensor(2.0)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.ones(3)
    with HostReads(module, torch.device("cpu")) as reads:
        module.global_step = 1
        value.item()
        module.global_step = 2
        float(value), value.tolist(), bool(value > 1)
        optimizer.step()  # Adam reads its host step counter: not a read of the step
        value + 1  # no read
    assert dict(reads.by_step) == {1: 1, 2: 3}
    assert all("test_bench.py" in site for site in reads.where)


def test_gpu_check_dry_runs_every_section_and_claims_no_measurement(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [str(ROOT / "launch" / "gpu_check.sh"), "--dry", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DRY RUN on CPU" in proc.stdout and "section" in proc.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["dry"] is True and data["meta"]["bf16_peak_tflops"] is None
    rows = {(r["section"], r["item"]): r for r in data["rows"]}
    assert {r["status"] for r in data["rows"]} <= {"dry", "passed", "skipped"}
    assert set(rows) == {
        ("tests", "pytest -m gpu"),
        ("host syncs", "host reads / step"),
        ("host syncs", "CUDA syncs / step"),
        ("trainer", "Trainer vs raw loop"),
        ("fp16", "GradScaler, forced overflow"),
        ("fp16", "Trainer fp16, forced overflow"),
        ("ops", "convlstm"),
        ("graphs", "convlstm batch 2"),
        ("backbones", "convlstm fp32"),
        ("backbones", "simvp fp32"),
        ("compile", "convlstm (eager)"),
    }
    # what cannot run on a CPU says so
    for key in [("host syncs", "CUDA syncs / step"), ("fp16", "Trainer fp16, forced overflow")]:
        assert rows[key]["status"] == "skipped" and "CUDA" in rows[key]["result"]
    tests = rows[("tests", "pytest -m gpu")]
    assert tests["values"]["counts"].get("skipped", 0) >= 1
    assert not tests["values"]["counts"].get("failed")
    # the checks themselves
    scaler = rows[("fp16", "GradScaler, forced overflow")]["values"]
    assert scaler["applied"] == [1, 1, 2, 3] and scaler["changed"] == [True, False, True, True]
    assert scaler["scales"][1] == scaler["scales"][0] / 2 == scaler["scales"][2]
    assert rows[("host syncs", "host reads / step")]["values"]["per_step"] == 0
    # the launch-bound step: fused regions cut the ops; the emulated graph trains as eager
    ops = rows[("ops", "convlstm")]["values"]
    assert ops["on"]["launching"] < ops["off"]["launching"]
    assert "on_bf16" not in ops  # bf16 is the GPU plan's (a CPU's autocast is no GPU's)
    graphs = rows[("graphs", "convlstm batch 2")]["values"]
    assert graphs["max_relative_param_diff"] == 0 and graphs["steps"] == 7
    # eager fp32 (the baseline), graphs in fp32 and bf16, and bf16 with cudnn.benchmark and
    # with channels-last weights
    variants = (
        "graphs",
        "graphs_bf16",
        "graphs_bf16_cudnn_benchmark",
        "graphs_bf16_channels_last",
    )
    assert all(graphs[f"speedup_{v}"] > 0 for v in variants)
    assert graphs["train_flops_per_sample"] > 0
    assert graphs["train_tflops_per_s_eager"] == pytest.approx(
        graphs["samples_per_s_eager"] * graphs["train_flops_per_sample"] / 1e12
    )
    assert "steady" in rows[("trainer", "Trainer vs raw loop")]["values"]
    compiled = rows[("compile", "convlstm (eager)")]["values"]
    assert compiled["sampling"] == "linear" and compiled["recompiles_per_100_steps"] == 0
    convlstm = rows[("backbones", "convlstm fp32")]["values"]
    # OpenSTL's V100 figure stands beside GPU rows only: a CPU dry run's shapes are toys
    assert convlstm["openstl_v100_fps"] is None and convlstm["sampling"] == "linear"
    assert convlstm["train_flops_per_step"] > 0 and convlstm["samples_per_s"] > 0
    assert convlstm["peak_mb"] is None and convlstm["percent_of_bf16_peak"] is None
    assert rows[("trainer", "Trainer vs raw loop")]["values"]["ratio"] > 0
    assert np.isfinite(rows[("backbones", "simvp fp32")]["values"]["inference_fps"])


def test_a_graph_variant_that_fails_is_its_rows_error_and_the_others_are_measured(tmp_path):
    """One failing variant (here bf16 with cudnn.benchmark) must not cost the section the
    other variants' figures: on a GPU session's few minutes, a lost section is lost."""
    from stpdist import gpu_check
    from stpdist.gpu_steps import graph_rows

    plan = gpu_check.Plan.for_device(dry=True, budget_s=60)

    def make_trainer(out, **options):
        if options.get("cudnn_benchmark"):
            raise RuntimeError("capture failed\nsecond line")
        return gpu_check._bench_trainer(
            plan, out, options["max_steps"], options["precision"], options["cuda_graphs"]
        )

    [row] = graph_rows(plan, gpu_check.recipe_model, make_trainer, gpu_check.Row, lambda: 60.0)
    assert row.status == "error"
    assert row.values["errors"] == {"graphs_bf16_cudnn_benchmark": "RuntimeError: capture failed"}
    assert {"samples_per_s_eager", "samples_per_s_graphs", "samples_per_s_graphs_bf16"} <= set(
        row.values
    )
    assert row.values["max_relative_param_diff"] == 0
    assert "+ cudnn.benchmark: RuntimeError: capture failed" in row.result


def test_bench_checkpointing_measures_both_twins():
    """`bench model --activation-checkpointing`: the same weights with and without, both
    timed and measured (the memory difference itself needs recipe sizes: see README)."""
    from stpdist.bench import bench_checkpointing
    from stpdist.config import ModelConfig

    config = ModelConfig(name="predrnn", backbone={"hidden_channels": [4, 4], "kernel_size": 3})
    config.patch_size = 1
    result = bench_checkpointing(config, (2, 3, 1, 8, 8), 3, steps=1, rounds=1)
    assert set(result["step_ms"]) == set(result["peak_mb"]) == {"checkpointed", "plain"}
    assert all(ms > 0 for ms in result["step_ms"].values())
    assert result["time_ratio"] > 0 and result["memory"] == "peak RSS growth"
    with pytest.raises(ValueError, match="frame-recurrent"):
        bench_checkpointing(ModelConfig(name="simvp"), (2, 3, 1, 8, 8), 3, steps=1, rounds=1)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--output-frames", "0"], "argument --output-frames: '0': expected a positive integer"),
        (["--patch", "-1"], "argument --patch: '-1': expected a positive integer"),
        (["--model-steps", "0"], "argument --model-steps: '0': expected a positive integer"),
        (["--backbone", '{"hidden_chanels": [4]}'], "'model.backbone.hidden_chanels'"),
        (["--translator", "gsta"], "'model.backbone.translator'"),
        (["--shape", "1x2x1x15x15"], "frames of 15×15 do not divide into patches of 4 (--patch)"),
    ],
)
def test_bench_model_refuses_bad_flags_naming_them(flags, named):
    """Before, --output-frames 0 and --patch 0 silently ran the defaults and the others
    ended in a Python error of the model code (exit 1)."""
    from stpdist.cli import main

    proc = subprocess.run(
        [sys.executable, PYTHON_C, "import sys; from stpdist.cli import main; sys.exit(main())",
         "bench", "model", "convlstm", "--rounds", "1", *flags],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert main(["bench", "model", "nomodel"]) == 2


def test_bench_data_refuses_a_dataset_smaller_than_a_batch_per_worker(tmp_path, capsys):
    from stpdist.cli import main
    from stpdist.data.synthetic import write_moving_digits

    write_moving_digits(tmp_path / "ds", {"train": 8}, num_frames=4, progress=False)
    assert main(["bench", "data", str(tmp_path / "ds"), "--loader-workers", "0,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"stpdist: error: {tmp_path / 'ds' / 'train'}: 8 samples are too few to time batches "
        "of 16 with 2 loader worker(s): at least 32 are needed (--batch-size, --loader-workers)"
    ]


def test_gpu_check_runs_only_the_sections_and_models_asked_for(tmp_path):
    """`--only` and `--models`: a GPU session with little device time left measures what an
    earlier run's budget skipped, and nothing else; a misspelt section or model is refused
    before anything runs (exit 2, naming it)."""
    from stpdist.gpu_check import main

    out = tmp_path / "some.json"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["--dry", "--out", str(out), "--only", "ops,backbones", "--models", "simvp"])
    assert code == 0
    rows = [(r["section"], r["item"]) for r in json.loads(out.read_text())["rows"]]
    assert rows == [("backbones", "simvp fp32")]  # simvp is not recurrent: no ops row
    for flags, named in [
        (["--only", "ops,graph"], "expected a comma-separated list of tests, syncs"),
        (["--models", "convlstm,mua"], "--models: mua not in this check"),
    ]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            main(["--dry", "--out", str(tmp_path / "x.json"), *flags])
        assert exit_.value.code == 2 and named in err.getvalue(), err.getvalue()
        assert not (tmp_path / "x.json").exists()


def test_gpu_check_refuses_a_budget_that_lets_nothing_run(capsys):
    """`--budget-s 0` (or -5) skipped every row and exited 0: a run that checked nothing."""
    from stpdist import gpu_check

    for budget in ("0", "-5", "nan"):
        with pytest.raises(SystemExit) as exited:
            gpu_check.main(["--dry", "--budget-s", budget])
        assert exited.value.code == 2
        assert "expected a positive number of seconds" in capsys.readouterr().err


def test_gpu_check_rows_say_when_the_fused_kernels_fell_back(tmp_path, monkeypatch, capsys):
    """A compile failure of the fused gate arithmetic turned it off for the rest of the
    process with one log line: every later row measured unfused steps and the table did not
    say so. Each row also prints its result as it ends (a run cut off keeps them)."""
    from stpdist import gpu_check
    from stpdist.models import fused

    report = gpu_check.Report(gpu_check.Plan.for_device(True, 10.0), tmp_path / "c.json")
    report.add(gpu_check.Row("ops", "convlstm", "dry", "1 000 ops"))
    monkeypatch.setattr(fused, "_BROKEN", ["convlstm_gates"])
    report.add(gpu_check.Row("graphs", "convlstm batch 2", "dry", "1.5×"))
    assert "gpu_check: graphs / convlstm batch 2: dry: 1.5×" in capsys.readouterr().err
    assert "fused_fallback_after" not in report.rows[0].values
    assert report.rows[1].values["fused_fallback_after"] == ["convlstm_gates"]
    report.meta["elapsed_s"] = 1.0
    assert report.table().splitlines()[-1] == (
        "note: the fused kernels failed to compile (convlstm_gates); the rows from "
        "'graphs / convlstm batch 2' on ran steps with the op-by-op gate arithmetic"
    )
