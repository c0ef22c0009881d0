"""SimVP family: every translator's shapes, gradients and size at OpenSTL's settings;
chunked rollout; Swin's shifted-window mask; TAU's differential divergence; bf16 through
the Trainer; torch.compile of a training step; the model benchmark; user translators."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
from helpers import INDUCTOR_OPT_IN
from torch.utils.flop_counter import FlopCounterMode

from stpdist.models.base import FrameSpec
from stpdist.models.simvp import TAU, SimVP, SimVPArgs, differential_divergence
from stpdist.models.translators import BLOCKS, BlockSettings, SwinBlock

torch.set_num_threads(1)

TRANSLATORS = sorted(BLOCKS)
# 1×16×16, 3 input frames; 2 spatial blocks → 8×8 latent (so Swin's window of 4 shifts
# on the odd layer), 3 translator blocks (first, inner, last: UniFormer uses both kinds)
SMALL_SPEC = FrameSpec(1, 16, 16, 3, 3)


def small_args(translator: str, **overrides) -> SimVPArgs:
    values = dict(
        translator=translator,
        spatial_channels=8,
        temporal_channels=32,
        num_spatial_blocks=2,
        num_translator_blocks=3,
        mlp_ratio=4.0,
    )
    return SimVPArgs(**{**values, **overrides})


@pytest.mark.parametrize("translator", TRANSLATORS)
def test_shapes_for_fewer_equal_more_output_frames_and_gradients(translator):
    torch.manual_seed(0)
    model = SimVP(SMALL_SPEC, small_args(translator))
    frames = torch.rand(2, 3, 1, 16, 16)
    for t_out in (2, 3, 7):
        pred = model(frames, t_out)
        assert pred.shape == (2, t_out, 1, 16, 16) and torch.isfinite(pred).all()
    # 7 > 3 frames: three chunks, the later ones fed with predictions
    pred.square().mean().backward()
    # every parameter is used: each one has a non-zero gradient
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_rollout_feeds_each_chunk_back_and_cuts():
    torch.manual_seed(0)
    model = SimVP(SMALL_SPEC, small_args("gsta")).eval()  # BatchNorm: running statistics
    frames = torch.rand(2, 3, 1, 16, 16)
    with torch.no_grad():
        first = model.predict_chunk(frames)
        second = model.predict_chunk(first)
        third = model.predict_chunk(second)
        torch.testing.assert_close(model(frames, 2), first[:, :2])
        torch.testing.assert_close(model(frames, 3), first)
        torch.testing.assert_close(model(frames, 7), torch.cat([first, second, third[:, :1]], 1))


def test_tau_backbone_defaults_to_the_tau_translator():
    assert TAU.Args().translator == "tau" and SimVP.Args().translator == "gsta"
    for cls in (SimVP, TAU):
        assert dataclasses.is_dataclass(cls.Args)
    model = TAU(SMALL_SPEC, TAU.Args(**dataclasses.asdict(small_args("tau"))))
    assert type(model.translator.blocks[1][0]).__name__ == "TAUBlock"


def test_bad_arguments_are_named():
    with pytest.raises(KeyError, match="unknown SimVP translator 'gSTA'.*gsta"):
        SimVP(SMALL_SPEC, small_args("gSTA"))
    with pytest.raises(ValueError, match=r"18×16 is not divisible by 4"):
        SimVP(FrameSpec(1, 18, 16, 3, 3), small_args("gsta", num_spatial_blocks=4))
    model = SimVP(SMALL_SPEC, small_args("convnext"))
    with pytest.raises(ValueError, match="built for 3 input frames, got 4"):
        model(torch.rand(1, 4, 1, 16, 16), 3)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        model(torch.rand(1, 3, 1, 16, 16), 0)


def test_odd_number_of_spatial_blocks():
    # 3 blocks: stride 2 in the encoder's 2nd, upsampling in the decoder's 2nd
    model = SimVP(SMALL_SPEC, small_args("gsta", num_spatial_blocks=3))
    strides = [block.conv.stride[0] for block in model.encoder.blocks]
    upsampling = [isinstance(block.conv, torch.nn.Sequential) for block in model.decoder.blocks]
    assert strides == [1, 2, 1] and upsampling == [False, True, False]
    assert model(torch.rand(1, 3, 1, 16, 16), 3).shape == (1, 3, 1, 16, 16)


@pytest.mark.parametrize("translator", sorted(BLOCKS))
def test_overfits_one_batch(translator):
    # every translator: convolutional (BatchNorm), attention (LayerNorm), MLP and pooling blocks
    torch.manual_seed(0)
    model = SimVP(SMALL_SPEC, small_args(translator, spatial_channels=16))
    frames, targets = torch.rand(2, 3, 1, 16, 16), torch.rand(2, 3, 1, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(frames, 3), targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.1 * first:
            break
    assert loss.item() < 0.1 * first


def test_swin_masks_pixels_that_the_shift_wrapped_around():
    torch.manual_seed(0)
    block = SwinBlock(8, BlockSettings(mlp_ratio=2.0, resolution=(8, 8), layer_index=1)).eval()
    assert (block.window, block.shift) == (4, 2)
    # after rolling by −2, original rows/cols {6, 7, 0, 1} form the bottom-right window:
    # (7, 7) and (6, 6) share a region; (0, 0) came from the opposite border
    x, bump = torch.randn(1, 8, 8, 8), torch.randn(8)  # not constant over channels (LayerNorm)
    far, near = x.clone(), x.clone()
    far[0, :, 0, 0] += bump
    near[0, :, 6, 6] += bump

    def change_at_7_7(perturbed):
        with torch.no_grad():
            return (block(perturbed) - block(x))[0, :, 7, 7].abs().max().item()

    assert change_at_7_7(far) < 1e-9 and change_at_7_7(near) > 1e-5
    block.shift_mask.zero_()  # without the mask (as in OpenSTL) the wrapped pixel leaks in
    assert change_at_7_7(far) > 1e-5


def test_swin_window_is_a_setting_for_latent_frames_openstls_choice_does_not_tile():
    """An unusual-shapes review: 30×50 frames could not run swin at any setting (the window,
    4, divides neither 15×25 nor 30×50, and had no key)."""
    spec = FrameSpec(2, 30, 50, 3, 2)

    def simvp(**kw):
        return SimVP(spec, SimVPArgs(translator="swin", spatial_channels=8, temporal_channels=16,
                                     num_spatial_blocks=2, num_translator_blocks=2, **kw))  # fmt: skip

    with pytest.raises(ValueError, match=r"latent frames 15×25 .* not a multiple of its window "
                       r"4 \(chosen from the latent height.*swin_window to one that divides "
                       r"both \(5\), or use another translator"):  # fmt: skip
        simvp()
    with pytest.raises(ValueError, match=r"its window 3 \(model.backbone.swin_window\)"):
        simvp(swin_window=3)
    with pytest.raises(ValueError, match=r"swin_window 16 must be 1 … 15"):
        simvp(swin_window=16)
    # latent sides that share no divisor (5×7): the key is named (a zoo review: the line
    # named a function, `swin_window_size`, and left out the setting that works)
    odd = FrameSpec(2, 10, 14, 3, 2)
    with pytest.raises(ValueError, match=r"latent frames 5×7 .*as OpenSTL does; model.backbone"
                       r".swin_window sets it\); no window above 1 divides both sides: set "
                       r"model.backbone.swin_window to 1"):  # fmt: skip
        SimVP(odd, SimVPArgs(translator="swin", spatial_channels=8, temporal_channels=16,
                             num_spatial_blocks=2, num_translator_blocks=2))  # fmt: skip
    model = simvp(swin_window=5)
    assert {b.window for b in model.modules() if isinstance(b, SwinBlock)} == {5}
    assert model(torch.rand(2, 3, 2, 30, 50), 2).shape == (2, 2, 2, 30, 50)


# OpenSTL's Moving MNIST settings: 1×64×64, 10→10, C' 64, temporal 512, 4 + 8 blocks,
# mlp_ratio 8. OpenSTL's table: (params in M, "FLOPs" = fvcore MACs in G) per sample.
OPENSTL = {
    "incepu": (58.0, 19.4),
    "gsta": (46.8, 16.5),
    "tau": (44.7, 16.0),
    "vit": (46.1, 16.9),
    "swin": (46.1, 16.4),
    "uniformer": (44.8, 16.5),
    "mlpmixer": (38.2, 14.7),
    "convmixer": (3.9, 5.5),
    "poolformer": (37.1, 14.1),
    "convnext": (37.3, 14.1),
    "van": (44.5, 16.0),
    "hornet": (45.7, 16.3),
    "moganet": (46.8, 16.5),
}
# ours: (parameters, forward multiply-accumulates of one sample from FlopCounterMode / 2)
COUNTS = {
    "incepu": (57_946_113, 19_334_692_864),
    "gsta": (46_769_665, 16_468_475_904),
    "tau": (44_656_001, 15_893_991_424),
    "vit": (46_102_273, 16_864_247_808),
    "swin": (46_105_409, 16_345_202_688),
    "uniformer": (44_834_817, 16_386_424_832),
    "mlpmixer": (38_192_449, 14_586_740_736),
    "convmixer": (3_919_361, 5_523_668_992),
    "poolformer": (37_115_393, 14_012_121_088),
    "convnext": (37_313_921, 14_065_106_944),
    "van": (44_520_833, 15_893_856_256),
    "hornet": (45_738_305, 16_212_422_656),
    "moganet": (46_777_065, 16_460_771_328),
}


def test_every_translator_is_sized():
    assert sorted(COUNTS) == sorted(OPENSTL) == TRANSLATORS


@pytest.mark.parametrize("translator", TRANSLATORS)
def test_size_at_openstl_settings(translator):
    # on the meta device: shapes only, no memory, no arithmetic (~0.5 s per translator)
    with torch.device("meta"):
        model = SimVP(FrameSpec(1, 64, 64, 10, 10), SimVPArgs(translator=translator)).eval()
        frames = torch.empty(1, 10, 1, 64, 64)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model(frames, 10)
    macs = counter.get_total_flops() // 2
    assert (params, macs) == COUNTS[translator]
    openstl_params, openstl_macs = OPENSTL[translator]
    assert abs(params / 1e6 - openstl_params) / openstl_params < 0.02
    assert abs(macs / 1e9 - openstl_macs) / openstl_macs < 0.02


def _divergence_numpy(pred: np.ndarray, target: np.ndarray, tau: float) -> float:
    """Loops over (sample, frame difference, channel); float64."""
    b, t, c, h, w = pred.shape
    terms = []
    for i in range(b):
        for j in range(t - 1):
            for k in range(c):
                dp = (pred[i, j + 1, k] - pred[i, j, k]).ravel() / tau
                dq = (target[i, j + 1, k] - target[i, j, k]).ravel() / tau
                p = np.exp(dp - dp.max()) / np.exp(dp - dp.max()).sum()
                q = np.exp(dq - dq.max()) / np.exp(dq - dq.max()).sum()
                terms.append(np.sum(p * np.log(p / q)) / (h * w))
    return float(np.mean(terms))


def test_differential_divergence_matches_numpy():
    rng = np.random.default_rng(0)
    pred = rng.random((2, 4, 2, 3, 5))
    target = rng.random((2, 4, 2, 3, 5))
    got = differential_divergence(torch.tensor(pred), torch.tensor(target))
    assert got.item() == pytest.approx(_divergence_numpy(pred, target, 0.1), rel=1e-10)
    got = differential_divergence(torch.tensor(pred), torch.tensor(target), temperature=0.5)
    assert got.item() == pytest.approx(_divergence_numpy(pred, target, 0.5), rel=1e-10)
    # with one channel it is OpenSTL's value: the mean of p·log(p / (q + eps) + eps)
    p_ = torch.softmax(torch.tensor(pred[:, 1:, :1] - pred[:, :-1, :1]).flatten(2) / 0.1, -1)
    q_ = torch.softmax(torch.tensor(target[:, 1:, :1] - target[:, :-1, :1]).flatten(2) / 0.1, -1)
    openstl = (p_ * torch.log(p_ / (q_ + 1e-12) + 1e-12)).mean()
    one_channel = differential_divergence(
        torch.tensor(pred[:, :, :1]), torch.tensor(target[:, :, :1])
    )
    assert one_channel.item() == pytest.approx(openstl.item(), rel=1e-6)


def test_differential_divergence_edges():
    x = torch.rand(2, 5, 1, 4, 4, requires_grad=True)
    y = torch.rand(2, 5, 1, 4, 4)
    # frame differences equal up to a per-frame constant: the same distributions
    assert differential_divergence(y + torch.arange(5.0).reshape(1, 5, 1, 1, 1), y).abs() < 1e-6
    loss = differential_divergence(x, y)
    loss.backward()
    assert loss > 0 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert differential_divergence(x[:, :1], y[:, :1]).item() == 0.0
    with pytest.raises(ValueError, match="prediction"):
        differential_divergence(x, y[:, :4])


# ------------------------------------------------------------------ training at scale


def small_forecaster(translator: str, **model_fields):
    """The task module around a small SimVP (1×16×16, 3 → 3 frames)."""
    from stpdist.config import ModelConfig
    from stpdist.task import Forecaster

    backbone = dataclasses.asdict(small_args(translator))
    config = ModelConfig(name="simvp", backbone=backbone, **model_fields)
    return Forecaster(config, (1, 16, 16), 3, 3)


def test_bf16_through_the_trainer_on_cpu(tmp_path):
    import json

    from torch.utils.data import DataLoader, TensorDataset

    from stpdist.config import CheckpointConfig, OptimizerConfig
    from stpdist.trainer import Trainer

    torch.manual_seed(0)
    # gsta: the default translator; BatchNorm and depthwise convs under autocast
    module = small_forecaster("gsta", optimizer=OptimizerConfig(lr=3e-3), divergence_weight=0.1)
    dtypes = set()
    module.backbone.translator.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    frames = torch.rand(4, 6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(frames[:, :3].repeat(10, 1, 1, 1, 1), frames[:, 3:].repeat(10, 1, 1, 1, 1))
    trainer = Trainer(
        output_dir=str(tmp_path),
        max_epochs=1,
        mixed_precision="bf16",
        progress_bar=False,
        log_every_n_steps=1,
        checkpoint=CheckpointConfig(every_epoch=False),
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.fit(module, DataLoader(data, batch_size=4, shuffle=False))  # one batch, 10 times
    trainer.close()
    assert dtypes == {torch.bfloat16}  # autocast was on inside the model
    assert all(p.dtype == torch.float32 for p in module.parameters())  # fp32 master weights
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [x["train/loss"] for x in lines if "train/loss" in x]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert all(x["train/divergence"] > 0 for x in lines if "train/loss" in x)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


# the suite compiles with aot_eager: the same whole-graph capture by dynamo and the same
# AOT-autograd forward/backward graphs inductor receives, run by eager kernels (inductor on
# CPU: 50–160 s even for two translator blocks; helpers.INDUCTOR_OPT_IN)
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=INDUCTOR_OPT_IN)])
def test_compiled_training_step_matches_eager(backend):
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/platform")
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = small_forecaster("gsta", divergence_weight=0.1)  # TAU's extra loss term too
    inputs, targets = torch.rand(2, 3, 1, 16, 16), torch.rand(2, 3, 1, 16, 16)

    eager = module.training_step(inputs, targets)
    eager["loss"].backward()
    eager_grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)

    # fullgraph: a graph break anywhere in the step (task, backbone, loss) is an error
    step = torch.compile(module.training_step, backend=backend, fullgraph=True)
    compiled = step(inputs, targets)
    compiled["loss"].backward()
    for key in ("loss", "frames_loss", "divergence"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-6)
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bench_model_reports_time_memory_and_flops(capsys):
    from stpdist.bench import bench_model

    args = dataclasses.asdict(small_args("convmixer"))
    result = bench_model("simvp", (2, 3, 1, 16, 16), 3, 1, args, steps=2)
    printed = capsys.readouterr().out
    assert printed.startswith("simvp (convmixer)")
    assert all(word in printed for word in ("GMACs forward/sample", "step", "peak"))
    assert result["step_ms"] > 0 and result["peak_mb"] >= 0
    # the same counts taken directly from the backbone
    model = SimVP(SMALL_SPEC, small_args("convmixer"))
    assert result["params"] == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 3, 1, 16, 16), 3)
    assert result["gmacs_per_sample"] == counter.get_total_flops() / 2 / 1e9


def test_bench_cli_translator_option_sets_the_backbone_argument(monkeypatch):
    import stpdist.bench
    from stpdist.cli import main

    calls = []
    monkeypatch.setattr(stpdist.bench, "bench_model", lambda *a, **k: calls.append(a))
    argv = ["bench", "model", "simvp", "--translator", "gsta", "--shape", "2x3x1x16x16"]
    assert main(argv) == 0
    assert main([*argv[:3], "--backbone", '{"spatial_channels": 8}', "--translator", "tau"]) == 0
    assert calls[0][0] == "simvp" and calls[0][1] == (2, 3, 1, 16, 16)
    assert calls[0][4] == {"translator": "gsta"}
    assert calls[1][4] == {"spatial_channels": 8, "translator": "tau"}


# ------------------------------------------------------------------ user translators

USER_BLOCK = '''\
from torch import nn


class MyBlock(nn.Module):
    """Depthwise 5×5 conv, then a channel MLP; both residual."""

    def __init__(self, dim, settings):
        super().__init__()
        hidden = int(dim * settings.mlp_ratio)
        self.spatial = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.norm = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x):
        x = x + self.spatial(x)
        return x + self.mlp(self.norm(x))


NOT_A_BLOCK = 3
'''

USER_CONFIG = """\
trainer:
  output_dir: runs/custom
  max_steps: 2
  log_every_n_steps: 1
  progress_bar: false
