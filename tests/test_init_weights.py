"""Fine-tuning from weights (`model.init_weights`) and loading a model folder in float64.

An OpenSTL fixture (tests/fixtures/openstl) becomes a model folder through the real
`stpdist import openstl`; `stpdist train` then starts from it on tiny synthetic digits.
"""

from __future__ import annotations

import json
import pprint
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_cli, run_ranks
from safetensors.torch import load_file, save_file

import stpdist
from stpdist import build
from stpdist.config import load_config
from stpdist.data.loading import LoaderContext
from stpdist.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "openstl"


def _import(tmp_path: Path, name: str) -> Path:
    """The model folder `stpdist import openstl` makes of fixture `name` (float64 weights)."""
    record = json.loads((FIXTURES / f"{name}.json").read_text())
    data = load_file(str(FIXTURES / f"{name}.safetensors"))
    state = {f"model.{k.removeprefix('openstl.')}": v for k, v in data.items()
             if k.startswith("openstl.")}  # fmt: skip
    ckpt = tmp_path / f"{name}.ckpt"
    torch.save({"state_dict": state}, ckpt)
    config = tmp_path / f"{name}.py"
    config.write_text("".join(f"{k} = {pprint.pformat(v)}\n" for k, v in record["config"].items()))
    out = tmp_path / f"imported-{name}"
    run_cli("import", "openstl", str(ckpt), "--method", record["method"], "--config",
            str(config), "--out", str(out), cwd=tmp_path, check=True)  # fmt: skip
    return out


