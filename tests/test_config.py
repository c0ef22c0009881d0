"""Config schema: overlays, overrides, errors naming keys; every shipped YAML is valid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stpdist.config import Config, ConfigError, load_config, to_yaml

# configs/sweeps/ holds wandb sweeps, not Configs: tests/test_sweep.py checks them
CONFIGS = sorted(
    p
    for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml")
    if p.parent.name != "sweeps"
)


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
        (
            ["trainer.nope=1"],
            "unknown key 'trainer.nope'; valid keys there: activation_checkpointing, channels_last, checkpoint",
        ),
        (["trainer.max_epochs=abc"], "bad value for 'trainer.max_epochs'"),
        (
            ["trainer.mixed_precision=fp8"],
            "'trainer.mixed_precision'.*expected one of \\['no', 'bf16', 'fp16'\\]",
        ),
        (["data.batch_size=0"], "'data.batch_size' is 0"),
        (["oops"], "not of the form"),
        (
            ["trainer.ema={decay:0.9}"],  # no space: one key `decay:0.9`; the list was empty
            "unknown key 'trainer.ema.decay:0.9'; valid keys there: decay, every_n_steps, "
            "start_step; YAML needs a space after the colon",
        ),
        # wandb's rules, said at config time (wandb said them at its start, naming no key)
        (["logging.wandb.project=a/b"], "'logging.wandb.project' is 'a/b'; expected a project"),
        (["logging.wandb.project='  '"], "'logging.wandb.project' is '  '; expected a project"),
        (["logging.wandb.project=" + "p" * 129], "'logging.wandb.project' is 'ppp"),
        (["logging.wandb.tags=[" + "t" * 65 + "]"], "'logging.wandb.tags' is \\['ttt"),
        (["logging.wandb.tags=[a,'']"], "'logging.wandb.tags' is \\['a', ''\\]; expected a"),
        (
            [
                "model.schedule.name=cosine",
                "model.schedule.total_steps=3",
                "model.schedule.warmup_steps=5",
            ],
            "'model.schedule.total_steps' is 3 with warmup_steps 5; expected more than the",
        ),  # fmt: skip
        (
            ["trainer.log_every_n_steps=2", "logging.trackers_every_n_steps=3"],
            "'logging.trackers_every_n_steps' is 3, not a multiple of 'trainer.log_every_n_steps' "
            "2: training scalars exist every 2 steps, so the trackers would get them every 6",
        ),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_a_saved_config_with_values_refused_since_2026_12_06_still_loads(tmp_path):
    """The checks added then (wandb's rules, the trackers' cadence, a cosine shorter than
    its warm-up) read what only a training uses: a checkpoint's config.yaml written before
    them still rebuilds its model (forecast, export, `stpdist.load` read it unchanged: its
    sha256 is in the manifest), and a training from it is refused naming the key."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "trainer:\n  log_every_n_steps: 2\nlogging:\n  trackers_every_n_steps: 3\n"
        "  wandb:\n    project: team/x\n    tags: ['']\nmodel:\n  schedule:\n"
        "    name: cosine\n    total_steps: 3\n    warmup_steps: 5\n"
    )
    assert load_config(path, saved=True).logging.wandb.project == "team/x"
    with pytest.raises(ConfigError, match="'logging.wandb.project' is 'team/x'"):
        load_config(path)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  batchsize: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "'data.batchsize'" in str(err.value)
    assert "batch_size" in str(err.value)


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    """In a process of its own (most CLI tests call `main` in the test process): stderr is
    a fresh interpreter's, import-time warnings included."""
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


