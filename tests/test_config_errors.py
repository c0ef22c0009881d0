"""Config errors in Optional sections and for values of the wrong shape: one line naming
the file (or override), the full dotted key, what is valid there and what was given."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ROOT
from helpers import said_warnings

from stpdist.config import (
    CheckpointConfig,
    ConfigError,
    EarlyStoppingConfig,
    EmaConfig,
    SynthConfig,
    TrainerConfig,
    WandbConfig,
    load_config,
)


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _message(tmp_path, text: str | None, overrides: list[str] = ()) -> str:
    path = None
    if text is not None:
        path = tmp_path / "t.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, list(overrides))
    message = str(err.value)
    assert "\n" not in message and "'?'" not in message, message
    return message


@pytest.mark.parametrize(
    "text, override, key, cls, close",
    [
        ("trainer:\n  ema:\n    decy: 0.9\n", "trainer.ema.decy=0.9", "trainer.ema.decy", EmaConfig, "decay"),
        (
            "trainer:\n  early_stopping:\n    patiense: 3\n",
            "trainer.early_stopping.patiense=3",
            "trainer.early_stopping.patiense",
            EarlyStoppingConfig,
            "patience",
        ),
        (
            "data:\n  synthesize:\n    num_digit: 3\n",
            "data.synthesize.num_digit=3",
            "data.synthesize.num_digit",
            SynthConfig,
            "num_digits",
        ),
        ("trainer:\n  max_epoch: 3\n", "trainer.max_epoch=3", "trainer.max_epoch", TrainerConfig, "max_epochs"),
    ],
)  # fmt: skip
def test_unknown_key_lists_the_keys_of_its_section_optional_ones_too(
    tmp_path, text, override, key, cls, close
):
    """An Optional section is None in the schema's defaults: its valid keys come from its
    dataclass, not from the (empty) default, in a file and in an override alike."""
    for message in (_message(tmp_path, text), _message(tmp_path, None, [override])):
        expected = f"unknown key '{key}'; valid keys there: {', '.join(sorted(_names(cls)))}"
        assert expected in message, message
        assert message.endswith(f"did you mean '{close}'?"), message
    assert _message(tmp_path, text).startswith(f"{tmp_path / 't.yaml'}: ")


def test_unknown_key_without_a_close_match_suggests_nothing(tmp_path):
    message = _message(tmp_path, "trainer:\n  ema:\n    zzz: 1\n")
    assert message.endswith("valid keys there: decay, every_n_steps, start_step"), message


def test_a_key_in_the_wrong_section_names_where_it_is(tmp_path):
    """`trainer.batch_size` got the trainer's list alone (a config review): where a key of
    that name is, it is named, in a file and in an override alike; a close match beside it
    wins."""
    for message in (_message(tmp_path, "trainer:\n  batch_size: 4\n"),
                    _message(tmp_path, None, ["trainer.batch_size=4"])):  # fmt: skip
        assert message.endswith("; 'batch_size' is 'data.batch_size'"), message
    message = _message(tmp_path, None, ["data.seed=3"])
    assert message.endswith("; 'seed' is 'trainer.seed' or 'data.synthesize.seed'"), message
    assert _message(tmp_path, None, ["data.lr=1"]).endswith("'lr' is 'model.optimizer.lr'")
    message = _message(tmp_path, None, ["trainer.max_epoch=3"])
    assert message.endswith("did you mean 'max_epochs'?"), message
    message = _message(tmp_path, None, ["trainer.model=1"])  # a top-level section: no hint
    assert "'model' is" not in message, message
    message = _message(tmp_path, None, ["trainer.optimizer.lr=0.1"])  # a section elsewhere
    assert message.endswith("; 'optimizer' is 'model.optimizer'"), message


SECTIONS = [  # (dotted key, YAML value, how it is shown, its dataclass, Optional)
    ("trainer.ema", "true", "true", EmaConfig, True),
    ("trainer.checkpoint", "[1]", "[1]", CheckpointConfig, False),
    ("logging.wandb", "offline", '"offline"', WandbConfig, False),
    ("data.synthesize", "5", "5", SynthConfig, True),
    ("trainer.early_stopping", "3", "3", EarlyStoppingConfig, True),
    ("trainer", "5", "5", TrainerConfig, False),
    ("trainer.checkpoint", "null", "null", CheckpointConfig, False),
]


def _nested(key: str, value: str) -> str:
    """`a.b: v` as the nested YAML mapping `a: {b: v}`."""
    text = value
    for part in reversed(key.split(".")):
        text = f"{{{part}: {text}}}"
    return text[1:-1] + "\n"


@pytest.mark.parametrize("key, value, shown, cls, optional", SECTIONS)
def test_a_section_given_a_value_names_key_expected_keys_and_value(
    tmp_path, key, value, shown, cls, optional
):
    expected = (
        f"'{key}' is {shown}; expected a mapping of {cls.__name__}'s keys "
        f"({', '.join(_names(cls))}){' or null' if optional else ''}"
    )
    in_file = _message(tmp_path, _nested(key, value))
    assert in_file == f"{tmp_path / 't.yaml'}: {expected}", in_file
    in_override = _message(tmp_path, None, [f"{key}={value}"])
    assert in_override == f"override '{key}={value}': {expected}", in_override


@pytest.mark.parametrize(
    "override, expected",
    [
        ("logging.trackers=wandb", "'logging.trackers' is \"wandb\"; expected a list"),
        ("trainer.fsdp_wrap=Cell", "'trainer.fsdp_wrap' is \"Cell\"; expected a list or null"),
        ("model.sampling.reverse_steps={a: 1}", "'model.sampling.reverse_steps' is {\"a\": 1}"),
        ("model.backbone=[1]", "'model.backbone' is [1]; expected a mapping"),
    ],
)
def test_a_list_or_mapping_given_another_shape_names_the_key(tmp_path, override, expected):
    assert expected in _message(tmp_path, None, [override])


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "trainer: {max_epochs: 3}\ndata: {synthesize: '${trainer.max_epochs}'}\n",
            "'data.synthesize' is ${trainer.max_epochs}, which is 3; expected a mapping of "
            f"SynthConfig's keys ({', '.join(_names(SynthConfig))})",
        ),
        (
            "trainer: {checkpoint: '${data.root}'}\ndata: {root: data/x}\n",
            "'trainer.checkpoint' is ${data.root}, which is \"data/x\"; expected a mapping of "
            f"CheckpointConfig's keys ({', '.join(_names(CheckpointConfig))})",
        ),
    ],
)
def test_a_section_interpolated_to_another_kind_of_value_names_the_key(tmp_path, text, expected):
    """OmegaConf resolves interpolations after the merge, and its error there names no key."""
    assert _message(tmp_path, text) == expected


def test_well_shaped_sections_still_load(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("trainer:\n  ema:\n    decay: 0.5\n  early_stopping: null\n")
    cfg = load_config(path, ["data.synthesize=null", "trainer.early_stopping.patience=2"])
    assert cfg.trainer.ema == EmaConfig(decay=0.5) and cfg.data.synthesize is None
    assert cfg.trainer.early_stopping == EarlyStoppingConfig(patience=2)


@pytest.mark.parametrize("key", ["csi_pool_sizes", "fss_sizes"])
def test_neighbourhood_scores_without_thresholds_are_refused(tmp_path, key):
    """They are computed at the thresholds: without any, they were accepted and silently
    not reported."""
    message = _message(tmp_path, None, [f"model.evaluation.{key}=[4]"])
    assert f"'model.evaluation.{key}' is [4] without 'model.evaluation.metric_thresholds'" in (
        message
    )


def test_a_dotted_class_path_as_the_model_suggests_the_colon_form(tmp_path):
    """LightningCLI names a class `pkg.module.Class`; stpdist's import paths put a colon
    before the class. The refusal listed the registry only."""
    message = _message(tmp_path, None, ["model.name=my_pkg.models.Task"])
    assert message.endswith("import path package.module:Class (did you mean my_pkg.models:Task?)")
    assert "did you mean" not in _message(tmp_path, None, ["model.name=convlsmt"])


def test_on_and_off_unquoted_are_the_words_the_docs_give(tmp_path):
    """YAML 1.1 reads a bare `on` as true: `model.fused_kernels: on`, as the docs write it,
    was refused ("Invalid value 'True'"), in a file and as an override."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: convlstm, fused_kernels: on}\ntrainer: {mixed_precision: no}\n")
    assert load_config(path).model.fused_kernels == "on"
    assert load_config(None, ["model.fused_kernels=off"]).model.fused_kernels == "off"
    assert load_config(None, ["model.fused_kernels=on"]).model.fused_kernels == "on"


