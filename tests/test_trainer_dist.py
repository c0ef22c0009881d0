"""Multi-process trainer tests: real ranks on CPU over gloo (tests/ranks.py).

Every 2-rank run of this file is one job of a single launch (`two_ranks`:
tests/dist_train.py --jobs, Trainers one after another in the same 2 processes), and the
two 1-process runs of the equivalence test share one process: on 2 busy cores a launch
costs ~15 s of CPU before it trains. Each test reads its own job's output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_ranks
from helpers import TinyModule, TinySequences
from safetensors.torch import load_file

SCRIPT = str(Path(__file__).parent / "dist_train.py")
pytestmark = pytest.mark.multiprocess


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


# name → dist_train.py arguments (--out added); the equivalence runs are (nproc, batch, accum)
EQUIVALENCE = {"a": (1, 8, 1), "b": (2, 4, 1), "c": (1, 4, 2), "d": (2, 2, 2)}
JOBS = {
    **{
        name: ["--batch", str(batch), "--accum", str(accum), "--steps", "10"]
        for name, (_, batch, accum) in EQUIVALENCE.items()
    },
    "skip": ["--steps", "6", "--skip-at", "3", "--accum", "2"],
    "val": ["--validate", "11", "--eval-batch", "3"],
    "metrics": ["--metrics", "13", "--eval-batch", "3"],
}


def launch(folder: Path, names: list[str], nproc: int, timeout: float) -> None:
    """The jobs `names` (JOBS, or "batch-dict") in turn, in one launch of `nproc`
    processes; each writes to folder/<name>."""
    jobs = []
    for name in names:
        (folder / name).mkdir()
        args = ["batch-dict", str(folder / name)]
        jobs.append(args if name == "batch-dict" else ["--out", str(folder / name), *JOBS[name]])
    (folder / "jobs.json").write_text(json.dumps(jobs))
    run_ranks([SCRIPT, "--jobs", str(folder / "jobs.json")], nproc, timeout=timeout)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Every 2-rank job of this file, run in one launch: their parent folder."""
    folder = tmp_path_factory.mktemp("two-ranks")
    two = [n for n, (nproc, _, _) in EQUIVALENCE.items() if nproc == 2]
    launch(folder, [*two, "skip", "val", "metrics", "batch-dict"], 2, timeout=300)
    return folder


def test_equivalence_batch_ranks_and_accumulation(tmp_path, two_ranks):
    """(a) 1×8, (b) 2×4, (c) 1×4 accum 2, (d) 2×2 accum 2: the same parameters after 10 steps
    (2 epochs: 40 samples, 8 per step)."""
    launch(tmp_path, [n for n, (nproc, _, _) in EQUIVALENCE.items() if nproc == 1], 1, 180)
    weights = {}
    for name, (nproc, _, _) in EQUIVALENCE.items():
        out = (two_ranks if nproc == 2 else tmp_path) / name
        assert json.loads((out / "result.json").read_text())["global_step"] == 10
        weights[name] = final_weights(out)
    start = TinyModule().state_dict()
    for key, ref in weights["a"].items():
        assert not torch.allclose(ref, start[key].to(ref.dtype)) or "bias" in key
        for name in "bcd":
            relative = ((weights[name][key] - ref).norm() / ref.norm()).item()
            assert relative < 1e-6, f"run {name} differs from run a at {key}: {relative:.2e}"


def test_validation_is_exact_across_ranks(two_ranks):
    """11 samples, 2 ranks × batch 3: equals the mean over all 11 computed in one process."""
    out = two_ranks / "val"
    results = json.loads((out / "result.json").read_text())
    torch.manual_seed(0)
    module = TinyModule().eval()
    data = TinySequences(11, seed=99)
    with torch.no_grad():
        pred = module(data.inputs)
    expected_mse = torch.nn.functional.mse_loss(pred, data.targets).item()
    expected_mae = (pred - data.targets).abs().mean().item()
    assert results["val/num_samples"] == 11
    assert results["val/loss"] == pytest.approx(expected_mse, rel=1e-6)
    assert results["val/mae"] == pytest.approx(expected_mae, rel=1e-6)

    files = sorted((out / "predictions").glob("*.npz"))
    keys = np.concatenate([np.load(f)["keys"] for f in files])
    preds = np.concatenate([np.load(f)["predictions"] for f in files])
    assert sorted(keys.tolist()) == [f"{i:08d}" for i in range(11)]
    order = np.argsort(keys)
    np.testing.assert_allclose(preds[order], pred.numpy(), rtol=1e-6, atol=1e-7)


def test_skip_on_one_rank_skips_everywhere_without_hang(two_ranks):
    out = two_ranks / "skip"
    assert json.loads((out / "result.json").read_text())["global_step"] == 6
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # both micro-batches of step 4 run with global_step == 3: that whole step is skipped on
    # both ranks, so it logs no loss, and training goes on in lockstep
    assert [x["step"] for x in lines if "train/loss" in x] == [1, 2, 3, 5, 6]


def test_every_metric_exact_across_ranks_with_uneven_sizes(two_ranks):
    """13 samples on 2 ranks × batch 3 (shares 7 and 6, last batches partial) give every
    metric, per lead time and per threshold, equal to one evaluation of all samples."""
    import math

    from dist_train import MetricModule, MetricSequences

    out = two_ranks / "metrics"
    got = json.loads((out / "result.json").read_text())
    data = MetricSequences(13)
    module = MetricModule()
    inputs, targets = data.frames[:, :3], data.frames[:, 3:]
    expected = {
        f"val/{k}": v
        for k, v in module.metrics_from_sums(
            module.validation_step(inputs, targets)["sums"]
        ).items()
    }
    # 12 metrics (7 + OpenSTL's raw MSE/MAE, frame sums and range-2 SSIM) overall and per
    # lead time, 4 skill scores at 2 thresholds
    assert len(expected) == 12 * 3 + 2 * 4 * 3
    for key, value in expected.items():
        if math.isnan(value):
            assert got[key] == "nan" or math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert got["val/num_samples"] == 13


def test_batch_dicts_bring_keys_and_masks_to_every_hook_on_two_ranks(two_ranks):
    seen = [json.loads((two_ranks / "batch-dict" / f"seen-{r}.json").read_text()) for r in (0, 1)]
    # 16 samples / (2 ranks × batch 2) = 4 steps an epoch, 2 epochs: 8 masked steps per rank
    assert [len(s["train"]) for s in seen] == [8, 8]
    # a sample's mask covers 2 or 3 of its 4 columns (16 or 24 of 32 values): batches of 2
    assert all(count in (32, 40, 48) for s in seen for count in s["train"])
    keys = [f"{i:08d}" for i in range(16)]
    validated = seen[0]["val"] + seen[1]["val"]
    # every sample once per pass: 2 epochs' validations and predict's metrics pass
    assert sorted(validated) == sorted(keys * 3)
    assert sorted(seen[0]["predict"] + seen[1]["predict"]) == keys


def test_a_malformed_batch_is_one_line_naming_the_expected_forms():
    from stpdist.data.loading import unpack_batch

    with pytest.raises(TypeError, match=r"needs 'inputs' .*got keys \['labels', 'x'\]"):
        unpack_batch({"x": 1, "labels": 2})
    with pytest.raises(TypeError, match=r"\(inputs, targets\), .*got a tuple of 4 items"):
        unpack_batch((1, 2, 3, 4))
