"""A review of the reported metrics against references written here (numpy, scipy,
scikit-image), at the edges a paper's numbers meet: all-zero and constant frames, values
outside [0, 1], a batch of 1, frames too small for SSIM's window, thresholds that every
pixel or no pixel reaches (the 0/0 scores), and the real Forecaster's validation sums
evaluated by the Trainer on 2 ranks with uneven shares (7 samples: 4 + 3, last batch of 1;
1 sample: one rank empty), compared with every score recomputed from the predictions.

Run as a script (`python tests/ranks.py … tests/test_metrics_review.py OUT`), this file is
the ranks' program of that last test. Frames B×T×C×H×W."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stpdist.metrics import batch_sums, summarize, summarize_neighbourhood

skimage_metrics = pytest.importorskip("skimage.metrics")
ndimage = pytest.importorskip("scipy.ndimage")

SCALE = 255.0  # stored units per 1.0 of scaled data, as for 8-bit radar
THRESHOLDS = [0.0, 100.0, 200.0, 300.0]  # stored units: every pixel … no pixel reaches 300
POOL, FSS = 4, 3
T_IN, T_OUT, H, W = 3, 2, 10, 12  # 10×12: 4×4 blocks leave partial ones at two edges
LATITUDES = np.linspace(-67.5, 67.5, H)


def _ratio(num, den):
    """num / den, NaN where den is 0 (the `stpdist` convention)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _image_reference(pred: np.ndarray, target: np.ndarray, raw: np.ndarray | None = None):
    """Per lead time (T) values, frame by frame with numpy and scikit-image; PSNR and SSIM
    of the predictions clipped to [0, 1] (images), as OpenSTL scores them."""
    raw = pred if raw is None else raw
    b, t = pred.shape[:2]
    ref: dict[str, np.ndarray] = {}
    for name, p in (("", pred), ("_raw", raw)):
        err = p.astype(np.float64) - target
        ref[f"mse{name}"] = (err**2).mean(axis=(0, 2, 3, 4))
        ref[f"mae{name}"] = np.abs(err).mean(axis=(0, 2, 3, 4))
        ref[f"mse_frame{name}"] = (err**2).sum(axis=(2, 3, 4)).mean(axis=0)
        ref[f"mae_frame{name}"] = np.abs(err).sum(axis=(2, 3, 4)).mean(axis=0)
    ref["psnr"], ref["ssim"], ref["ssim_openstl"] = np.zeros(t), np.zeros(t), np.zeros(t)
    for i in range(b):
        for j in range(t):
            p = np.clip(pred[i, j].astype(np.float64), 0, 1)
            q = target[i, j].astype(np.float64)
            with np.errstate(divide="ignore"):  # an exact match: inf, reported as 100 dB
                psnr = skimage_metrics.peak_signal_noise_ratio(q, p, data_range=1.0)
            ref["psnr"][j] += min(psnr, 100.0) / b
            if min(p.shape[-2:]) >= 7:
                for key, data_range in (("ssim", 1.0), ("ssim_openstl", 2.0)):
                    per_channel = [
                        skimage_metrics.structural_similarity(
                            q[c], p[c], win_size=7, data_range=data_range
                        )
                        for c in range(p.shape[0])
                    ]
                    ref[key][j] += np.mean(per_channel) / b
    if min(pred.shape[-2:]) < 7:
        del ref["ssim"], ref["ssim_openstl"]
    return ref


def _assert_matches(got: dict, ref_per_lead: dict, prefix: str = "", rel: float = 1e-9):
    for name, values in ref_per_lead.items():
        for t, value in enumerate(values):
            assert got[f"{prefix}{name}/t{t + 1:02d}"] == pytest.approx(value, rel=rel), name
        assert got[f"{prefix}{name}"] == pytest.approx(np.mean(values), rel=rel), name