EARLIER_LAYOUT = """\
trainer: {output_dir: run_full, max_epochs: 2, log_every_n_steps: 2}
data: {root: data, batch_size: 4, num_input_frames: 4, num_output_frames: 4}
model:
  name: predrnnv2
  backbone: {hidden_channels: [8, 8]}
  optimizer: adamw
  lr: 0.003
  weight_decay: 0.01
  lr_schedule: cosine
  warmup_steps: 5
  total_steps: 100
  clamp_output: false
  scheduled_sampling: reverse
  sampling_start: 0.5
  sampling_decay: 2.0e-05
  sampling_stop_step: 500
  reverse_sampling_steps: [100, 200]
  reverse_sampling_alpha: 50.0
  metric_thresholds: [0.5]
  aux_loss_weight: 0.2
logging:
  wandb: {mode: disabled, project: stpdist, log_every_n_steps: 4}
"""


@pytest.fixture
def said():
    with said_warnings() as lines:
        yield lines


def test_a_config_in_the_layout_before_2026_12_03_is_read_as_today(tmp_path, said):
    """A checkpoint's config.yaml from before the layout of 2026-12-03 failed export and
    forecast ("'model.optimizer' is "adam"; expected a mapping"), with no way to pass
    another; a user's own old config failed on `model.lr` without saying where it went."""
    from stpdist.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(EARLIER_LAYOUT)
    for saved in (True, False):
        cfg = load_config(path, saved=saved)
        model = cfg.model
        assert (model.optimizer.name, model.optimizer.lr, model.optimizer.weight_decay) == (
            "adamw",
            0.003,
            0.01,
        )
        assert (model.schedule.name, model.schedule.warmup_steps, model.schedule.total_steps) == (
            "cosine",
            5,
            100,
        )
        assert (model.sampling.mode, model.sampling.start, model.sampling.stop_step) == (
            "reverse",
            0.5,
            500,
        )
        assert model.sampling.reverse_steps == [100, 200] and model.sampling.reverse_alpha == 50
        assert model.evaluation.clamp_output is False
        assert model.evaluation.metric_thresholds == [0.5]
        assert model.backbone["decouple_weight"] == 0.2
        assert cfg.logging.trackers == [] and cfg.logging.trackers_every_n_steps == 4
        (line,) = said
        assert line.startswith(f"{path} is in the config layout before 2026-12-03; read as ")
        assert "model.lr → model.optimizer.lr" in line
        said.clear()
    # wandb was on whenever its mode was online or offline: it stays on
    (tmp_path / "online.yaml").write_text(
        "model: {name: convlstm, optimizer: adam, lr: 0.001}\n"
        "logging: {wandb: {mode: offline, project: mine}}\n"
    )
    cfg = load_config(tmp_path / "online.yaml")
    assert cfg.logging.trackers == ["wandb"] and cfg.logging.wandb.project == "mine"
    assert "logging.wandb.mode offline → logging.trackers [wandb]" in said[0]
    said.clear()
    today = tmp_path / "today.yaml"  # today's layout: nothing said
    today.write_text("model: {optimizer: {name: adamw, lr: 0.01}}\n")
    assert load_config(today).model.optimizer.lr == 0.01 and said == []
    with pytest.raises(ConfigError, match="it is 'model.optimizer.lr' since 2026-12-03"):
        load_config(today, ["model.lr=0.1"])


