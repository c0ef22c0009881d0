"""Config schema: overlays, overrides, errors naming keys; every shipped YAML is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stpdist.config import Config, ConfigError, load_config, to_yaml

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_defaults_overlay_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_epochs: 3\nmodel:\n  backbone:\n    hidden_channels: [4, 4]\n")
    cfg = load_config(path, ["data.batch_size=5", "trainer.checkpoint.keep_last=7"])
    assert isinstance(cfg, Config)
    assert cfg.trainer.max_epochs == 3 and cfg.data.batch_size == 5
    assert cfg.trainer.checkpoint.keep_last == 7
    assert cfg.model.backbone == {"hidden_channels": [4, 4]}
    assert cfg.trainer.seed == 0  # a default untouched
    assert load_config(None, []).trainer.mixed_precision == "no"
    # the resolved YAML round-trips
    again = tmp_path / "again.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(again) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.nope=1"], "unknown key 'trainer.nope'; valid keys there: checkpoint"),
        (["trainer.max_epochs=abc"], "bad value for 'trainer.max_epochs'"),
        (["trainer.mixed_precision=fp8"], "expected one of no, bf16, fp16"),
        (["data.batch_size=0"], "'data.batch_size' is 0"),
        (["oops"], "not of the form"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  batchsize: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "'data.batchsize'" in str(err.value)
    assert "batch_size" in str(err.value)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    load_config(path)


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    config = Path(__file__).parent.parent / "configs" / "debug.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "stpdist", "train", str(config), "trainer.max_epoch=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.max_epoch" in lines[0] and "max_epochs" in lines[0]


FRAME_SHAPES = {"mmnist": (1, 64, 64), "kth": (1, 128, 128), "taxibj": (2, 32, 32)}


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_every_shipped_config_builds_its_model(path):
    from stpdist.build import build_module

    cfg = load_config(path)
    shape = FRAME_SHAPES.get(path.parent.name)
    if shape is None:  # debug / quickstart: the synthetic data's frame size
        shape = (1, cfg.data.synthesize.image_size, cfg.data.synthesize.image_size)
    module = build_module(cfg, shape)
    assert sum(p.numel() for p in module.parameters()) > 0
