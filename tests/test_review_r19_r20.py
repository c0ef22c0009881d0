"""A review of the zoo (R19) and command-line (R20) reviews' fixes: what they refused that
is valid, and what their new messages point at.

- an index.json that is not a shard split's (a web project's, a notebook's) in a folder
  above `--out` made `forecast`/`predict`/`export` refuse `--out` as "in a dataset split";
- an unknown flag or an override given to a command that takes none pointed at
  `stpdist --help`, which lists commands, not the command's options;
- `--resume last` lost the hint that `--resume auto` goes on from the newest checkpoint.

Every check is in this process: `check_output_folder` itself, or the CLI's `main`
(`run_cli`) refusing before any work."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from stpdist.data.synthetic import write_moving_digits
from stpdist.errors import InputError
from stpdist.inference import check_output_folder


def test_an_index_json_that_is_no_split_above_out_is_no_dataset(tmp_path, monkeypatch):
    """Only a shard split's index.json (its `split` and `shards`) makes a folder a dataset."""
    project = tmp_path / "site"
    project.mkdir()
    (project / "index.json").write_text(json.dumps({"name": "site", "pages": ["a.html"]}))
    monkeypatch.chdir(project)
    out = project / "forecasts"
    assert check_output_folder(out, overwrite=False) == out
    assert not out.exists()
    # a real split above (or below) --out is still refused, --overwrite or not
    write_moving_digits(
        tmp_path / "ds",
        {"train": 0, "val": 0, "test": 2},
        num_frames=2,
        image_size=8,
        digit_size=4,
        progress=False,
    )
    for inside in (tmp_path / "ds" / "test" / "x", tmp_path / "ds"):
        with pytest.raises(InputError, match="is or holds the dataset split"):
            check_output_folder(inside, overwrite=True)
    # a split whose index.json is damaged is still a split: its shards stay protected
    (tmp_path / "ds" / "test" / "index.json").write_text("{not json")
    with pytest.raises(InputError, match="is or holds the dataset split"):
        check_output_folder(tmp_path / "ds" / "test", overwrite=True)


@pytest.mark.parametrize(
    "argv, command",
    [
        (("train", "c.yaml", "--bogus"), "stpdist train"),
        (("synth", "moving-digits", "--out", "x", "a=1"), "stpdist synth"),
        (("shard", "arrays", "src", "--out", "y", "--bogus"), "stpdist shard arrays"),
    ],
)
def test_a_flag_error_points_at_the_commands_own_help(tmp_path, argv, command):
    proc = run_cli(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"{command}: error: "), line
    assert line.endswith(f"(`{command} --help` lists the options)"), line
    assert not any(tmp_path.iterdir())


def test_resume_last_says_auto_goes_on_from_the_newest(tmp_path):
    (tmp_path / "c.yaml").write_text("trainer: {output_dir: run}\n")
    proc = run_cli("train", "c.yaml", "--resume", "last", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "to go on from the newest checkpoint, --resume auto" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_synthesizing_into_the_working_folder_names_data_root(tmp_path):
    """`data.root: .` with --synthesize: refused by its key before any digit is drawn (the
    swap would move the working folder away), not as an `--out` the user never gave."""
    (tmp_path / "c.yaml").write_text(
        "trainer: {output_dir: run, max_steps: 1, max_epochs: null, progress_bar: false}\n"
        "data: {root: ., num_input_frames: 2, num_output_frames: 2,\n"
        "  synthesize: {train: 4, val: 2, test: 2, num_frames: 4, image_size: 8, digit_size: 4}}\n"
        "model: {name: convlstm, backbone: {hidden_channels: [2], kernel_size: 1}}\n"
    )
    proc = run_cli("train", "c.yaml", "--synthesize", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("stpdist: config error: 'data.root' is ., the current folder"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_backbone_lists_from_python_as_tuples_or_omegaconf_containers():
    """`model.backbone` set from Python: a tuple, or OmegaConf's own containers, are lists
    as OmegaConf takes them (R20's shape check refused both as "not a list")."""
    from omegaconf import OmegaConf

    from stpdist.config import ConfigError, backbone_config, load_config

    cfg = load_config(None, ["model.name=convlstm"])
    for given in (
        {"hidden_channels": (8, 8), "kernel_size": 3},
        OmegaConf.create({"hidden_channels": [8, 8], "kernel_size": 3}),
    ):
        cfg.model.backbone = given
        assert backbone_config(cfg.model).hidden_channels == [8, 8]
    cfg.model.backbone = {"hidden_channels": "8,8"}  # text is still refused by its key
    with pytest.raises(ConfigError, match="'model.backbone.hidden_channels' is \"8,8\""):
        backbone_config(cfg.model)