def test_an_override_of_one_list_item_gives_the_whole_list_to_set(tmp_path):
    """`hidden_channels[0]=32` said OmegaConf's "Cannot merge incompatible container types";
    the line now gives the whole list with that item changed, ready to paste."""
    text = "model:\n  name: convlstm\n  backbone: {hidden_channels: [8, 8]}\n"
    said = "one item of a list is not set alone; set the whole list: "
    for key, whole in [("model.backbone.hidden_channels[0]=32", "[32,8]"),
                       ("model.backbone.hidden_channels.1=4", "[8,4]")]:  # fmt: skip
        expected = f"override '{key}': {said}model.backbone.hidden_channels={whole}"
        assert _message(tmp_path, text, [key]) == expected
        fixed = f"model.backbone.hidden_channels={whole}"
        assert load_config(tmp_path / "t.yaml", [fixed]).model.backbone["hidden_channels"] == [
            int(v) for v in whole.strip("[]").split(",")
        ]
    assert "holds 2 item(s); set the whole list: model.backbone.hidden_channels=[...]" in (
        _message(tmp_path, text, ["model.backbone.hidden_channels[2]=4"])
    )


def test_an_interpolation_that_fails_names_the_file_or_override_that_set_it(tmp_path, monkeypatch):
    """OmegaConf resolves interpolations after every merge: the error said "config: bad
    value for ..." and left the user to find which file or override held the key."""
    monkeypatch.delenv("STPDIST_NO_SUCH_VARIABLE", raising=False)
    text = "trainer:\n  output_dir: runs/${data.nope}\n  max_epochs: ${oc.env:STPDIST_NO_SUCH_VARIABLE}\n"
    said = _message(tmp_path, text)
    assert said.startswith(f"{tmp_path / 't.yaml'}: bad value for 'trainer.")
    fixed = "trainer:\n  output_dir: runs/a\n"
    override = "trainer.output_dir=runs/${data.nope}"
    assert _message(tmp_path, fixed, [override]) == (
        f"override '{override}': bad value for 'trainer.output_dir': Interpolation key "
        "'data.nope' not found"
    )