def _edge_case(case: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    shape = (2, 3, 1, 8, 9)
    if case == "all zero":
        return np.zeros(shape), np.zeros(shape)
    if case == "constant frames":
        return np.full(shape, 0.25), np.full(shape, 0.75)
    if case == "constant against texture":
        return np.full(shape, 0.5), rng.random(shape)
    if case == "outside [0, 1]":
        target = rng.random(shape)
        return target * 3 - 1, target + rng.normal(0, 0.3, shape)
    if case == "batch of 1, 3 channels, 7×7":
        target = rng.random((1, 2, 3, 7, 7))
        return np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1), target
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "all zero",
        "constant frames",
        "constant against texture",
        "outside [0, 1]",
        "batch of 1, 3 channels, 7×7",
    ],
)
def test_image_scores_match_numpy_and_skimage_at_the_edges(case):
    pred, target = _edge_case(case)
    raw = pred + 0.5  # the `*_raw` errors score these instead
    got = summarize(
        batch_sums(
            torch.from_numpy(pred), torch.from_numpy(target), raw_pred_BTCHW=torch.from_numpy(raw)
        ),
        frame_pixels=int(np.prod(pred.shape[2:])),
    )
    ref = _image_reference(pred, target, raw)
    _assert_matches(got, ref)
    assert got["rmse"] == pytest.approx(math.sqrt(ref["mse"].mean()), rel=1e-12)
    if case == "all zero":
        assert got["psnr"] == 100.0 and got["ssim"] == 1.0 and got["mse_frame"] == 0.0


