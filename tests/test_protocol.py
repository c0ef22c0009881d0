"""OpenSTL's training and scoring protocol as selectable modes: the `all` next-frame
objective, raw / range-2 scoring columns, GHU init, per-epoch cosine schedule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from stpdist.config import ModelConfig, load_config
from stpdist.task import Forecaster

T_IN, T_OUT = 3, 3


def _forecaster(name: str, loss_frames: str, sampling: str = "none", **backbone) -> Forecaster:
    config = ModelConfig(
        name=name,
        backbone={"hidden_channels": [4, 4], "kernel_size": 3, **backbone},
        patch_size=2,
        loss_frames=loss_frames,
    )
    config.sampling.mode = sampling
    config.sampling.reverse_steps = [0, 10]
    torch.manual_seed(0)
    return Forecaster(config, (1, 8, 8), T_IN, T_OUT)


def _reference_predictions(module: Forecaster, inputs, targets, mask) -> torch.Tensor:
    """Every next-frame prediction, by hand: one `step` per frame, fed the true frame, or
    the previous prediction where the teacher mask says 0; patching done explicitly."""
    from stpdist.task import reshape_patch, reshape_patch_back

    frames = reshape_patch(torch.cat([inputs, targets], dim=1), 2)
    backbone = module.backbone
    state = backbone.init_state(frames[:, :T_IN])
    predictions = []
    for t in range(T_IN + T_OUT - 1):
        frame = frames[:, t]
        if mask is not None and t >= 1:
            offset = 1 if mask.shape[1] == T_IN + T_OUT - 2 else T_IN
            if t >= offset:
                keep = mask[:, t - offset].view(-1, 1, 1, 1)
                frame = keep * frame + (1 - keep) * predictions[-1]
        elif t >= T_IN:  # no mask: the model's own predictions on the output steps
            frame = predictions[-1]
        prediction, state = backbone.step(frame, state)
        predictions.append(prediction)
    aux = backbone.aux_losses(state)
    return reshape_patch_back(torch.stack(predictions, dim=1), 2), aux


@pytest.mark.parametrize(
    "name,sampling", [("predrnn", "none"), ("predrnn", "linear"), ("predrnnv2", "reverse")]
)
def test_all_frames_objective_equals_the_hand_computed_loop(name, sampling):
    g = torch.Generator().manual_seed(1)
    inputs = torch.rand(2, T_IN, 1, 8, 8, generator=g)
    targets = torch.rand(2, T_OUT, 1, 8, 8, generator=g)
    losses = {}
    for loss_frames in ("outputs", "all"):
        module = _forecaster(name, loss_frames, sampling)
        module.train()
        torch.manual_seed(5)  # the same teacher-mask draws in both modes and for the reference
        mask = module.teacher_mask(inputs, module.global_step)
        torch.manual_seed(5)
        got = module.training_step(inputs, targets)
        losses[loss_frames] = (got["loss"] if isinstance(got, dict) else got).detach()
        with torch.no_grad():
            pred, aux = _reference_predictions(module, inputs, targets, mask)
        truth = torch.cat([inputs[:, 1:], targets], dim=1)
        assert pred.shape[1] == T_IN + T_OUT - 1
        if loss_frames == "all":
            expected = ((pred - truth) ** 2).mean()
        else:  # today's objective: the T_out output frames only
            expected = ((pred[:, -T_OUT:] - targets) ** 2).mean()
        expected = expected + sum(aux.values(), torch.zeros(()))
        assert float(losses[loss_frames]) == pytest.approx(float(expected), abs=1e-6)
    assert float(losses["all"]) != pytest.approx(float(losses["outputs"]), abs=1e-6)


def test_all_frames_on_a_non_recurrent_backbone_is_an_error():
    config = ModelConfig(
        name="simvp",
        backbone={"spatial_channels": 8, "temporal_channels": 16, "num_spatial_blocks": 2},
        loss_frames="all",
    )
    with pytest.raises(ValueError, match="loss_frames 'all'"):
        Forecaster(config, (1, 16, 16), T_IN, T_OUT)


def test_loss_frames_is_a_checked_literal():
    from stpdist.config import ConfigError

    assert load_config(None, ["model.loss_frames=all"]).model.loss_frames == "all"
    with pytest.raises(ConfigError, match="loss_frames"):
        load_config(None, ["model.loss_frames=every"])


def test_validation_predictions_are_unchanged_by_loss_frames():
    x = torch.rand(2, T_IN, 1, 8, 8)
    outs = []
    for loss_frames in ("outputs", "all"):
        module = _forecaster("predrnn", loss_frames).eval()
        outs.append(module.predict_frames(x))
    assert outs[0].shape == (2, T_OUT, 1, 8, 8)
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------- scoring columns
def test_raw_errors_and_openstl_ssim_against_numpy_and_skimage():
    """`*_raw` score the unclamped predictions (OpenSTL's MSE/MAE: per-frame sums of raw
    errors); `ssim_openstl` is scikit-image's SSIM with data_range=2."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    from stpdist.metrics import batch_sums, summarize

    rng = np.random.default_rng(3)
    target = rng.random((3, 2, 2, 12, 10))
    raw = target + rng.normal(0, 0.3, target.shape)  # leaves [0, 1] often
    pred = np.clip(raw, 0, 1)
    pixels = 2 * 12 * 10
    got = summarize(
        batch_sums(
            torch.from_numpy(pred), torch.from_numpy(target), raw_pred_BTCHW=torch.from_numpy(raw)
        ),
        frame_pixels=pixels,
    )
    for t in range(2):
        lead = f"/t{t + 1:02d}"
        err_raw, err = raw[:, t] - target[:, t], pred[:, t] - target[:, t]
        ref = {
            "mse_raw": np.mean(err_raw**2),
            "mae_raw": np.mean(np.abs(err_raw)),
            "mse_frame_raw": np.mean(np.sum(err_raw**2, axis=(1, 2, 3))),
            "mae_frame_raw": np.mean(np.sum(np.abs(err_raw), axis=(1, 2, 3))),
            "mse": np.mean(err**2),
            "ssim_openstl": np.mean(
                [
                    np.mean(
                        [
                            skimage_metrics.structural_similarity(
                                target[i, t, c], pred[i, t, c], win_size=7, data_range=2
                            )
                            for c in range(2)
                        ]
                    )
                    for i in range(3)
                ]
            ),
        }
        for name, value in ref.items():
            assert got[name + lead] == pytest.approx(value, rel=1e-9), name
    assert got["mse_raw"] > got["mse"] and got["mae_raw"] > got["mae"]
    assert got["ssim_openstl"] > got["ssim"]