def test_another_model_on_the_command_line_is_told_to_empty_the_backbone(tmp_path):
    """Overriding model.name kept the recipe's backbone keys (overrides merge), which the
    other model refused with no word of `'model.backbone={}'`, the way to start it empty
    (from a review of the docs, which now say it too)."""
    from pathlib import Path

    from stpdist.config import backbone_config

    debug = Path(__file__).parent.parent / "configs" / "debug.yaml"
    with pytest.raises(ConfigError, match=r"starting it empty, 'model\.backbone=\{\}'$"):
        load_config(debug, ["model.name=simvp"])
    cfg = load_config(debug, ["model.name=simvp", "model.backbone={}",
                              "model.backbone.spatial_channels=16"])  # fmt: skip
    assert dict(cfg.model.backbone) == {"spatial_channels": 16}
    assert backbone_config(cfg.model).spatial_channels == 16


def test_an_unknown_short_model_name_says_registered_names_live_in_their_process():
    """A plugins review: a run trained under a name registered from Python could not be
    loaded by the CLI, whose refusal did not say why."""
    from stpdist.config import ModelConfig, backbone_config

    with pytest.raises(ConfigError, match=r"'model.name' is 'myrec'.*exists only in the process "
                       r"that registered it: name the class by its import path"):  # fmt: skip
        backbone_config(ModelConfig(name="myrec"))


def test_a_config_review_s_texts_lists_and_wandb_mode(tmp_path):
    """A config review: a float given to a text key was written as another text (the run
    folder `0.10` became `0.1`, a wandb name `1e3` '1000.0'); base-60 floats (1:30.5 as
    90.5) passed; one item of a schema list said "is {"0": 7}; expected a list"; and
    `mode: disabled` beside `logging.trackers` was read as the earlier layout's, its mode
    dropped: a wandb run was made."""
    quote = "a number where text is expected (YAML reads an unquoted 0.10 as 0.1"
    assert quote in _message(tmp_path, None, ["trainer.output_dir=0.10"])
    assert "'logging.wandb.name' is 1000.0" in _message(tmp_path, None, ["logging.wandb.name=1e3"])
    assert quote in _message(tmp_path, "logging:\n  wandb: {tags: [2.50]}\n")
    assert load_config(None, ["logging.wandb.name=2024"]).logging.wandb.name == "2024"
    assert load_config(None, ["trainer.output_dir='0.10'"]).trainer.output_dir == "0.10"
    for value in ("1:30.5", "12:30.5"):
        said = _message(tmp_path, None, [f"trainer.grad_clip_norm={value}"])
        assert f"{value} is read by YAML as a number in another notation" in said
    said = _message(tmp_path, None, ["model.sampling.reverse_steps[0]=7"])
    assert said.endswith("set the whole list: model.sampling.reverse_steps=[7,50000]"), said
    said = _message(tmp_path, "logging:\n  trackers: [wandb]\n  wandb: {mode: disabled}\n")
    assert "logging.wandb.mode is 'disabled' beside logging.trackers: leave wandb out" in said
    (tmp_path / "tb.yaml").write_text(
        "logging:\n  trackers: [tensorboard]\n  wandb: {mode: disabled}\n"
    )
    assert load_config(tmp_path / "tb.yaml").logging.trackers == ["tensorboard"]  # no wandb
    said = _message(tmp_path, None, ["logging.wandb.tags=[no]"])  # each item quoted
    assert said.endswith(
        "quote it for YAML inside the shell's quotes: \"logging.wandb.tags=['no']\""
    )
    said = _message(tmp_path, None, ["logging.wandb.mode=disabled"])
    assert "for no wandb run leave wandb out of logging.trackers" in said
    said = _message(tmp_path, None, ["logging.wandb.name=1e3"])
    assert said.endswith(
        "quote it for YAML inside the shell's quotes: \"logging.wandb.name='1e3'\""
    )