def test_frames_smaller_than_ssims_window_are_scored_without_ssim():
    """A 6×9 frame fits no 7×7 window: SSIM is left out (scikit-image refuses it too), the
    other scores stay, and the Forecaster's validation completes instead of raising after
    a whole epoch of training."""
    rng = np.random.default_rng(1)
    target = rng.random((2, 2, 1, 6, 9))
    pred = np.clip(target + rng.normal(0, 0.2, target.shape), 0, 1)
    with pytest.raises(ValueError):  # the reference's own refusal
        skimage_metrics.structural_similarity(target[0, 0, 0], pred[0, 0, 0], data_range=1.0)
    got = summarize(batch_sums(torch.from_numpy(pred), torch.from_numpy(target)), 54)
    assert not any(key.startswith("ssim") for key in got)
    _assert_matches(got, _image_reference(pred, target))

    from stpdist.config import ModelConfig
    from stpdist.task import Forecaster

    config = ModelConfig(name="convlstm", backbone={"hidden_channels": [2], "kernel_size": 3})
    module = Forecaster(config, (1, 6, 6), 2, 2).eval()
    frames = torch.rand(3, 4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = module.validation_step(frames[:, :2], frames[:, 2:])
    scores = module.metrics_from_sums(out["sums"])
    expected = _image_reference(out["predictions"].double().numpy(), frames[:, 2:].double().numpy())
    _assert_matches(scores, {k: expected[k] for k in ("mse", "mae", "psnr")}, rel=1e-6)
    assert "ssim" not in scores


# ------------------------------------------------------------- contingency-table scores
def _skill_reference(pred: np.ndarray, stored_target: np.ndarray, thresholds: list[float]):
    """CSI/POD/FAR/HSS per threshold, per lead time (K×T) and pooled over lead times (K),
    events from the stored integers (target ≥ X) and from pred × scale ≥ X."""
    out = {}
    for level in thresholds:
        p = pred.astype(np.float64) * SCALE >= level
        o = stored_target >= level
        axes = (0, 2, 3, 4)
        h, m = (p & o).sum(axis=axes), (~p & o).sum(axis=axes)
        f, cn = (p & ~o).sum(axis=axes), (~p & ~o).sum(axis=axes)
        for suffix, (hh, mm, ff, cc) in (
            ("lead", (h, m, f, cn)),
            ("all", (h.sum(), m.sum(), f.sum(), cn.sum())),
        ):
            hss_den = (hh + mm) * (mm + cc) + (hh + ff) * (ff + cc)
            out[suffix, level] = {
                "csi": _ratio(hh, hh + mm + ff),
                "pod": _ratio(hh, hh + mm),
                "far": _ratio(ff, hh + ff),
                "hss": _ratio(2 * (hh * cc - mm * ff), hss_den),
            }
    return out


def _same(got: float, expected: float, key: str, rel: float = 1e-9) -> None:
    if math.isnan(expected):
        assert got == "nan" or math.isnan(got), f"{key}: {got}, expected NaN"
    else:
        assert got == pytest.approx(expected, rel=rel, abs=1e-12), key


def test_skill_scores_on_stored_integers_with_thresholds_every_or_no_pixel_reaches():
    """Events at 0 (every pixel: CSI 1, FAR 0, HSS 0/0 → NaN), 100 and 200 (stored values
    exactly at them count), 300 (no pixel: all four NaN, left out of CSI-M and counted)."""
    rng = np.random.default_rng(3)
    stored_target = rng.integers(0, 256, (3, 2, 1, 8, 8))
    stored_target[0, 0, 0, 0, :4] = [100, 200, 99, 199]  # at and just below the thresholds
    target = torch.from_numpy(stored_target.astype(np.float32) / np.float32(SCALE))
    pred = torch.from_numpy(
        np.clip(stored_target + rng.normal(0, 40, stored_target.shape), 0, 255) / SCALE
    )
    scaled = [x / SCALE for x in THRESHOLDS]
    sums = batch_sums(pred, target, scaled)
    got = summarize(sums, 64, THRESHOLDS)
    got.update(summarize_neighbourhood(sums, THRESHOLDS))
    ref = _skill_reference(pred.numpy(), stored_target, THRESHOLDS)
    for level in THRESHOLDS:
        for score in ("csi", "pod", "far", "hss"):
            key = f"{score}@{level:g}"
            _same(got[key], float(ref["all", level][score]), key)
            for t in range(2):
                _same(got[f"{key}/t{t + 1:02d}"], float(ref["lead", level][score][t]), key)
    assert got["csi@0"] == 1.0 and got["far@0"] == 0.0 and math.isnan(got["hss@0"])
    assert all(math.isnan(got[f"{s}@300"]) for s in ("csi", "pod", "far", "hss"))
    defined = [float(ref["all", x]["csi"]) for x in THRESHOLDS[:3]]
    assert got["csi_m"] == pytest.approx(np.mean(defined), rel=1e-12)
    assert got["csi_m_undefined"] == 1.0


def test_each_score_is_undefined_exactly_where_its_denominator_is_empty():
    """The module docstring's list: POD NaN with no observed event (events forecast), FAR
    NaN with none forecast (events observed), HSS NaN when both fields are events
    everywhere; every other score of those cases defined, with the value of its formula."""
    none = torch.zeros(1, 1, 1, 8, 8, dtype=torch.float64)
    some = none.clone()
    some[..., :2, :] = 1.0  # 16 events
    every = torch.ones_like(none)
    for pred, target, undefined in (
        (some, none, {"pod"}),
        (none, some, {"far"}),
        (every, every, {"hss"}),
    ):
        got = summarize(batch_sums(pred, target, [0.5]), 64, [0.5])
        p, o = pred.numpy() >= 0.5, target.numpy() >= 0.5
        h, m, f, cn = ((p & o).sum(), (~p & o).sum(), (p & ~o).sum(), (~p & ~o).sum())
        expected = {
            "csi": _ratio(h, h + m + f),
            "pod": _ratio(h, h + m),
            "far": _ratio(f, h + f),
            "hss": _ratio(2 * (h * cn - m * f), (h + m) * (m + cn) + (h + f) * (f + cn)),
        }
        assert {k for k, v in expected.items() if np.isnan(v)} == undefined
        for score, value in expected.items():
            _same(got[f"{score}@0.5"], float(value), score)


# ------------------------------------------------------------- 2 ranks, the real Forecaster
def _stored_sequences(num: int) -> np.ndarray:
    """num × (T_IN + T_OUT) × 1 × H × W stored 8-bit values, with an all-zero and a
    constant sequence among them."""
    frames = np.random.default_rng(11).integers(0, 256, (max(num, 3), T_IN + T_OUT, 1, H, W))
    frames[1] = 0
    frames[2] = 150
    return frames[:num].astype(np.uint8)


class _Radar(torch.utils.data.Dataset):
    def __init__(self, num: int) -> None:
        self.frames = torch.from_numpy(_stored_sequences(num)).float() / SCALE

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        return self.frames[i, :T_IN], self.frames[i, T_IN:]


def _geo():
    from stpdist.metrics import GeoInfo

    climatology = np.random.default_rng(2).random((1, H, W))
    return GeoInfo(["vil"], H, W, latitudes=LATITUDES.tolist(), climatology=climatology)


def _forecaster():
    from stpdist.config import EvaluationConfig, ModelConfig
    from stpdist.task import Forecaster

    torch.manual_seed(0)
    evaluation = EvaluationConfig(
        metric_thresholds=THRESHOLDS, csi_pool_sizes=[POOL], fss_sizes=[FSS]
    )
    config = ModelConfig(
        name="convlstm",
        backbone={"hidden_channels": [4], "kernel_size": 3},
        evaluation=evaluation,
    )
    module = Forecaster(config, (1, H, W), T_IN, T_OUT, value_scale=SCALE, geo=_geo())
    with torch.no_grad():  # outputs across [0, 1] and beyond: events, and clamping at both ends
        module.backbone.output.weight.mul_(8.0)
        module.backbone.output.bias.fill_(1.1)
    return module


def _rank_program(out: Path) -> None:
    from torch.utils.data import DataLoader

    from stpdist import Trainer
    from stpdist.console import plain

    trainer = Trainer(max_epochs=1, output_dir=str(out / "run"), progress_bar=False)
    module = _forecaster()
    for num in (7, 1):
        data = DataLoader(_Radar(num), batch_size=2)
        results = trainer.predict(module, data, out=out / f"n{num}", split="test")
        if trainer.is_main:
            (out / f"n{num}" / "results.json").write_text(
                json.dumps({k: plain(v) for k, v in results.items()})
            )
    if trainer.is_main:
        torch.save(module.state_dict(), out / "weights.pt")


def _neighbourhood_reference(pred, stored_target, level):
    """Pooled CSI counts (K=1) per lead time with partial edge blocks kept, and FSS sums."""
    p = pred.astype(np.float64) * SCALE >= level
    o = stored_target >= level
    b, t = p.shape[:2]
    counts = np.zeros((3, t))
    fss = np.zeros((2, t))
    for i in range(b):
        for j in range(t):
            for c in range(p.shape[2]):
                pe, oe = p[i, j, c], o[i, j, c]
                for y in range(0, H, POOL):
                    for x in range(0, W, POOL):
                        pp, oo = (
                            pe[y : y + POOL, x : x + POOL].any(),
                            oe[y : y + POOL, x : x + POOL].any(),
                        )
                        counts[:, j] += [pp and oo, oo and not pp, pp and not oo]
                fp = ndimage.uniform_filter(pe.astype(np.float64), FSS, mode="constant")
                fo = ndimage.uniform_filter(oe.astype(np.float64), FSS, mode="constant")
                fss[:, j] += [((fp - fo) ** 2).sum(), (fp**2 + fo**2).sum()]
    return counts, fss


def _geo_reference(pred, target, inputs):
    w = np.cos(np.deg2rad(LATITUDES))
    w = (w / w.mean())[None, None, None, :, None]
    clim = _geo().climatology[None, None]
    n_pix = pred.shape[0] * H * W
    ref = {}
    for name, forecast in (
        ("", pred),
        ("persistence_", np.broadcast_to(inputs[:, -1:], target.shape)),
        ("climatology_", np.broadcast_to(clim, target.shape)),
    ):
        sq = (forecast - target) ** 2
        ref[f"{name}rmse/vil"] = np.sqrt(sq.sum(axis=(0, 2, 3, 4)) / n_pix) * SCALE
        ref[f"{name}wrmse/vil"] = np.sqrt((w * sq).sum(axis=(0, 2, 3, 4)) / n_pix) * SCALE
    ref["mae/vil"] = np.abs(pred - target).sum(axis=(0, 2, 3, 4)) / n_pix * SCALE
    fa, oa = pred - clim, target - clim
    num = (w * fa * oa).sum(axis=(2, 3, 4))
    den = np.sqrt((w * fa * fa).sum(axis=(2, 3, 4)) * (w * oa * oa).sum(axis=(2, 3, 4)))
    acc = _ratio(num, den)  # B×T, NaN where undefined: left out
    ref["acc/vil"] = np.nanmean(acc, axis=0)
    overall = {k: np.sqrt(np.mean(v**2)) if "rmse" in k else None for k, v in ref.items()}
    overall["mae/vil"] = ref["mae/vil"].mean()
    overall["acc/vil"] = np.nanmean(acc)
    return ref, overall


@pytest.mark.multiprocess
def test_forecaster_scores_on_two_uneven_ranks_equal_a_recomputation(tmp_path):
    from conftest import run_ranks

    run_ranks([__file__, str(tmp_path)], 2, timeout=300)
    module = _forecaster()
    module.load_state_dict(torch.load(tmp_path / "weights.pt"))
    module.eval()
    for num in (7, 1):
        got = json.loads((tmp_path / f"n{num}" / "results.json").read_text())
        assert got["test/num_samples"] == num
        files = sorted((tmp_path / f"n{num}").glob("predictions-r*.npz"))
        keys = np.concatenate([np.load(f)["keys"] for f in files])
        assert sorted(keys.tolist()) == [f"{i:08d}" for i in range(num)]  # each once
        pred = np.concatenate([np.load(f)["predictions"] for f in files])[np.argsort(keys)]
        stored = _stored_sequences(num)
        frames = stored.astype(np.float32) / np.float32(SCALE)
        inputs, target = frames[:, :T_IN].astype(np.float64), frames[:, T_IN:].astype(np.float64)
        with torch.no_grad():
            raw = module(torch.from_numpy(frames[:, :T_IN]), clamp=False).predictions
        raw = raw.double().numpy()
        np.testing.assert_allclose(pred, np.clip(raw, 0, 1), rtol=1e-5, atol=1e-6)
        assert (raw > 1).any() and (raw < 1).any()  # the clamp and the events both matter

        ref = _image_reference(pred, target, raw)
        raw_keys = {k for k in ref if k.endswith("_raw")}
        _assert_matches(got, {k: v for k, v in ref.items() if k not in raw_keys}, "test/", 1e-9)
        _assert_matches(got, {k: ref[k] for k in raw_keys}, "test/", 1e-5)  # recomputed raw
        persistence = ((np.broadcast_to(inputs[:, -1:], target.shape) - target) ** 2).mean(
            axis=(0, 2, 3, 4)
        )
        # differences taken in float32 (the persistence error, the losses): 1e-6
        _assert_matches(got, {"persistence_mse": persistence}, "test/", 1e-6)
        assert got["test/copy_last_mse"] == pytest.approx(persistence.mean(), rel=1e-6)
        assert got["test/loss"] == pytest.approx(ref["mse"].mean(), rel=1e-6)
        assert got["test/rmse"] == pytest.approx(math.sqrt(ref["mse"].mean()), rel=1e-9)

        skill = _skill_reference(pred, stored[:, T_IN:], THRESHOLDS)
        csi_lead, csi_all, pooled_lead, pooled_all = [], [], [], []
        for level in THRESHOLDS:
            x = f"{level:g}"
            for score in ("csi", "pod", "far", "hss"):
                _same(got[f"test/{score}@{x}"], float(skill["all", level][score]), f"{score}@{x}")
                for t in range(T_OUT):
                    value = float(skill["lead", level][score][t])
                    _same(got[f"test/{score}@{x}/t{t + 1:02d}"], value, f"{score}@{x}/t{t + 1}")
            csi_lead.append(skill["lead", level]["csi"])
            csi_all.append(float(skill["all", level]["csi"]))
            (h, m, f), (diff, ref_sq) = _neighbourhood_reference(pred, stored[:, T_IN:], level)
            pooled_lead.append(_ratio(h, h + m + f))
            pooled_all.append(float(_ratio(h.sum(), (h + m + f).sum())))
            _same(got[f"test/csi_pool{POOL}@{x}"], pooled_all[-1], f"pool@{x}")
            _same(
                got[f"test/fss{FSS}@{x}"], float(1 - _ratio(diff.sum(), ref_sq.sum())), f"fss@{x}"
            )
            for t in range(T_OUT):
                _same(got[f"test/csi_pool{POOL}@{x}/t{t + 1:02d}"], float(pooled_lead[-1][t]), x)
                _same(
                    got[f"test/fss{FSS}@{x}/t{t + 1:02d}"], float(1 - _ratio(diff[t], ref_sq[t])), x
                )
        for name, lead, overall in (
            ("csi_m", csi_lead, csi_all),
            (f"csi_m_pool{POOL}", pooled_lead, pooled_all),
        ):
            with np.errstate(all="ignore"):
                _same(got[f"test/{name}"], float(np.nanmean(overall)), name)
                assert got[f"test/{name}_undefined"] == float(np.isnan(overall).sum())
                for t in range(T_OUT):
                    _same(
                        got[f"test/{name}/t{t + 1:02d}"],
                        float(np.nanmean([v[t] for v in lead])),
                        name,
                    )
        assert math.isnan(float(got["test/csi@300"]))  # no pixel reaches 300: NaN, reported "nan"

        geo_lead, geo_overall = _geo_reference(pred, target, inputs)
        for key, values in geo_lead.items():
            _same(got[f"test/{key}"], float(geo_overall[key]), key)
            for t in range(T_OUT):
                _same(got[f"test/{key}/t{t + 1:02d}"], float(values[t]), key)


if __name__ == "__main__":
    _rank_program(Path(sys.argv[1]))


def test_a_run_on_frames_smaller_than_ssims_window_trains_validates_and_says_so(tmp_path):
    """The CLI end to end on 6×6 frames: before, the first validation raised and ended the
    run after its first checkpoint; now it validates without SSIM, after one line at start
    saying why."""
    from conftest import run_cli

    (tmp_path / "cfg.yaml").write_text(
        "trainer: {output_dir: run, max_steps: 2, progress_bar: false}\n"
        "data: {root: small, batch_size: 4, num_input_frames: 2, num_output_frames: 2,\n"
        "       synthesize: {root: small, train: 8, val: 4, test: 4, num_frames: 4,\n"
        "                    image_size: 6, digit_size: 3}}\n"
        "logging: {num_samples: 0}\n"
        "model: {name: convlstm, backbone: {hidden_channels: [2], kernel_size: 3}}\n"
    )
    proc = run_cli("train", "cfg.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "frames of 6×6 are smaller than SSIM's 7×7 window: SSIM is not reported" in (
        proc.stdout + proc.stderr
    )
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    validated = [row for row in rows if "val/psnr" in row]
    assert validated and not any(key.startswith("val/ssim") for row in rows for key in row)


def test_thresholds_whose_results_would_share_a_name_are_refused():
    """`{level:g}` names the results: 20 and 20.0000001 both wrote `csi@20`, one over the
    other, while CSI-M averaged both."""
    from stpdist.config import ConfigError, load_config

    root = Path(__file__).parent.parent
    with pytest.raises(ConfigError, match=r"'model.evaluation.metric_thresholds'.*20 repeats"):
        load_config(root / "configs" / "debug.yaml",
                    ["model.evaluation.metric_thresholds=[20,20.0000001,30]"])  # fmt: skip
    cfg = load_config(
        root / "configs" / "debug.yaml", ["model.evaluation.metric_thresholds=[20,30]"]
    )
    assert cfg.model.evaluation.metric_thresholds == [20, 30]


def test_maps_whose_latitudes_ascend_are_drawn_north_up():
    """WeatherBench 1's files store latitude ascending (south first, kept in index.json):
    their sample panels were drawn upside down."""
    from types import SimpleNamespace

    from stpdist.visualize import north_up

    frames = np.arange(2 * 1 * 3 * 2, dtype=np.float32).reshape(2, 1, 3, 2)  # T×C×H×W
    samples = [("k", frames, frames + 1, None)]
    south_first = SimpleNamespace(geo=SimpleNamespace(latitudes=[-60.0, 0.0, 60.0]))
    ((key, inputs, truth, pred),) = north_up(south_first, samples)
    assert key == "k" and pred is None
    np.testing.assert_array_equal(inputs, frames[:, :, ::-1])
    np.testing.assert_array_equal(truth, frames[:, :, ::-1] + 1)
    north_first = SimpleNamespace(geo=SimpleNamespace(latitudes=[60.0, 0.0, -60.0]))
    assert north_up(north_first, samples)[0][1] is frames  # as it is
    assert north_up(SimpleNamespace(), samples)[0][1] is frames  # no map


def test_thresholds_count_events_in_the_channel_named_or_say_they_pool_them():
    """A radar user's review: CSI/POD/FAR/HSS pooled every channel's pixels without a word
    (40 dBZ beside a VIL of 5 scored csi@30 1.0 with channel 1 all wrong):
    `model.evaluation.threshold_channel` names the channel (or `all`); unset with several
    channels, the counts are pooled and one warning says so."""
    from helpers import said_warnings

    from stpdist.build import build_module
    from stpdist.config import ConfigError, load_config
    from stpdist.metrics import event_sums

    root = Path(__file__).parent.parent

    def module(*overrides: str):
        cfg = load_config(root / "configs" / "debug.yaml",
                          ["model.evaluation.metric_thresholds=[0.5]", *overrides])  # fmt: skip
        return build_module(cfg, frame_shape=(2, 16, 16))

    torch.manual_seed(0)
    inputs, targets = torch.rand(2, 4, 2, 16, 16), torch.rand(2, 4, 2, 16, 16)
    with said_warnings() as said:
        for chosen, channels in (("1", slice(1, 2)), ("all", slice(None)), (None, slice(None))):
            forecaster = module(
                *([f"model.evaluation.threshold_channel={chosen}"] if chosen else [])
            )
            for _ in range(2):
                out = forecaster.validation_step(inputs, targets)
            expected = event_sums(
                out["predictions"][:, :, channels], targets[:, :, channels], [0.5]
            )
            for name, value in expected.items():
                torch.testing.assert_close(out["sums"][name], value, rtol=0, atol=0)
    pooled = [line for line in said if "counted over the 2 channels" in line]
    assert len(pooled) == 1, said  # once, for the module that left it unset
    with pytest.raises(
        ConfigError, match=r"threshold_channel 'tp': expected a channel index, 0 to 1"
    ):
        module("model.evaluation.threshold_channel=tp")
    with pytest.raises(ConfigError, match=r"threshold_channel '2'"):
        module("model.evaluation.threshold_channel=2")


def test_thresholded_scores_have_persistence_beside_them():
    """A radar user's review: nowcasting papers compare CSI with persistence (the last input
    frame held), which only had an MSE: `persistence_csi@<thr>`, POD, FAR and HSS, per
    lead time and overall, equal numpy's contingency counts of
    the last input frame (in the channel scored), and the lead-time plot draws them as the
    model's baseline, not as panels of their own."""
    from stpdist.build import build_module
    from stpdist.config import load_config
    from stpdist.visualize import lead_time_series

    root = Path(__file__).parent.parent
    cfg = load_config(
        root / "configs" / "debug.yaml",
        ["model.evaluation.metric_thresholds=[0.3,0.7]", "model.evaluation.threshold_channel=1"],
    )
    forecaster = build_module(cfg, frame_shape=(2, 8, 8))
    torch.manual_seed(1)
    inputs, targets = torch.rand(3, 4, 2, 8, 8), torch.rand(3, 4, 2, 8, 8)
    results = forecaster.metrics_from_sums(forecaster.validation_step(inputs, targets)["sums"])
    last = np.broadcast_to(inputs[:, -1:, 1].numpy(), targets[:, :, 1].shape)
    truth = targets[:, :, 1].numpy()
    csis = []
    for level in (0.3, 0.7):
        p, o = last >= level, truth >= level
        per_lead = [(p & o).sum(axis=(0, 2, 3)), (~p & o).sum(axis=(0, 2, 3)),
                    (p & ~o).sum(axis=(0, 2, 3)), (~p & ~o).sum(axis=(0, 2, 3))]  # fmt: skip
        h, m, f, cn = (float(v.sum()) for v in per_lead)
        csis.append([a / (a + b + c) for a, b, c in zip(*per_lead[:3])])
        expected = {
            f"persistence_csi@{level:g}": h / (h + m + f),
            f"persistence_pod@{level:g}": h / (h + m),
            f"persistence_far@{level:g}": f / (h + f),
            f"persistence_hss@{level:g}": 2
            * (h * cn - m * f)
            / ((h + m) * (m + cn) + (h + f) * (f + cn)),
        }
        for key, value in expected.items():
            assert results[key] == pytest.approx(value, rel=1e-12), key
        for t, value in enumerate(csis[-1]):
            assert results[f"persistence_csi@{level:g}/t{t + 1:02d}"] == pytest.approx(value)
    # no persistence CSI-M: a mean over the thresholds where its own CSI is defined, which
    # are not the model's where no event is observed (the model false-alarms: CSI 0)
    assert not [key for key in results if key.startswith("persistence_csi_m")]
    assert results["csi@0.3"] != results["persistence_csi@0.3"]  # the model's own, apart
    per_lead, baseline = lead_time_series({f"val/{k}": v for k, v in results.items()})
    assert not [name for name in per_lead if "persistence" in name], list(per_lead)
    assert baseline["val/csi@0.3"] == [(t + 1, v) for t, v in enumerate(csis[0])]
    assert "val/csi_m" not in baseline and "val/csi_m" in per_lead


def test_thresholds_outside_the_datas_range_are_said_once_at_build():
    """A radar user's review: a threshold below the data's minimum made every pixel an
    event (CSI 1 for any prediction, lifting CSI-M) without a word; one above its maximum
    counts no event. Both are said at build, in stored units, naming the channel scored;
    thresholds inside the range say nothing."""
    from helpers import said_warnings

    from stpdist.build import build_module
    from stpdist.config import load_config
    from stpdist.data.format import SplitIndex

    root = Path(__file__).parent.parent
    index = SplitIndex(split="train", shape=[8, 2, 16, 16], dtype="uint8", value_scale=255.0,
                       shards=[], min=[0.0, 10 / 255], max=[1.0, 200 / 255])  # fmt: skip

    def said(thresholds: str, channel: str) -> list[str]:
        cfg = load_config(
            root / "configs" / "debug.yaml",
            [f"model.evaluation.metric_thresholds={thresholds}",
             f"model.evaluation.threshold_channel={channel}"],
        )  # fmt: skip
        with said_warnings() as lines:
            build_module(cfg, index=index)
        return [line for line in lines if "metric_thresholds are in stored units" in line]

    (line,) = said("[5,20,0.5,250]", "1")
    assert "train split's values (channel 1) run from 10 to 200" in line
    assert "5, 0.5 at or below its smallest value: every pixel is an event" in line
    assert "250 above its largest: no event in it" in line
    assert said("[20,100]", "1") == []  # inside the range
    assert said("[20,100]", "0") == []  # channel 0 runs from 0 to 255
    (line,) = said("[0]", "all")
    assert "(channel 0–1) run from 0 to 255: 0 at or below" in line