FRAME_SHAPES = {
    "mmnist": (1, 64, 64),
    "kth": (1, 128, 128),
    "taxibj": (2, 32, 32),
    "weatherbench": (2, 32, 64),
    "sevir": (1, 384, 384),
}


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_every_shipped_config_builds_its_model(path):
    import contextlib

    import torch

    from stpdist.build import build_module

    cfg = load_config(path)
    shape = FRAME_SHAPES.get(path.parent.name)
    if shape is None:  # debug / quickstart: the synthetic data's frame size
        shape = (1, cfg.data.synthesize.image_size, cfg.data.synthesize.image_size)
    large = path.name.endswith("-large.yaml")  # shapes only: its 4 s of weights not drawn
    with torch.device("meta") if large else contextlib.nullcontext():
        module = build_module(cfg, shape)
    assert sum(p.numel() for p in module.parameters()) > 0


class _Reads:
    """A config section that records which of its fields are read, and by whom: reads made
    inside stpdist/config.py (the value checks) do not count as use."""

    def __init__(self, section, path: str, seen: set[str]) -> None:
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_seen", seen)

    def __getattr__(self, name):
        import dataclasses

        value = getattr(self._section, name)
        if name.startswith("__"):
            return value
        key = f"{self._path}{name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _Reads(value, key + ".", self._seen)
        if not sys._getframe(1).f_code.co_filename.endswith(f"stpdist{os.sep}config.py"):
            self._seen.add(key)
        return value