def test_an_empty_config_file_and_empty_key_parts_are_refused(tmp_path):
    """A config review: an empty (truncated, or the wrong) file trained every default, and
    `trainer..seed=5` said "did you mean 'trainer'?"."""
    assert "t.yaml is empty or holds only comments" in _message(tmp_path, "# nothing yet\n\n")
    (tmp_path / "braces.yaml").write_text("{}  # every default\n")
    assert load_config(tmp_path / "braces.yaml").trainer.output_dir == "runs/default"
    for item in ("trainer..seed=5", "=5"):
        assert "its key has an empty part" in _message(tmp_path, None, [item])


def test_a_backbone_text_given_a_boolean_and_a_ratio_leaving_no_channel_are_named(tmp_path):
    """A config review: `model.backbone.translator=no` (YAML's false) and a SimVP
    `mlp_ratio` leaving its MLPs no channel failed in the model's code, naming no key."""
    from stpdist import build

    simvp = ["model.name=simvp", "model.backbone={}"]
    said = _message(tmp_path, None, [*simvp, "model.backbone.translator=no"])
    assert said == (
        "'model.backbone.translator' is False, a YAML boolean where text is expected: quote it"
    )
    cfg = load_config(ROOT / "configs" / "debug.yaml", [*simvp, "model.backbone.mlp_ratio=0.01",
                      "model.backbone.temporal_channels=16"])  # fmt: skip
    with pytest.raises(ConfigError, match="mlp_ratio 0.01 × temporal_channels 16 leaves the"):
        build.build_module(cfg, (1, 32, 32))


def test_an_escaped_interpolation_is_text_in_the_trainer_and_in_the_saved_config(tmp_path):
    """`name: run-\\${foo}` (OmegaConf's escape: the text `run-${foo}`) loaded, then the
    Trainer read the text as an interpolation ("Interpolation key 'foo' not found"), and the
    saved config.yaml held it bare, so the run could not be resumed from it."""
    from stpdist import Trainer
    from stpdist.config import load_config, to_yaml

    config = tmp_path / "c.yaml"
    config.write_text('logging:\n  wandb:\n    name: "run-\\\\${foo}"\n')
    cfg = load_config(config)
    assert cfg.logging.wandb.name == "run-${foo}"
    trainer = Trainer(cfg.trainer, logging=cfg.logging, output_dir=tmp_path / "run",
                      max_steps=1, progress_bar=False)  # fmt: skip
    assert trainer.tracker.config.wandb.name == "run-${foo}"
    saved = tmp_path / "saved.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved).logging.wandb.name == "run-${foo}"
    # text with backslashes before `${` too, from Python and through the saved config (a
    # diff review: one backslash was lost, or the text read as an interpolation)
    for text in ("a\\${b}", "a\\\\${b}", "\\${a}${b}"):
        trainer = Trainer(output_dir=tmp_path / "run", max_steps=1, progress_bar=False,
                          logging={"wandb": {"name": text}})  # fmt: skip
        assert trainer.tracker.config.wandb.name == text
        cfg.logging.wandb.name = text
        saved.write_text(to_yaml(cfg))
        assert load_config(saved).logging.wandb.name == text
