"""Coming from OpenSTL: checkpoints saved by its multi-GPU training and its EMA hook, the
frame shape its config files never hold, its published SimVP numbers, and the recipes that
say they follow it (configs/mmnist, configs/taxibj)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from safetensors.torch import load_file
from test_openstl_import import _fixture, _load64, _write_ckpt, _write_config

from stpdist.config import load_config

ROOT = Path(__file__).parent.parent
SHAPE_KEYS = ("in_shape", "pre_seq_length", "aft_seq_length")


def _run(tmp_path: Path, ckpt: Path, method: str, config: Path, out: str, *extra: str):
    args = ["import", "openstl", str(ckpt), "--method", method, "--config", str(config)]
    return run_cli(*args, "--out", str(tmp_path / out), *extra, cwd=tmp_path)


def _outputs(folder: Path, data: dict, t_in: int = 3) -> torch.Tensor:
    with torch.no_grad():
        module = _load64(folder).eval()
        return module(data["input"][:, :t_in], all_frames=True, clamp=False).predictions


# ---------------------------------------------------------------- wrappers and EMA
def test_ddp_wrapped_checkpoints_import(tmp_path):
    """OpenSTL before Lightning saved checkpoint.pth from the DDP-wrapped model (keys
    `module.…`); a Lightning state dict of a wrapped model holds `model.module.…`. The
    prefix is stripped when every key carries it, and said."""
    record, state, data = _fixture("predrnn")
    cfg = _write_config(tmp_path / "PredRNN.py", record["config"])
    pth = tmp_path / "checkpoint.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, pth)
    lightning = _write_ckpt(tmp_path / "l.ckpt", {f"module.{k}": v for k, v in state.items()})
    for ckpt, out in ((pth, "a"), (lightning, "b")):
        result = _run(tmp_path, ckpt, "PredRNN", cfg, out)
        assert result.returncode == 0, result.stderr
        assert "stripped the wrapper prefix 'module.' that every key carries" in result.stdout
        assert (_outputs(tmp_path / out, data) - data["outputs"]).abs().max() <= 1e-12
    # a prefix on some keys only is no wrapper's: refused, naming the tensor
    some = dict(state)
    some["module.conv_last.weight"] = some.pop("conv_last.weight")
    torch.save(some, tmp_path / "some.pth")
    result = _run(tmp_path, tmp_path / "some.pth", "PredRNN", cfg, "c")
    assert result.returncode == 2 and "'module.conv_last.weight'" in result.stderr


def _with_ema(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """`state` as OpenSTL's EMA hook leaves it: per parameter `a.b` a buffer `ema_a_b`
    (here twice the raw value, to tell them apart)."""
    out = {prefix + k: v for k, v in state.items()}
    out.update({f"{prefix}ema_{k.replace('.', '_')}": 2 * v for k, v in state.items()})
    return out


def test_ema_checkpoints_import_raw_weights_or_with_ema_the_averages(tmp_path):
    record, state, data = _fixture("convlstm")
    cfg = _write_config(tmp_path / "ConvLSTM.py", record["config"])
    pth = tmp_path / "ema.pth"
    torch.save(_with_ema(state, prefix="module."), pth)  # EMA hook under DDP
    raw = _run(tmp_path, pth, "ConvLSTM", cfg, "raw")
    assert raw.returncode == 0, raw.stderr
    assert f"left out the EMA weights of {len(state)} tensors" in raw.stdout
    assert (_outputs(tmp_path / "raw", data) - data["outputs"]).abs().max() <= 1e-12
    averaged = _run(tmp_path, pth, "ConvLSTM", cfg, "ema", "--ema")
    assert averaged.returncode == 0, averaged.stderr
    assert f"imported the EMA weights (OpenSTL's EMA hook) of {len(state)}" in averaged.stdout
    raw_w = load_file(str(tmp_path / "raw" / "model.safetensors"))
    ema_w = load_file(str(tmp_path / "ema" / "model.safetensors"))
    assert raw_w.keys() == ema_w.keys()
    assert all(torch.equal(ema_w[k], 2 * raw_w[k]) for k in raw_w)
    # --ema on a checkpoint without EMA weights: one line saying so
    plain = _write_ckpt(tmp_path / "plain.ckpt", state)
    result = _run(tmp_path, plain, "ConvLSTM", cfg, "none", "--ema")
    assert result.returncode == 2 and "--ema, but the checkpoint holds no EMA weights" in (
        result.stderr
    )


# ---------------------------------------------------------------- the frame shape
def test_shape_missing_from_config_is_said_and_given_by_options(tmp_path):
    """OpenSTL's config files never hold in_shape/pre/aft: the importer says it assumed
    Moving MNIST's; a SimVP 4→4 checkpoint then fails with an error that names the options,
    and --in-shape/--pre/--aft (or --dataset) import it."""
    record, state, data = _fixture("simvp_gsta")
    bare = {k: v for k, v in record["config"].items() if k not in SHAPE_KEYS}
    cfg = _write_config(tmp_path / "SimVP_gSTA.py", bare)
    ckpt = _write_ckpt(tmp_path / "s.ckpt", state)
    result = _run(tmp_path, ckpt, "SimVP", cfg, "a")
    assert result.returncode == 2
    assert "assumed in_shape, pre_seq_length, aft_seq_length of OpenSTL's Moving MNIST" in (
        result.stdout
    )
    assert "10→10 frames of 1×64×64" in result.stdout
    assert "model was built for 10→10 frames of 1×64×64" in result.stderr
    assert "--dataset NAME, or --in-shape T,C,H,W --pre N --aft M" in result.stderr
    result = _run(tmp_path, ckpt, "SimVP", cfg, "b", "--in-shape", "4,1,16,16", "--aft", "4")
    assert result.returncode == 0, result.stderr
    assert "assumed" not in result.stdout
    with torch.no_grad():
        out = _load64(tmp_path / "b").eval()(data["input"][:, :4], clamp=False).predictions
    assert (out - data["outputs"]).abs().max() <= 1e-12
    bad = _run(tmp_path, ckpt, "SimVP", cfg, "c", "--in-shape", "4,1,16", "--aft", "4")
    assert bad.returncode == 2 and "expected four positive sizes T,C,H,W" in bad.stderr


def test_dataset_option_gives_openstls_shape_and_root(tmp_path):
    record, state, _ = _fixture("convlstm")  # conv weights: the frame size is not in them
    bare = {k: v for k, v in record["config"].items() if k not in SHAPE_KEYS}
    cfg = _write_config(tmp_path / "ConvLSTM.py", bare)
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state)
    result = _run(tmp_path, ckpt, "ConvLSTM", cfg, "kth", "--dataset", "kth")
    assert result.returncode == 0, result.stderr
    assert "assumed" not in result.stdout
    config = yaml.safe_load((tmp_path / "kth" / "config.yaml").read_text())["data"]
    assert (config["root"], config["num_input_frames"], config["num_output_frames"]) == (
        "data/kth",
        10,
        20,
    )
    index = json.loads((tmp_path / "kth" / "index.json").read_text())
    assert index["shape"] == [30, 1, 128, 128]
    assert index["args"]["openstl"]["dataname"] == "kth"
    result = _run(tmp_path, ckpt, "ConvLSTM", cfg, "x", "--dataset", "cityscapes")
    assert result.returncode == 2 and "not an OpenSTL dataset name; valid: mmnist" in (
        result.stderr
    )


def test_checkpoint_hyper_parameters_give_the_shape_without_a_note(tmp_path):
    # a Lightning checkpoint's hyper_parameters hold in_shape & co.: nothing is assumed
    record, state, data = _fixture("predrnnv2")
    ckpt = _write_ckpt(tmp_path / "p.ckpt", state, hyper_parameters=record["config"])
    result = run_cli("import", "openstl", str(ckpt), "--method", "PredRNNv2", "--out",
                     str(tmp_path / "m"), cwd=tmp_path, check=True)  # fmt: skip
    assert "assumed" not in result.stdout


# ---------------------------------------------------------------- reading
class _Thing:
    """An object a weights-only load refuses (a class of this module)."""


def test_tensors_only_fallback_warns_in_one_clean_line(tmp_path):
    record, state, _ = _fixture("convlstm")
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state, hyper_parameters={"obj": _Thing()})
    cfg = _write_config(tmp_path / "ConvLSTM.py", record["config"])
    result = _run(tmp_path, ckpt, "ConvLSTM", cfg, "m")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "reading its tensors only" in line]
    assert len(lines) == 1, result.stderr
    assert "\x1b" not in result.stderr
    assert "(the first: test_openstl_migration._Thing); reading its tensors only" in lines[0]


# ---------------------------------------------------------------- reproduce
def test_simvp_gsta_numbers_stand_beside_the_simvp_recipe(tmp_path):
    from dataclasses import replace

    from stpdist.data.convert import convert
    from stpdist.data.sources.moving_mnist import MovingMnistNpy
    from stpdist.reproduce import openstl_differences, summarize

    np.save(tmp_path / "mnist_test_seq.npy", np.zeros((20, 2, 64, 64), np.uint8))
    npy = MovingMnistNpy(str(tmp_path / "mnist_test_seq.npy"))
    test = convert(npy, tmp_path / "mmnist", progress=False)["test"]
    recipe = ROOT / "configs" / "mmnist" / "simvp.yaml"
    assert openstl_differences(load_config(recipe), False, test) == []
    table = summarize("simvp", [{"mse_frame_raw": 30.0, "psnr": 22.0}], comparable=True)
    assert table["MSE (frame sum, raw)"]["openstl"] == 26.69
    assert table["PSNR"]["openstl"] == 22.78
    van = load_config(recipe, ["model.backbone.translator=van"])
    assert openstl_differences(van, False, replace(test)) == [
        "the numbers listed for simvp are OpenSTL's with the gsta translator, not van"
    ]


def test_reproduce_into_a_folder_holding_a_test_split_says_what_to_do(tmp_path):
    """Training generates data.synthesize's splits only into an empty folder, and has no
    --overwrite: the refusal says what to do there (shard and synth keep theirs)."""
    from stpdist.data.convert import occupied_advice, staged_output
    from stpdist.data.synthetic import write_moving_digits
    from stpdist.errors import OutputExists

    out = tmp_path / "out"
    write_moving_digits(out / "data", {"test": 2}, num_frames=10, image_size=32,
                        digit_size=12, progress=False)  # fmt: skip
    config = str(ROOT / "configs" / "mmnist" / "convlstm.yaml")
    result = run_cli("reproduce", config, "--seeds", "1", "--small", "--out", str(out),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "point data.root and data.synthesize.root to an empty one" in result.stderr
    assert "--splits val=1000,test=-1" in result.stderr and "--overwrite" not in result.stderr
    # stpdist train alike (it said "pass --overwrite", which it does not take)
    debug = str(ROOT / "configs" / "debug.yaml")
    result = run_cli("train", debug, f"data.root={out / 'data'}",
                     f"data.synthesize.root={out / 'data'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "--overwrite" not in result.stderr
    assert "point data.root and data.synthesize.root to an empty one" in result.stderr
    with pytest.raises(OutputExists, match=r"not empty; pass --overwrite to replace it"):
        with staged_output(out / "data", False, dataset=True):
            pass
    with pytest.raises(OutputExists, match=r"not empty; remove it first$"):
        with occupied_advice("remove it first"), staged_output(out / "data", False):
            pass


# ---------------------------------------------------------------- recipes
def test_mmnist_recipes_of_openstl_models_train_on_fresh_sequences():
    """OpenSTL's MovingMNIST training set draws new sequences for every item, whatever the
    method; every configs/mmnist recipe of a model OpenSTL trains does so too (TrajGRU,
    not in OpenSTL, trains on shards)."""
    fixed = {p.stem for p in (ROOT / "configs" / "mmnist").glob("*.yaml")
             if load_config(p).data.train_source != "moving_digits"}  # fmt: skip
    assert fixed == {"trajgru"}


def test_taxibj_simvp_warms_up_as_openstl_does():
    # OpenSTL's configs/taxibj/simvp/SimVP_gSTA.py: sched 'cosine', warmup_epoch = 5
    schedule = load_config(ROOT / "configs" / "taxibj" / "simvp.yaml").model.schedule
    assert (schedule.name, schedule.interval, schedule.warmup_steps) == ("cosine", "epoch", 5)
    assert (schedule.total_steps, schedule.min_lr) == (50, 1e-6)


def test_taxibj_schedule_figures_in_parity_md():
    """The per-epoch TaxiBJ cosine against OpenSTL's (timm's CosineLRScheduler: warm-up
    from 1e-5, then a cosine over all 50 epochs counted from epoch 0), at lr 1e-4, as
    parity.md states them."""
    from stpdist.task import lr_factor

    schedule = load_config(ROOT / "configs" / "taxibj" / "predrnn.yaml").model.schedule
    lr = 1e-4
    ours = lr_factor(schedule, lr, schedule.total_steps)

    def timm(epoch: int) -> float:
        if epoch < 5:
            return 1e-5 + epoch * (lr - 1e-5) / 5
        return 1e-6 + 0.5 * (lr - 1e-6) * (1 + math.cos(math.pi * epoch / 50))

    text = " ".join((ROOT / "docs" / "pages" / "project" / "parity.md").read_text().split())
    for epoch in (0, 5, 25):
        row = f"epoch {epoch}: {ours(epoch) * lr:.2e} against {timm(epoch):.2e}"
        assert row in text, row


def test_reproduce_into_an_earlier_calls_out_says_resume_or_another_out(tmp_path):
    """It read and described the data, then said "… or use another output_dir" (a config
    key reproduce does not take): now refused first, in its own flags."""
    out = tmp_path / "r1"
    (out / "seed0" / "checkpoints" / "step-00000008").mkdir(parents=True)
    config = str(ROOT / "configs" / "mmnist" / "convlstm.yaml")
    result = run_cli("reproduce", config, "--seeds", "1", "--small", "--out", str(out),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert f"--out {out} holds seed0 of an earlier call" in result.stderr
    assert "add --resume auto to continue it" in result.stderr and "output_dir" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["seed0"]  # no data read or made