data:
  root: data
  batch_size: 4
  num_input_frames: 4
  num_output_frames: 4
model:
  name: simvp
  patch_size: 2
  backbone:
    translator: my_blocks:MyBlock
    spatial_channels: 8
    temporal_channels: 16
    num_spatial_blocks: 2
    num_translator_blocks: 2
    mlp_ratio: 2.0
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`my_blocks.py` in a folder on sys.path (as PYTHONPATH=. would put it), cwd there,
    with 8 + 4 moving-digit sequences of 8 frames 1×32×32 in `data/`."""
    from stpdist.data.synthetic import write_moving_digits

    write_moving_digits(
        tmp_path / "data", {"train": 8, "val": 4}, num_frames=8, image_size=32, progress=False
    )
    (tmp_path / "my_blocks.py").write_text(USER_BLOCK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_blocks", raising=False)
    yield tmp_path
    sys.modules.pop("my_blocks", None)


def test_user_translator_from_an_import_path_trains_from_yaml(user_module, capsys):
    import json

    from safetensors.torch import load_file

    from stpdist.build import build_module
    from stpdist.cli import main
    from stpdist.config import load_config

    (user_module / "custom.yaml").write_text(USER_CONFIG)
    assert main(["train", "custom.yaml"]) == 0, capsys.readouterr().err
    run = user_module / "runs" / "custom"
    state = json.loads((run / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/loss" in x] == [1, 2]
    assert all(np.isfinite(x["train/loss"]) for x in lines if "train/loss" in x)
    # the translator is made of the user's blocks, and their weights were trained and saved
    import my_blocks

    module = build_module(load_config("custom.yaml"))
    blocks = [layers[0] for layers in module.backbone.translator.blocks]
    assert [type(b) for b in blocks] == [my_blocks.MyBlock] * 2
    saved = load_file(str(run / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert saved["backbone.translator.blocks.1.0.spatial.weight"].shape == (16, 1, 5, 5)
    assert not torch.equal(
        saved["backbone.translator.blocks.1.0.spatial.weight"],
        module.state_dict()["backbone.translator.blocks.1.0.spatial.weight"],
    )


@pytest.mark.parametrize(
    "path, error, message",
    [
        ("my_blocks:Missing", ImportError, "'my_blocks:Missing'.*has no 'Missing'"),
        ("no_such_module:MyBlock", ImportError, "cannot import module 'no_such_module'"),
        ("my_blocks:NOT_A_BLOCK", TypeError, "'my_blocks:NOT_A_BLOCK' is 3, not an nn.Module"),
        ("my_blocks:", ValueError, "expected an import path package.module:Class"),
        # a registered name exists only in its process: said (a plugins review's model
        # trained under one could not be loaded by the CLI, which could not say why)
        (
            "myblock",
            KeyError,
            "unknown SimVP translator 'myblock'.*or an import path.*exists "
            "only in the process that registered it",
        ),
    ],
)
def test_bad_translator_paths_are_named(user_module, path, error, message):
    with pytest.raises(error, match=message):
        SimVP(SMALL_SPEC, small_args(path))


def test_bad_translator_path_is_one_line_from_the_cli(user_module, capsys):
    from stpdist.cli import main

    (user_module / "custom.yaml").write_text(USER_CONFIG.replace("MyBlock", "MyBlok"))
    assert main(["train", "custom.yaml"]) == 2  # a config error, naming the key (was exit 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'my_blocks:MyBlok'" in err[0] and "has no 'MyBlok'" in err[0]
    assert "'model.backbone.translator' of simvp" in err[0]


def test_register_translator_adds_a_name(user_module, monkeypatch):
    from stpdist.models import translators

    monkeypatch.setattr(translators, "BLOCKS", dict(translators.BLOCKS))  # undone afterwards
    import my_blocks

    assert translators.register_translator("mine", my_blocks.MyBlock) is my_blocks.MyBlock
    model = SimVP(SMALL_SPEC, small_args("mine"))
    assert type(model.translator.blocks[0][0]) is my_blocks.MyBlock
    assert model(torch.rand(1, 3, 1, 16, 16), 3).shape == (1, 3, 1, 16, 16)
    translators.register_translator("mine", my_blocks.MyBlock)  # the same again: fine
    with pytest.raises(KeyError, match="'gsta' is taken by GSTABlock"):
        translators.register_translator("gsta", my_blocks.MyBlock)
    with pytest.raises(ValueError, match="non-empty name without ':'"):
        translators.register_translator("a:b", my_blocks.MyBlock)
    with pytest.raises(TypeError, match="nn.Module class"):
        translators.register_translator("three", 3)