def test_validation_scores_raw_and_clamped_predictions():
    module = _forecaster("predrnn", "outputs").eval()
    with torch.no_grad():
        module.backbone.output.weight.mul_(200)  # predictions far outside [0, 1]
    g = torch.Generator().manual_seed(2)
    inputs, targets = (
        torch.rand(2, T_IN, 1, 8, 8, generator=g),
        torch.rand(2, T_OUT, 1, 8, 8, generator=g),
    )
    with torch.no_grad():
        raw = module(inputs, clamp=False).predictions
        out = module.validation_step(inputs, targets)
    assert raw.min() < 0 or raw.max() > 1
    sums = out["sums"]
    torch.testing.assert_close(
        sums["sq_err_raw"], ((raw - targets).double() ** 2).sum(dim=(0, 2, 3, 4))
    )
    clamped = raw.clamp(0, 1)
    torch.testing.assert_close(
        sums["sq_err"], ((clamped - targets).double() ** 2).sum(dim=(0, 2, 3, 4))
    )
    assert torch.equal(out["predictions"], clamped)


# ---------------------------------------------------------------------- on-the-fly digits
def _mnist_idx(path, count: int = 20) -> str:
    """A tiny MNIST-format idx3 file of random 28×28 'digits' (nothing downloaded)."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((count, 28, 28)) > 0.7).astype(np.uint8) * 255
    header = b"".join(v.to_bytes(4, "big") for v in (2051, count, 28, 28))
    path.write_bytes(header + pixels.tobytes())
    return str(path)


def _source(digits=None, **kwargs):
    from stpdist.data.onthefly import MovingDigitsTrainSource

    args = dict(
        batch_size=2,
        num_input_frames=3,
        num_output_frames=3,
        image_size=32,
        digit_size=12,
        seed=4,
        digits=digits,
    )
    return MovingDigitsTrainSource(16, **{**args, **kwargs})


def _epoch(source, epoch, rank=0, world=1, start=0, seed=0, workers=0):
    from stpdist.data.loading import LoaderContext

    ctx = LoaderContext(rank=rank, world_size=world, seed=seed, num_workers=workers)
    return [torch.cat([x, y], dim=1) for x, y in source.iterate(ctx, epoch, start)]


def test_on_the_fly_digits_ranks_disjoint_deterministic_resumable(tmp_path):
    source = _source(_mnist_idx(tmp_path / "train-images-idx3-ubyte"))
    from stpdist.data.loading import LoaderContext

    assert source.batches_per_epoch(LoaderContext(world_size=2)) == 4
    ranks = [_epoch(source, 0, rank=r, world=2) for r in range(2)]
    assert [len(r) for r in ranks] == [4, 4]
    seqs = [s for r in ranks for b in r for s in b]
    assert len({s.numpy().tobytes() for s in seqs}) == 16  # no sequence on two ranks
    one = _epoch(_source(_mnist_idx(tmp_path / "d2"), batch_size=4), 0)  # 1 rank × batch 4
    for i, batch in enumerate(one):  # == 2 ranks × batch 2, slice by slice
        assert torch.equal(batch, torch.cat([ranks[0][i], ranks[1][i]]))
    again = _epoch(_source(_mnist_idx(tmp_path / "d3")), 0, rank=1, world=2)
    assert all(torch.equal(a, b) for a, b in zip(again, ranks[1]))  # same seed: bitwise
    resumed = _epoch(source, 0, rank=1, world=2, start=2)
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(resumed, ranks[1][2:]))
    other = _epoch(source, 1, rank=1, world=2)
    assert not any(torch.equal(a, b) for a, b in zip(other, ranks[1]))  # fresh every epoch
    reseeded = _epoch(source, 0, rank=1, world=2, seed=1)  # the trainer seed counts too
    assert not torch.equal(reseeded[0], ranks[1][0])
    x = ranks[0][0]
    assert x.dtype == torch.float32 and x.shape == (2, 6, 1, 32, 32)
    assert float(x.min()) == 0 and 0.5 < float(x.max()) <= 1


def test_on_the_fly_workers_and_glyphs_match_in_process():
    source = _source()  # Pillow glyphs
    assert all(torch.equal(a, b) for a, b in zip(_epoch(source, 2), _epoch(source, 2, workers=2)))


def test_shards_and_on_the_fly_share_one_generator():
    from stpdist.data.synthetic import draw_moving_digits, moving_digits_sample

    a = moving_digits_sample(3, "train", 5, num_frames=4, image_size=32, digit_size=12)
    b = draw_moving_digits(
        np.random.default_rng([3, 0, 5]), num_frames=4, image_size=32, digit_size=12
    )
    assert np.array_equal(a, b)


def test_train_on_the_fly_from_the_config(tmp_path):
    """`data.train_source: moving_digits`: no train shards are written, validation reads the
    generated val shards, and training runs on the generated sequences."""
    from stpdist import build
    from stpdist.trainer import Trainer

    root = tmp_path / "data"
    cfg = load_config(
        Path(__file__).parent.parent / "configs" / "debug.yaml",
        [
            f"trainer.output_dir={tmp_path / 'run'}",
            f"data.root={root}",
            f"data.synthesize.root={root}",
            "data.train_source=moving_digits",
            "data.synthesize.train=8",
            "trainer.max_epochs=1",
        ],
    )
    trainer = Trainer.from_config(cfg)
    build.ensure_dataset(cfg, trainer)
    assert not (root / "train").exists() and (root / "val" / "index.json").is_file()
    assert build.describe_dataset(cfg)
    module = build.build_module(cfg)
    source = build.train_stream(cfg)
    state = trainer.fit(module, source, build.eval_stream(cfg, "val"))
    trainer.close()
    assert state.global_step == 2 and "val/mse_raw" in state.metrics


def test_on_the_fly_needs_the_generator_settings():
    from stpdist.config import ConfigError

    with pytest.raises(ConfigError, match="data.synthesize"):
        load_config(None, ["data.train_source=moving_digits"])


# ---------------------------------------------------------------------- model details
def test_gradient_highway_starts_uniform_in_a_thousandth():
    module = _forecaster("predrnnpp", "all")
    for conv in (module.backbone.highway.conv_x, module.backbone.highway.conv_z):
        w = conv.weight.detach()
        assert w.abs().max() <= 1e-3 and w.abs().max() > 5e-4  # U(±0.001), not the default


def test_cosine_per_epoch_with_warmup_and_floor():
    config = ModelConfig(name="predrnn", backbone={"hidden_channels": [4], "kernel_size": 3})
    config.optimizer.lr = 1e-4
    s = config.schedule
    s.name, s.interval, s.warmup_steps, s.total_steps, s.min_lr = "cosine", "epoch", 5, 50, 1e-6
    module = Forecaster(config, (1, 8, 8), T_IN, T_OUT)
    optimizer = module.configure_optimizer()
    returned = module.configure_lr_scheduler(optimizer)
    assert returned["interval"] == "epoch"
    lrs = []
    for _ in range(51):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        returned["scheduler"].step()
    assert lrs[0] == pytest.approx(2e-5) and lrs[4] == pytest.approx(1e-4)
    assert lrs[50] == pytest.approx(1e-6) and lrs[5] == pytest.approx(1e-4)
    halfway = 1e-6 + (1e-4 - 1e-6) * 0.5 * (1 + np.cos(np.pi * 22 / 45))
    assert lrs[27] == pytest.approx(halfway)
    s.name = "onecycle"
    with pytest.raises(ValueError, match="interval 'epoch'"):
        module.configure_lr_scheduler(optimizer)


def test_bench_model_reports_inference_fps(capsys):
    from stpdist.bench import bench_model

    args = {"hidden_channels": [4], "kernel_size": 3}
    result = bench_model("predrnn", (2, 3, 1, 16, 16), 3, 2, args, steps=1, fps_batch=4)
    assert result["inference_fps"] > 0 and result["fps_batch"] == 4
    assert "sequences/s (OpenSTL's 'FPS': an eval forward of batch 4)" in capsys.readouterr().out


# ---------------------------------------------------------------------- layer_norm
# OpenSTL's `layer_norm`: a LayerNorm over [out channels, (w,) H, W] after every gate
# convolution. Per case: backbone args (frames 2×8×8 after patching), how many gate
# convolutions get one (counted by hand from the cells), the LayerNorms the model has
# without the option (E3D-LSTM's recall norm), and a fingerprint of three `step`s with
# layer_norm off, recorded from the code before the option existed: (state-dict key hash,
# Σ|ŷ|, Σ ŷ·linspace(−1, 1)), at one thread (more threads move the last bits only).
LAYER_NORM = {
    # stpdist / shi: one [x, h] convolution per cell; openstl: W_x and W_h per cell
    "convlstm": ({"hidden_channels": [4, 6]}, 2, 0, ("852a3dc6462b", 32.53259795, 5.62269232)),
    "convlstm-openstl": (
        {"variant": "openstl", "hidden_channels": [4, 6]},
        4,
        0,
        ("dfd90aeaa0d1", 2.30175304, -0.38267795),
    ),
    "convlstm-shi": (
        {"variant": "shi", "hidden_channels": [4, 6]},
        4,  # encoder and forecaster
        0,
        ("06b38750b48e", 39.68137917, -2.03667676),
    ),
    # ST-LSTM: x, h, m, o per layer
    "predrnn": ({"hidden_channels": [4, 4]}, 8, 0, ("6ba02a25b1e4", 2.98826493, -0.42765836)),
    "predrnnv2": ({"hidden_channels": [4, 4]}, 8, 0, ("536b04cecc07", 2.98826493, -0.42765836)),
    # Causal LSTM: x, h, c, m, c2m, om per layer; GHU: x, z
    "predrnnpp": (
        {"hidden_channels": [4, 4]},
        14,
        0,
        ("aee34e9ccefc", 0.045402782, -0.00071117943),
    ),
    # ST-LSTM 4; per block 3 + MIM-S 2; per MIM-N 2
    "mim": (
        {"hidden_channels": [4, 4, 4]},
        4 + 2 * 5 + 2 * 2,
        0,
        ("165b82052838", 1.45421233, 0.10179892),
    ),
    # x, h, m, and the output gate's convolutions of C and M, per layer
    "e3dlstm": (
        {"hidden_channels": [4, 4], "recall_window": 3},
        10,
        2,
        ("12513940dd32", 17.17103390, 3.69856352),
    ),
}
NOT_GATES = ("conv_last", "output", "adapter")  # readouts and the decoupling adapter


def _layer_norm_model(case: str, layer_norm: bool) -> torch.nn.Module:
    from stpdist.models import FrameSpec, build_backbone

    args, *_ = LAYER_NORM[case]
    torch.manual_seed(0)
    spec = FrameSpec(2, 8, 8, 3, 2)
    return build_backbone(
        case.split("-")[0], spec, {**args, "kernel_size": 3, "layer_norm": layer_norm}
    )


def _gate_pairs(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    """(name, convolution, the module that follows it) for every gate convolution: cells
    name the follower `norm_<x>` for `conv_<x>` (`norm` for ConvLSTM's `gates`)."""
    pairs = []
    for prefix, module in model.named_modules():
        for name, conv in module.named_children():
            if not isinstance(conv, torch.nn.Conv2d | torch.nn.Conv3d) or name in NOT_GATES:
                continue
            follower = "norm" if name == "gates" else name.replace("conv_", "norm_", 1)
            pairs.append((f"{prefix}.{name}", conv, getattr(module, follower)))
    return pairs


@pytest.mark.parametrize("case", sorted(LAYER_NORM))
def test_layer_norm_off_is_the_model_as_before(case):
    _, _, norms_without, (keys, abs_sum, weighted_sum) = LAYER_NORM[case]
    import hashlib

    model = _layer_norm_model(case, False)
    layer_norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(layer_norms) == norms_without
    assert all(isinstance(f, torch.nn.Identity) for _, _, f in _gate_pairs(model))
    assert hashlib.sha256(" ".join(model.state_dict()).encode()).hexdigest()[:12] == keys
    frames = torch.rand(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    state = model.init_state(frames)
    with torch.no_grad():
        for t in range(3):
            pred, state = model.step(frames[:, t], state)
    pred = pred.double()
    assert pred.abs().sum().item() == pytest.approx(abs_sum, rel=1e-6)
    weights = torch.linspace(-1, 1, pred.numel(), dtype=torch.float64).view_as(pred)
    assert (pred * weights).sum().item() == pytest.approx(weighted_sum, rel=1e-5)


@pytest.mark.parametrize("case", sorted(LAYER_NORM))
def test_layer_norm_follows_every_gate_convolution(case):
    from stpdist.models import as_output

    _, gates, norms_without, _ = LAYER_NORM[case]
    model, plain = _layer_norm_model(case, True), _layer_norm_model(case, False)
    pairs = _gate_pairs(model)
    assert len(pairs) == gates
    depth = (model.window,) if case == "e3dlstm" else ()
    for name, conv, norm in pairs:
        assert isinstance(norm, torch.nn.LayerNorm), name
        assert norm.normalized_shape == (conv.out_channels, *depth, 8, 8), name
    layer_norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(layer_norms) == gates + norms_without
    # the same convolution weights (LayerNorm's init draws nothing) ...
    plain_state = plain.state_dict()
    for key, value in model.state_dict().items():
        assert key in plain_state or ".norm" in key, key
        assert key not in plain_state or torch.equal(value, plain_state[key]), key
    # ... and each LayerNorm reads exactly its convolution's output
    outputs: dict[str, list] = {name: [] for name, _, _ in pairs}
    inputs: dict[str, list] = {name: [] for name, _, _ in pairs}
    for name, conv, norm in pairs:
        conv.register_forward_hook(lambda m, i, o, name=name: outputs[name].append(o))
        norm.register_forward_pre_hook(lambda m, i, name=name: inputs[name].append(i[0]))
    frames = torch.rand(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    predictions = as_output(model(frames, 2)).predictions
    for name, _, _ in pairs:
        assert len(outputs[name]) == len(inputs[name]) > 0, name
        assert all(o is i for o, i in zip(outputs[name], inputs[name])), name
    # it trains: gradients reach the LayerNorms' affine parameters
    predictions.square().mean().backward()
    for _, _, norm in pairs:
        assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    plain_predictions = as_output(plain(frames, 2)).predictions
    assert not torch.allclose(predictions.detach(), plain_predictions.detach(), atol=1e-4)


def test_layer_norm_is_a_checked_backbone_argument(tmp_path):
    from stpdist.config import ConfigError, backbone_config

    path = tmp_path / "ln.yaml"
    path.write_text("model:\n  name: predrnn\n  backbone: {layer_norm: true}\n")
    assert backbone_config(load_config(path).model).layer_norm is True
    with pytest.raises(ConfigError, match="model.backbone.layer_norm"):
        load_config(path, ["model.backbone.layer_norm=sometimes"])
    with pytest.raises(ConfigError, match="layer_norm"):  # MAU's LayerNorms are always on
        load_config(None, ["model.name=mau", "model.backbone.layer_norm=true"])


# ---------------------------------------------------------------------- reproduction harness
def test_reproduce_writes_the_table_beside_openstl(tmp_path, capsys):
    """The harness end to end at a toy size (the README's `--small` run takes minutes):
    2 seeds, on-the-fly training digits from an idx file, best checkpoint on the test split."""
    import json
    import shlex

    from stpdist.reproduce import reproduce

    digits = _mnist_idx(tmp_path / "train-images-idx3-ubyte")
    tiny = [
        "data.synthesize.train=32",
        "data.synthesize.val=8",
        "data.synthesize.test=8",
        "trainer.max_epochs=1",
        "trainer.val_every_n_epochs=1",
        "model.backbone.hidden_channels=[4]",
    ]
    config = str(Path(__file__).parent.parent / "configs" / "mmnist" / "predrnn.yaml")
    summary = reproduce(config, 2, small=True, out=tmp_path / "out", digits=digits, overrides=tiny)
    saved = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    assert saved["seeds"] == 2 and len(saved["runs"]) == 2
    assert saved["test_sequences"] == 8 and saved["test_source"] == "synthetic moving digits"
    # the table's command is the one that made it: overrides and flags included
    assert shlex.split(saved["command"]) == [
        *("stpdist", "reproduce", config, *tiny, "--seeds", "2", "--small"),
        *("--out", str(tmp_path / "out"), "--digits", digits),
    ]
    row = summary["table"]["MSE (frame sum, raw)"]
    assert len(row["values"]) == 2
    assert row["mean"] == pytest.approx(np.mean(row["values"]))
    assert row["values"][0] != row["values"][1]  # the seeds differ
    assert "copy-last MSE / pixel" in summary["table"]
    # a 32×32, 5→5 run on generated digits is not OpenSTL's setting: no number of theirs
    assert row["openstl"] is None
    assert saved["openstl_differences"] == [
        "--small is a scaled-down recipe",
        "5→5 frames, not 10→10",
        "frames of 1×32×32, not 1×64×64",
        "the test split was written from synthetic moving digits, not from mnist_test_seq.npy",
    ]
    md = (tmp_path / "out" / "reproduce.md").read_text()
    assert "| SSIM (range 2) |" in md and "OpenSTL MMNIST" not in md and "0.9462" not in md
    assert "OpenSTL's published numbers are left out" in md and "5→5 frames" in md
    assert (tmp_path / "out" / "data" / "test" / "index.json").is_file()
    # every checkpoint is a model folder, as `stpdist train`'s (it lacked the index once)
    checkpoints = sorted((tmp_path / "out").glob("seed*/checkpoints/step-*"))
    assert checkpoints and all((c / "index.json").is_file() for c in checkpoints)
    assert not (tmp_path / "out" / "data" / "train").exists()


def test_openstl_numbers_stand_beside_a_run_in_their_setting_only(tmp_path, monkeypatch):
    """OpenSTL's column is shown for its setting (10→10 frames of 1×64×64, the test split
    from mnist_test_seq.npy, a model it publishes) and left out, with the reasons, for any
    other run."""
    from dataclasses import replace

    from stpdist.data.convert import convert
    from stpdist.data.sources.moving_mnist import MovingMnistNpy
    from stpdist.reproduce import markdown, openstl_differences, summarize

    config = str(Path(__file__).parent.parent / "configs" / "mmnist" / "predrnn.yaml")
    array = np.zeros((20, 3, 64, 64), np.uint8)  # mnist_test_seq.npy's layout, 3 sequences
    np.save(tmp_path / "mnist_test_seq.npy", array)
    test = convert(
        MovingMnistNpy(str(tmp_path / "mnist_test_seq.npy")), tmp_path / "mmnist", progress=False
    )["test"]

    def index(shape=(20, 1, 64, 64), source=test.source):
        return replace(test, shape=list(shape), source=source)

    theirs = load_config(config)
    assert openstl_differences(theirs, False, test) == []
    runs = [{"mse_frame_raw": 24.5, "ssim_openstl": 0.94}, {"mse_frame_raw": 25.5}]
    table = summarize("predrnn", runs, comparable=True)
    assert table["MSE (frame sum, raw)"]["openstl"] == 23.97
    md = markdown("predrnn", table, 2, False, "stpdist reproduce x", 9000, [])
    assert "| MSE (frame sum, raw) | 25.00 ± 0.707 | 23.97 |" in md and "9000 sequences" in md
    assert "picks its checkpoint on the test set (here: the best" in md  # caveats that remain
    assert "OpenSTL reports the best of three trials (here: the mean ± std" in md
    convlstm = markdown("convlstm", summarize("convlstm", [{"psnr": 22.0}]), 1, False, "c",
                        9000, [])  # fmt: skip
    assert "| PSNR | 22.00 ± n/a | 22.10 |" in convlstm, convlstm  # as published, not 22.1

    assert openstl_differences(theirs, False, index((20, 3, 64, 64))) == [
        "frames of 3×64×64, not 1×64×64"
    ]
    assert openstl_differences(theirs, False, index(source="seed-mmnist")) == [
        "the test split was written from seed-mmnist, not from mnist_test_seq.npy"
    ]
    shorter = load_config(config, ["data.num_output_frames=5"])
    assert openstl_differences(shorter, False, index()) == ["10→5 frames, not 10→10"]
    other = load_config(str(Path(config).with_name("trajgru.yaml")))
    assert openstl_differences(other, False, index()) == [
        "OpenSTL publishes no Moving MNIST numbers for model 'trajgru'"
    ]
    table = summarize("predrnn", runs, comparable=False)
    assert table["MSE (frame sum, raw)"]["openstl"] is None
    md = markdown("predrnn", table, 2, False, "c", 9000, ["10→5 frames, not 10→10"])
    assert "| MSE (frame sum, raw) | 25.00 ± 0.707 |" in md and "23.97" not in md
    assert "this run differs: 10→5 frames, not 10→10." in md

    # trained otherwise than the recipe (OpenSTL's training): said, the column left out;
    # where it writes and logs are no difference
    shorter = load_config(config, ["trainer.max_epochs=1", "trainer.output_dir=elsewhere"])
    assert openstl_differences(shorter, False, test, recipe=theirs) == [
        f"trainer.max_epochs 1, not the recipe's {theirs.trainer.max_epochs}"
    ]
    moved = load_config(config, ["trainer.output_dir=x", "logging.num_samples=0"])
    assert openstl_differences(moved, False, test, recipe=theirs) == []
    # a review: the training digits and the scored checkpoint's choice were "no change", a
    # faster step (compile, fused kernels, graphs) was one, and ranks were not counted
    for changed in (["data.synthesize.num_digits=3"], ["trainer.checkpoint.monitor=val/ssim"],
                    ["trainer.checkpoint.keep_best=0"]):  # fmt: skip
        assert openstl_differences(load_config(config, changed), False, test, recipe=theirs)
    faster = ["trainer.compile=true", "model.fused_kernels=on", "trainer.keep_global_batch=true"]
    assert openstl_differences(load_config(config, faster), False, test, recipe=theirs) == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert openstl_differences(theirs, False, test, recipe=theirs) == [
        f"a global batch of {2 * theirs.data.batch_size} (2 ranks × {theirs.data.batch_size} × "
        f"accumulation 1), not the recipe's {theirs.data.batch_size}: set data.batch_size or "
        "trainer.gradient_accumulation_steps to keep it"
    ]
    half = load_config(config, [f"data.batch_size={theirs.data.batch_size // 2}"])
    assert openstl_differences(half, False, test, recipe=theirs) == []  # the recipe's batch
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert openstl_differences(half, False, test, recipe=theirs) == [
        f"a global batch of {theirs.data.batch_size // 2} (1 rank × "
        f"{theirs.data.batch_size // 2} × accumulation 1), not the recipe's "
        f"{theirs.data.batch_size}: set data.batch_size or trainer.gradient_accumulation_steps"
        " to keep it"
    ]
    one = summarize("predrnn", runs[:1], comparable=True)
    assert one["MSE (frame sum, raw)"]["std"] is None  # one seed: no spread, not 0
    assert "| MSE (frame sum, raw) | 24.50 ± n/a | 23.97 |" in markdown(
        "predrnn", one, 1, False, "c", 9000, []
    )
    from stpdist.reproduce import _mean_std

    # the spread at 3 digits (a reproducibility review read "31.48 ± 1" for a std of 1.0476)
    assert _mean_std({"mean": 31.4838, "std": 1.0476}) == "31.48 ± 1.05"
    # its trailing zeros kept, as the mean's (a sweeps review read "± 1.4" for 1.39684)
    assert _mean_std({"mean": 7.137, "std": 1.39684}) == "7.137 ± 1.40"
    # the checkpoint scored, said as it is: none ranked with keep_best 0 (the newest)
    assert "newest checkpoint (trainer.checkpoint.keep_best 0 ranks none)" in markdown(
        "predrnn", {}, 2, False, "c", 9000, [], ranked=False
    )


# ---------------------------------------------------------------------- LPIPS
@pytest.fixture(scope="module")
def alexnet_weights(tmp_path_factory):
    """torchvision's AlexNet with seeded random weights, saved as its state dict file (the
    format of the IMAGENET1K_V1 file a user downloads)."""
    from stpdist.metrics import _import_lpips

    _import_lpips()  # makes torchvision importable on CPU torch (see its docstring)
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    state = torchvision.models.alexnet(weights=None).state_dict()
    # the classifier (234 MB of the 244) is ignored by the loader: a small stand-in keeps
    # the file's layout (features.* and classifier.* keys) at a tenth of the writing
    state = {k: (v if k.startswith("features.") else v.flatten()[:8]) for k, v in state.items()}
    torch.save(state, path)
    yield path
    path.unlink()


@pytest.fixture(scope="module")
def lpips_scorer(alexnet_weights):
    from stpdist.metrics import LPIPSScorer

    return LPIPSScorer(alexnet_weights, (32, 32))


@pytest.fixture(scope="module")
def reference_lpips(alexnet_weights):
    """`lpips.LPIPS` itself with the same AlexNet weights, copied in layer by layer."""
    import warnings

    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = torch.load(alexnet_weights, weights_only=True)
    layers = {0: "slice1", 3: "slice2", 6: "slice3", 8: "slice4", 10: "slice5"}  # AlexNet's convs
    with torch.no_grad():
        for index, name in layers.items():
            conv = getattr(getattr(net.net, name), str(index))
            conv.weight.copy_(state[f"features.{index}.weight"])
            conv.bias.copy_(state[f"features.{index}.bias"])
    return net


def _reference_lpips(net, pred, target) -> np.ndarray:
    """Per lead time sums over the batch, frame by frame: lpips' own [0, 1] → [−1, 1]
    (normalize=True), RGB frames as they are, others one channel at a time replicated to 3
    and averaged."""
    b, t, c = pred.shape[:3]
    out = np.zeros(t)
    with torch.no_grad():
        for i in range(b):
            for j in range(t):
                p, q = pred[i, j].float(), target[i, j].float()
                if c == 3:
                    d = net(p[None], q[None], normalize=True).item()
                else:
                    d = np.mean(
                        [
                            net(
                                p[k].expand(1, 3, -1, -1), q[k].expand(1, 3, -1, -1), normalize=True
                            ).item()
                            for k in range(c)
                        ]
                    )
                out[j] += d
    return out


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_lpips_sums_equal_lpips_frame_by_frame(lpips_scorer, reference_lpips, channels):
    from stpdist.metrics import batch_sums, summarize

    g = torch.Generator().manual_seed(channels)
    pred, target = torch.rand(2, 2, 3, channels, 32, 32, generator=g).unbind(0)
    sums = lpips_scorer.sums(pred, target)["lpips"]
    expected = _reference_lpips(reference_lpips, pred, target)
    assert expected.min() > 0.01  # different frames: a distance the comparison can see
    np.testing.assert_allclose(sums.numpy(), expected, rtol=0, atol=1e-6)
    assert lpips_scorer.sums(pred, pred)["lpips"].abs().max() == 0  # identical frames: 0
    # through `summarize`: the mean over samples, per lead time and overall
    values = summarize({**batch_sums(pred, target), "lpips": sums}, channels * 32 * 32)
    assert values["lpips/t01"] == pytest.approx(expected[0] / 2, abs=1e-6)
    assert values["lpips"] == pytest.approx(expected.mean() / 2, abs=1e-6)
    # predictions outside [0, 1] (`clamp_output: false`) are scored clipped, as OpenSTL
    # clips them (a metrics review: AlexNet got them unclipped)
    wide = pred * 1.6 - 0.3
    clipped = _reference_lpips(reference_lpips, wide.clamp(0, 1), target)
    assert np.abs(clipped - _reference_lpips(reference_lpips, wide, target)).max() > 1e-3
    np.testing.assert_allclose(lpips_scorer.sums(wide, target)["lpips"].numpy(), clipped, atol=1e-6)


def test_lpips_weights_missing_or_wrong_are_one_error_naming_the_file(tmp_path):
    from stpdist.metrics import LPIPSScorer

    missing = tmp_path / "nowhere" / "alexnet.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/alexnet.pth") as err:
        LPIPSScorer(missing)
    assert "features.0.weight" in str(err.value) and "\n" not in str(err.value)
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="resnet.pth.*features.0.weight"):
        LPIPSScorer(wrong)
    # at model build, before any training
    config = ModelConfig(backbone={"hidden_channels": [4], "kernel_size": 3})
    config.evaluation.lpips_weights = str(missing)
    with pytest.raises(FileNotFoundError, match="nowhere/alexnet.pth"):
        Forecaster(config, (1, 32, 32), T_IN, T_OUT)


def test_forecaster_reports_lpips_and_keeps_it_out_of_its_state(alexnet_weights):
    def build(weights):
        config = ModelConfig(backbone={"hidden_channels": [4], "kernel_size": 3}, patch_size=4)
        config.evaluation.lpips_weights = weights
        torch.manual_seed(0)
        return Forecaster(config, (1, 32, 32), T_IN, T_OUT).eval()

    module, plain = build(str(alexnet_weights)), build(None)
    g = torch.Generator().manual_seed(5)
    inputs, targets = torch.rand(2, T_IN, 1, 32, 32, generator=g), torch.rand(2, T_OUT, 1, 32, 32)
    with torch.no_grad():
        out = module.validation_step(inputs, targets)
    values = module.metrics_from_sums(out["sums"])
    per_frame = module.lpips.per_frame(out["predictions"], targets)  # the clamped predictions
    assert values["lpips/t01"] == pytest.approx(float(per_frame[:, 0].mean()), abs=1e-9)
    assert values["lpips"] == pytest.approx(float(per_frame.mean()), abs=1e-9)
    with torch.no_grad():
        plain_values = plain.metrics_from_sums(plain.validation_step(inputs, targets)["sums"])
    assert f"lpips/t{T_OUT:02d}" in values and "lpips" not in plain_values
    # no LPIPS weights in the state, the parameters or the optimizer: checkpoints load both ways
    assert module.state_dict().keys() == plain.state_dict().keys()
    assert len(list(module.parameters())) == len(list(plain.parameters()))
    optimizer = module.configure_optimizer()
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(
        list(plain.parameters())
    )
    plain.load_state_dict(module.state_dict())
    module.load_state_dict(plain.state_dict())


def test_reproduce_refuses_splits_of_another_frame_shape_before_training(tmp_path):
    """As `train` does: `reproduce` trained a whole epoch, then failed at the validation."""
    from stpdist.data.format import SplitWriter
    from stpdist.errors import InputError
    from stpdist.reproduce import run_seed

    for split, size in (("train", 8), ("val", 4), ("test", 8)):
        with SplitWriter(tmp_path / "data" / split, split, value_scale=255) as writer:
            for i in range(2):
                writer.write(f"{split}{i}", np.zeros((8, 1, size, size), np.uint8))
    debug = str(Path(__file__).parent.parent / "configs" / "debug.yaml")
    overrides = [f"data.root={tmp_path / 'data'}", "data.synthesize=null", "model.patch_size=1"]
    with pytest.raises(InputError, match=r"differ in frames C×H×W \(train 1×8×8, val 1×4×4"):
        run_seed(debug, overrides, 0, tmp_path / "out")
    assert not list((tmp_path / "out").glob("seed0/checkpoints/*"))


@pytest.mark.parametrize(
    ("override", "instead"),
    [
        ("trainer.seed=5", "--seeds N"),
        ("trainer.output_dir=mine", "--out"),
        ("trainer={seed: 5}", "--seeds N"),  # the same, as a mapping
    ],
)
def test_reproduce_refuses_the_settings_it_sets_for_each_seed(tmp_path, override, instead):
    """`reproduce … trainer.seed=5` trained seed 0 (its own seed came after the user's),
    then said the run differed from the recipe by a seed it never used."""
    config = str(Path(__file__).parent.parent / "configs" / "mmnist" / "predrnn.yaml")
    proc = run_cli("reproduce", config, override, "--small", "--seeds", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    key = "trainer.output_dir" if "output_dir" in override else "trainer.seed"
    assert f"{override}: reproduce sets {key} for each seed itself" in line
    assert instead in line and not list(tmp_path.iterdir())


def test_results_files_are_strict_json():
    """An MLOps review: reproduce.json held bare `NaN` (a CSI at a threshold without events,
    NaN by convention), which strict parsers reject; metrics_*.json said "nan"."""
    from stpdist.console import finite_json

    summary = {"table": {"CSI@300": [float("nan"), 0.5]}, "runs": [{"csi": float("inf")}], "n": 2}
    text = json.dumps(finite_json(summary))

    def refuse(constant):
        raise ValueError(constant)

    back = json.loads(text, parse_constant=refuse)
    assert back == {"table": {"CSI@300": ["nan", 0.5]}, "runs": [{"csi": "inf"}], "n": 2}