def _leaf_keys(section, prefix: str = "") -> set[str]:
    import dataclasses

    keys = set()
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys |= _leaf_keys(value, f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def _run_recorded(tmp_path, overrides: list[str], seen: set[str]) -> None:
    """Train, validate and predict on tiny synthetic data, with every config section handed
    over as a recorder, the way `stpdist train/predict` hand them."""
    from stpdist import build
    from stpdist.trainer import Trainer

    cfg = load_config(Path(__file__).parent.parent / "configs" / "debug.yaml", overrides)
    rec = _Reads(cfg, "", seen)
    trainer = Trainer(rec.trainer, logging=rec.logging)
    build.ensure_dataset(rec, trainer)
    module = build.build_module(rec)
    build.init_weights(rec, module, trainer.checkpoints)  # as cmd_train: model.init_weights
    val = build.eval_stream(rec, rec.data.val_split)
    trainer.fit(module, build.train_stream(rec), val)
    trainer.predict(module, build.eval_stream(rec, rec.data.test_split), out=tmp_path / "p")
    trainer.close()


def test_every_config_field_reaches_the_object_that_uses_it(tmp_path, monkeypatch):
    """Walks the schema: each field must be read by the code it configures during a real
    train → validate → predict run (two runs cover the branches of schedules and sampling).
    A field that is declared but never read (as `logging.colormap` once was) fails here."""
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "offline")
    # The per-lead-time figure takes no config (it gets the results and a path) and costs
    # seconds a validation to draw on these cores (one panel per metric: the threshold
    # scores add many): a small picture stands in, so the trackers still get an image
    # (test_visualize and test_cli check the figure itself).
    from PIL import Image

    drawn = []

    def plot_lead_times(results, path):
        drawn.append(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
        return Path(path)

    monkeypatch.setattr("stpdist.visualize.plot_lead_times", plot_lead_times)
    seen: set[str] = set()
    common = [
        f"trainer.output_dir={tmp_path / 'a'}",
        f"data.root={tmp_path / 'data'}",
        f"data.synthesize.root={tmp_path / 'data'}",
        "trainer.max_steps=4",
        "trainer.grad_clip_norm=1.0",
        "trainer.val_every_n_steps=2",
        "trainer.checkpoint.every_n_steps=3",
        "data.eval_batch_size=4",
        "data.synthesize.train=16",
        "logging.trackers_every_n_steps=2",
        "logging.num_samples=1",
        "logging.colormap=viridis",
        "model.evaluation.metric_thresholds=[128]",
    ]
    _run_recorded(
        tmp_path,
        [
            *common,
            "logging.trackers=[wandb,tensorboard]",
            "model.sampling.mode=linear",
            "model.schedule.name=cosine",
        ],
        seen,
    )
    _run_recorded(
        tmp_path,
        [
            *common,
            f"trainer.output_dir={tmp_path / 'b'}",
            "model.name=predrnnv2",
            "model.sampling.mode=reverse",
            "model.sampling.reverse_steps=[0,100]",
            "model.schedule.name=onecycle",
            "data.normalize=standardize",
            "model.evaluation.csi_pool_sizes=[4]",
            "model.evaluation.fss_sizes=[3]",
        ],
        seen,
    )
    assert len(drawn) == 4  # 2 validations a run
    schema = load_config(Path(__file__).parent.parent / "configs" / "debug.yaml")
    missing = sorted(_leaf_keys(schema) - seen)  # debug.yaml sets data.synthesize
    assert not missing, f"declared but never read: {missing}"


def test_validation_pictures_use_the_configured_colormap(tmp_path):
    """`logging.colormap` reaches the training-time pictures (it once did not)."""
    from PIL import Image

    from stpdist.tracking import Tracker

    frames = np.linspace(0, 1, 2 * 1 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    sample = [("s", frames, frames, frames)]
    pixels = {}
    for cmap in (None, "viridis"):
        cfg = load_config(None, [f"logging.colormap={cmap}" if cmap else "logging.num_samples=1"])
        tracker = Tracker(tmp_path / str(cmap), cfg.logging)
        tracker.is_main = True
        folder = tracker.log_samples(sample, {}, step=1)
        pixels[cmap] = np.asarray(Image.open(folder / "s.png").convert("RGB")).astype(int)
    gray, colour = pixels[None], pixels["viridis"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(colour[..., 0] - colour[..., 2]).max() > 50  # viridis: blue → yellow


def _bad_values(section, prefix: str = ""):
    """(key, a value its declared check or type refuses) for every checked or Literal field."""
    import dataclasses
    import typing

    from stpdist import config as schema

    bad_for = {
        schema._positive: "0",
        schema._non_negative: "-1",
        schema._positive_number: "-1",
        schema._probability: "2",
        schema._not_empty: "''",
        schema._colormap: "nope",
    }
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key = f"{prefix}{f.name}"
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _bad_values(value, key + ".")
        elif f.metadata.get("check") in bad_for:
            yield key, bad_for[f.metadata["check"]]
        elif typing.get_origin(hints[f.name]) is typing.Literal:
            yield key, "bogus"


BAD = sorted(_bad_values(load_config(CONFIGS[0].parent / "debug.yaml")))


def test_the_bad_value_walk_covers_the_schema():
    assert len(BAD) >= 35, BAD  # every checked and every Literal field of the schema
    assert ("trainer.grad_clip_norm", "-1") in BAD and ("logging.colormap", "nope") in BAD


@pytest.mark.parametrize("key, value", BAD, ids=[k for k, _ in BAD])
def test_every_bad_value_is_one_line_naming_the_key(key, value):
    debug = CONFIGS[0].parent / "debug.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(debug, [f"{key}={value}"])
    message = str(err.value)
    assert key in message and "\n" not in message, message


def test_yaml_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  max_epochs: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML \(line 3, column 6\)"):
        load_config(path)


def test_train_without_a_config_names_only_the_config(tmp_path):
    from conftest import run_cli

    proc = run_cli("train", cwd=tmp_path)
    assert proc.returncode == 2
    assert "required: config" in proc.stderr and "overrides" not in proc.stderr.splitlines()[-1]


def test_mixed_precision_no_survives_yaml_reading_it_as_false(tmp_path):
    """YAML 1.1 reads a bare `no` as false; `mixed_precision: no` still means "no"."""
    root = Path(__file__).parent.parent
    text = (root / "configs" / "debug.yaml").read_text()
    path = tmp_path / "no.yaml"
    path.write_text(text.replace("trainer:", "trainer:\n  mixed_precision: no", 1))
    assert load_config(path).trainer.mixed_precision == "no"
    override = load_config(root / "configs" / "debug.yaml", ["trainer.mixed_precision=no"])
    assert override.trainer.mixed_precision == "no"