def _config(tmp_path: Path, model_folder: Path, **model) -> Path:
    """configs/debug.yaml adapted to the fixtures' 16×16 frames (4 → 4): 4 training
    sequences in one batch (one step an epoch), the imported model's backbone, a loss
    logged every step."""
    cfg = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
    data = tmp_path / "data"
    cfg["trainer"].update(output_dir=str(tmp_path / "run"), log_every_n_steps=1)
    cfg["data"]["root"] = str(data)
    cfg["data"]["synthesize"].update(
        root=str(data), train=4, val=4, test=4, num_frames=8, image_size=16, digit_size=8
    )
    imported = yaml.safe_load((model_folder / "config.yaml").read_text())["model"]
    cfg["model"] = {
        "name": imported["name"],
        "backbone": imported["backbone"],
        "init_weights": str(model_folder),
        **model,
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _loss(module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    module.train()
    with torch.no_grad():
        step = module.training_step(inputs, targets)
    return float(step["loss"] if isinstance(step, dict) else step)


def test_fine_tuning_starts_from_the_imported_openstl_weights(tmp_path):
    folder = _import(tmp_path, "simvp_gsta")
    config = _config(tmp_path, folder)
    result = run_cli("train", str(config), cwd=tmp_path, check=True)
    assert f"initialised the model from {folder / 'model.safetensors'}" in result.stdout
    losses = _train_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2]  # step, schedule and data position started from 0

    # the imported model's loss on the same batch: the 4 training sequences are the first
    # (and only) batch of the epoch, whatever their order (a mean; BatchNorm's statistics
    # over the batch do not depend on the order either)
    cfg = load_config(config)
    inputs, targets, _ = next(iter(build.eval_stream(cfg, "train").iterate(LoaderContext())))
    assert len(inputs) == 4
    imported = _loss(stpdist.load(folder), inputs, targets)
    assert losses[1] == pytest.approx(imported, rel=1e-6)  # equal here; order of sums aside
    # which a random initialisation does not give: the comparison can fail
    torch.manual_seed(cfg.trainer.seed)
    assert abs(_loss(build.build_module(cfg), inputs, targets) - imported) > 1e-3 * imported

    # the run's saved config records where its weights came from; its checkpoints are a
    # model folder of their own (fine-tuning can chain)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["init_weights"] == str(folder)
    module = build.build_module(cfg)
    chained = load_config(config, [f"model.init_weights={tmp_path / 'run'}"])
    loaded = build.init_weights(chained, module)
    assert loaded.parent.parent.name == "checkpoints"
    for name, tensor in load_file(str(loaded)).items():
        assert torch.equal(module.state_dict()[name], tensor), name


@pytest.mark.multiprocess
def test_fine_tuning_on_two_ranks_starts_from_the_imported_weights(tmp_path):
    """Every rank loads the weights before the model is wrapped: 2 ranks × batch 2 take the
    same first step as the imported model on all 4 sequences (IncepU normalises per
    sample, so the mean of the ranks' losses is the loss over the 4)."""
    folder = _import(tmp_path, "simvp_incepu")
    config = _config(tmp_path, folder)
    proc = run_ranks(["-m", "stpdist", "train", str(config), "data.batch_size=2"], 2, cwd=tmp_path)
    assert proc.stdout.count("initialised the model from") == 1  # said once, by rank 0
    cfg = load_config(config)
    inputs, targets, _ = next(iter(build.eval_stream(cfg, "train").iterate(LoaderContext())))
    imported = _loss(stpdist.load(folder), inputs, targets)
    assert _train_losses(tmp_path / "run")[1] == pytest.approx(imported, rel=1e-6)


def test_a_folder_of_another_architecture_is_refused_naming_the_key(tmp_path):
    convlstm = _import(tmp_path, "convlstm")
    simvp = _import(tmp_path, "simvp_gsta")
    other_backbone = _config(tmp_path, simvp, init_weights=str(convlstm))
    result = run_cli("train", str(other_backbone), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{convlstm / 'config.yaml'} has model.name 'convlstm', this config 'simvp'" in (
        result.stderr
    )
    # the folder's weights file named itself: checked as the folder is (it was not)
    weights_file = _config(tmp_path, simvp, init_weights=str(convlstm / "model.safetensors"))
    result = run_cli("train", str(weights_file), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "has model.name 'convlstm', this config 'simvp'" in result.stderr
    wider = yaml.safe_load(other_backbone.read_text())
    wider["model"].update(init_weights=str(simvp))
    wider["model"]["backbone"]["temporal_channels"] = 32
    other_args = tmp_path / "wider.yaml"
    other_args.write_text(yaml.safe_dump(wider))
    result = run_cli("train", str(other_args), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "has model.backbone.temporal_channels 16, this config 32" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained, nothing saved
    # dropout rates are no architecture: a fine-tuning changes them routinely (a review:
    # refused as "another architecture", the weights file the only way round, past checks)
    from stpdist.config import ModelConfig, architecture_difference

    theirs = {"name": "simvp", "backbone": {"drop": 0.0, "drop_path": 0.0}}
    ours = ModelConfig(name="simvp", backbone={"drop": 0.1, "drop_path": 0.2})
    assert architecture_difference(ours, theirs) is None
    ours = ModelConfig(name="predformer", backbone={"dropout": 0.1, "drop_path_rate": 0.1,
                                                    "attention_dropout": 0.1})  # fmt: skip
    assert architecture_difference(ours, {"name": "predformer"}) is None


def test_resume_wins_over_init_weights(tmp_path):
    folder = _import(tmp_path, "simvp_gsta")
    config = _config(tmp_path, folder)
    run_cli("train", str(config), "trainer.max_epochs=1", cwd=tmp_path, check=True)
    # without --resume: refused before the weights are loaded (a review saw "initialised the
    # model from …" said of a run then refused)
    again = run_cli("train", str(config), "trainer.max_epochs=1", cwd=tmp_path)
    assert again.returncode == 2 and "holds checkpoints of an earlier run" in again.stderr
    assert "initialised the model" not in again.stdout
    shutil.rmtree(folder)  # a resume never reads them: it continues from its checkpoint
    result = run_cli("train", str(config), "--resume", "auto", cwd=tmp_path, check=True)
    said = [line for line in result.stdout.splitlines() if "init_weights" in line]
    assert len(said) == 1, result.stdout
    assert f"model.init_weights {folder} is not applied" in said[0]
    assert sorted(_train_losses(tmp_path / "run")) == [1, 2]
    # a fresh start with them gone is an error naming the key and the path
    fresh = run_cli("train", str(config), f"trainer.output_dir={tmp_path / 'new'}", cwd=tmp_path)
    assert fresh.returncode == 2
    assert f"model.init_weights: {folder} does not exist" in fresh.stderr


def _module_and_config(tmp_path: Path, weights: Path):
    folder = _import(tmp_path, "simvp_gsta")
    cfg = load_config(_config(tmp_path, folder), [f"model.init_weights={weights}"])
    return build.build_module(cfg, (1, 16, 16)), cfg, load_file(str(folder / "model.safetensors"))


def test_bad_tensors_are_input_errors_naming_tensor_and_file(tmp_path):
    weights = tmp_path / "w.safetensors"
    module, cfg, tensors = _module_and_config(tmp_path, weights)
    name = "backbone.translator.blocks.0.0.norm1.weight"
    assert name in tensors
    for change, words in (
        (lambda t: t.pop(name), f"lacks tensor '{name}'"),
        (lambda t: t.update(extra=torch.zeros(2)), "holds tensor 'extra'"),
        (lambda t: t.update({name: torch.zeros(3)}), f"tensor '{name}' in {weights} has shape (3,)"),
        (lambda t: t[name].fill_(float("nan")), f"tensor '{name}' in {weights} holds NaN"),
    ):  # fmt: skip
        broken = {k: v.clone() for k, v in tensors.items()}
        change(broken)
        save_file(broken, str(weights))
        with pytest.raises(InputError, match="model.init_weights") as caught:
            build.init_weights(cfg, module)
        assert words in str(caught.value) and str(weights) in str(caught.value)
    # a pickled checkpoint is refused by name, never unpickled
    pickled = tmp_path / "w.ckpt"
    torch.save(tensors, pickled)
    cfg.model.init_weights = str(pickled)
    with pytest.raises(InputError, match="not a .safetensors file.*stpdist import openstl"):
        build.init_weights(cfg, module)


def test_float64_model_folder_loads_bitwise(tmp_path):
    """`stpdist.load(dtype=float64)` casts the module before loading: float64 weights keep
    every bit (they once went through float32 first)."""
    folder = _import(tmp_path, "simvp_gsta")
    saved = load_file(str(folder / "model.safetensors"))
    assert saved["backbone.translator.blocks.0.0.norm1.weight"].dtype == torch.float64
    module = stpdist.load(folder, dtype=torch.float64)
    state = module.state_dict()
    for name, tensor in saved.items():
        assert state[name].dtype == tensor.dtype
        assert torch.equal(state[name], tensor), name


def test_a_checkpoint_trained_with_ema_gives_its_averaged_weights(tmp_path):
    """As `stpdist.load` does: with `trainer.ema` the average is the model."""
    folder = _import(tmp_path, "simvp_gsta")
    config = _config(tmp_path, folder)
    run_cli("train", str(config), "trainer.ema.decay=0.5", cwd=tmp_path, check=True)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    cfg = load_config(config, [f"model.init_weights={ckpt}"])
    module = build.build_module(cfg)
    assert build.init_weights(cfg, module) == ckpt / "ema.safetensors"
    state, average = module.state_dict(), load_file(str(ckpt / "ema.safetensors"))
    raw = load_file(str(ckpt / "model.safetensors"))
    assert any(not torch.equal(average[n], raw[n]) for n in average)  # they do differ
    for name, tensor in raw.items():
        assert torch.equal(state[name], average.get(name, tensor)), name


def test_resume_or_validate_with_another_architecture_is_one_line_naming_the_key(tmp_path):
    """A checkpoint loaded into a model of other layers (the config changed since the run)
    is an input error in one line, naming the tensor and the config key that differs, and
    the run's files stay as they were."""
    debug = str(ROOT / "configs" / "debug.yaml")
    run_cli(
        "train", debug, "trainer.max_epochs=1", "logging.num_samples=0", cwd=tmp_path, check=True
    )
    checkpoints = tmp_path / "runs" / "debug" / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    changed = "model.backbone.hidden_channels=[8,4]"
    for args in (("train", debug, "--resume", "auto", changed), ("validate", debug, changed)):
        proc = run_cli(*args, "trainer.max_epochs=2", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert "model.safetensors does not fit this model (Forecaster)" in line, line
        assert "has model.backbone.hidden_channels [8, 8], this config [8, 4]" in line, line
    assert sorted(p.name for p in checkpoints.iterdir()) == before
