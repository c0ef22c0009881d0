"""`stpdist import openstl`: OpenSTL's weights give OpenSTL's outputs and loss.

The fixtures (tests/fixtures/openstl, made by its make_fixtures.py from OpenSTL's own code
at commit c74deb5) hold per model an OpenSTL state dict at tiny widths in float64, an
input, a scheduled-sampling mask, and what OpenSTL's forward returned. Each is written
here as a Lightning checkpoint (keys prefixed `model.`) with an OpenSTL config file, run
through the CLI, loaded in float64 and compared: outputs and loss to ≤1e-12. Neither
OpenSTL nor timm is needed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pickle
import pprint
import re
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from stpdist.build import build_module
from stpdist.checkpoint import load_weights
from stpdist.config import load_config
from stpdist.data.format import read_index

FIXTURES = Path(__file__).parent / "fixtures" / "openstl"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
# PhyDNet's OpenSTL forward returns other things (test_phydnet_fixture_matches_openstl);
GENERIC = [name for name in NAMES if name != "phydnet"]


@functools.cache
def _generator():
    """make_fixtures.py as a module (it imports OpenSTL only when it makes fixtures)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fixture(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    record = json.loads((FIXTURES / f"{name}.json").read_text())
    data = load_file(str(FIXTURES / f"{name}.safetensors"))
    state = {k.removeprefix("openstl."): v for k, v in data.items() if k.startswith("openstl.")}
    for key, recipe in record.get("seeded", {}).items():  # drawn again, as the generator did
        state[key] = _generator().seeded_values(**recipe)
    for copy, original in record.get("shared", {}).items():  # one tensor under two keys
        state[copy] = state[original]
    return record, state, data


def _write_config(path: Path, config: dict) -> Path:
    """An OpenSTL config file (Python assignments), as OpenSTL's configs/ hold them."""
    path.write_text("".join(f"{k} = {pprint.pformat(v)}\n" for k, v in config.items()))
    return path


def _write_ckpt(path: Path, state: dict[str, torch.Tensor], **extra) -> Path:
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, **extra}, path)
    return path


def _import(tmp_path: Path, name: str, state=None, **kwargs):
    record, fixture_state, _ = _fixture(name)
    ckpt = _write_ckpt(tmp_path / f"{name}.ckpt", fixture_state if state is None else state)
    config = _write_config(tmp_path / f"{record['method']}.py", record["config"])
    out = tmp_path / "model"
    args = ["import", "openstl", str(ckpt), "--method", record["method"], "--config", str(config)]
    return run_cli(*args, "--out", str(out), cwd=tmp_path, **kwargs), out


def _load64(folder: Path) -> torch.nn.Module:
    """The model folder's module in float64 (cast before the weights are loaded, so the
    fixtures' float64 weights keep their precision)."""
    module = build_module(load_config(folder / "config.yaml"), index=read_index(folder))
    module.double()
    load_weights(folder, module)
    return module


@pytest.mark.parametrize("name", GENERIC)
def test_fixture_matches_openstl(tmp_path, name):
    record, _, data = _fixture(name)
    result, folder = _import(tmp_path, name, check=True)
    module = _load64(folder)
    config = record["config"]
    t_in = config["pre_seq_length"]
    frames = data["input"]
    inputs, targets = frames[:, :t_in], frames[:, t_in:]
    # frame-recurrent methods: every next-frame prediction (SwinLSTM: no mask, it always
    # feeds back its own outputs)
    recurrent = data["outputs"].shape[1] == frames.shape[1] - 1
    for block in module.modules():  # OpenSTL's training forward ran without drop-path
        if isinstance(getattr(block, "drop_path", None), float):
            block.drop_path = 0.0
    with torch.no_grad():
        module.eval()
        out = module(inputs, all_frames=recurrent, clamp=False).predictions
        assert (out - data["outputs"]).abs().max() <= 1e-12
        module.train()
        if "mask" in data:  # OpenSTL's per-sample scheduled-sampling draws, fed as ours
            module.teacher_mask = lambda inputs, step: data["mask"]
            train_out = module(inputs, targets, data["mask"], all_frames=True).predictions
        else:
            train_out = module(inputs, all_frames=recurrent).predictions
        assert (train_out - data["train_outputs"]).abs().max() <= 1e-12
        step = module.training_step(inputs, targets)
    loss = step["loss"] if isinstance(step, dict) else step
    if record["method"] == "TAU":  # the two terms too: MSE and the unweighted divergence
        assert abs(step["frames_loss"] - data["loss_mse"]) <= 1e-12
        assert abs(step["divergence"] / config["alpha"] - data["loss_divergence"]) <= 1e-12
    assert abs(loss - data["loss"]) <= 1e-12


def test_phydnet_fixture_matches_openstl(tmp_path):
    """OpenSTL's PhyDNet (patch_size 4 → stpdist downsample 4 on unpatched frames):
    `outputs` are its `inference` predictions; `train_outputs`/`loss` its training
    `forward` with teacher_forcing_ratio 1 (all output steps teacher-forced: our mask of
    ones), `free_running_*` with ratio 0. The fixture's weights are float32 values (file
    size), run in float64 by OpenSTL and here."""
    record, _, data = _fixture("phydnet")
    result, folder = _import(tmp_path, "phydnet", check=True)
    assert "dropped 4 OpenSTL tensors" in result.stdout and "k2m._invM1" in result.stdout
    assert "dropped 12 OpenSTL tensors that repeat another key's tensor" in result.stdout
    cfg = load_config(folder / "config.yaml").model
    backbone = cfg.backbone
    assert (cfg.patch_size, backbone["downsample"], backbone["variant"]) == (1, 4, "openstl")
    assert list(backbone["convlstm_hidden_channels"]) == [16, 64]  # read off the checkpoint
    module = _load64(folder)
    t_in = record["config"]["pre_seq_length"]
    frames = data["input"]
    inputs, targets = frames[:, :t_in], frames[:, t_in:]
    steps = frames.shape[1] - 1
    runs = {"": data["mask"], "free_running_": torch.zeros_like(data["mask"])}
    with torch.no_grad():
        out = module.eval()(inputs, clamp=False).predictions
        assert (out - data["outputs"]).abs().max() <= 1e-12
        module.train()
        losses = {}
        for prefix, mask in runs.items():
            out = module(inputs, targets, mask, all_frames=True).predictions
            expected = data["train_outputs" if not prefix else "free_running_outputs"]
            assert (out - expected).abs().max() <= 1e-12
            module.teacher_mask = lambda inputs, step, mask=mask: mask
            losses[prefix] = module.training_step(inputs, targets)
    for prefix, step in losses.items():
        # OpenSTL's loss: Σ of the per-step MSEs + Σ of the 64 moment MSEs; ours is the
        # mean over steps + 1/steps of the moment sum, i.e. OpenSTL's ÷ steps. To ~1e-10
        # relative only, not 1e-12: OpenSTL rounds its moment matrices to float32
        # (`self.k2m(filters.double()).float()` in phydnet_model.py), we keep float64.
        assert abs(step["loss"] * steps / data[prefix + "loss"] - 1) <= 1e-9
    # the teacher-forced loss term by term (read off OpenSTL's criterion): the frame term
    # to 1e-12, so the whole gap is the float32 moments
    step = losses[""]
    assert abs(step["frames_loss"] - data["loss_frames"].sum() / steps) <= 1e-12
    assert abs(step["moment"] * steps / data["loss_moments"].sum() - 1) <= 1e-9


def test_phydnet_copies_must_equal_their_module(tmp_path):
    """OpenSTL saves PhyDNet's PhyCell and ConvLSTM twice (model.phycell and
    model.encoder.phycell are one module): a checkpoint whose copies differ is refused,
    naming the tensor; one holding only the encoder's copies imports."""
    _, state, data = _fixture("phydnet")
    changed = dict(state)
    changed["encoder.phycell.cell_list.0.convgate.bias"] = (
        state["phycell.cell_list.0.convgate.bias"] + 1
    )
    result, out = _import(tmp_path, "phydnet", state=changed)
    assert result.returncode == 2
    assert "'encoder.phycell.cell_list.0.convgate.bias' should be a copy of" in result.stderr
    assert not out.exists()
    only_copies = {k: v for k, v in state.items() if not k.startswith(("phycell.", "convcell."))}
    _, folder = _import(tmp_path, "phydnet", state=only_copies, check=True)
    with torch.no_grad():
        out = _load64(folder).eval()(data["input"][:, :3], clamp=False).predictions
    assert (out - data["outputs"]).abs().max() <= 1e-12


def test_unused_tensors_are_dropped_with_a_note(tmp_path):
    result, folder = _import(tmp_path, "convlstm", check=True)
    # 2 cells × (conv_o, conv_last): built by OpenSTL, never called by its forward
    assert "dropped 4 OpenSTL tensors" in result.stdout
    assert "cell_list.0.conv_o.0.weight" in result.stdout
    saved = load_file(str(folder / "model.safetensors"))
    assert not any("conv_o" in k for k in saved)


def test_missing_tensor_is_an_error_naming_it(tmp_path):
    _, state, _ = _fixture("predrnn")
    del state["cell_list.1.conv_m.0.weight"]
    result, out = _import(tmp_path, "predrnn", state=state)
    assert result.returncode == 2
    assert "backbone.cells.1.conv_m.weight" in result.stderr
    assert not out.exists()


def test_extra_tensor_is_an_error_naming_it(tmp_path):
    _, state, _ = _fixture("simvp_gsta")
    state["hid.enc.1.block.extra_scale"] = torch.zeros(3)
    result, out = _import(tmp_path, "simvp_gsta", state=state)
    assert result.returncode == 2
    assert "hid.enc.1.block.extra_scale" in result.stderr
    assert not out.exists()


def test_wrong_sizes_are_an_error_naming_the_tensor(tmp_path):
    record, state, _ = _fixture("convlstm")
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state)
    config = dict(record["config"], num_hidden="8,8")  # the checkpoint's cells are 4 wide
    cfg = _write_config(tmp_path / "ConvLSTM.py", config)
    args = ["import", "openstl", str(ckpt), "--method", "ConvLSTM", "--config", str(cfg)]
    result = run_cli(*args, "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert result.returncode == 2
    assert re.search(
        r"OpenSTL tensor 'cell_list\.0\.conv_[hx]\.0\.weight' has shape \(16, 4, 3, 3\)",
        result.stderr,
    )
    assert "do not describe this checkpoint's sizes" in result.stderr


def test_config_file_is_read_never_run(tmp_path):
    record, state, data = _fixture("convlstm")
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state)
    marker = tmp_path / "ran"
    cfg = _write_config(tmp_path / "ConvLSTM.py", record["config"])
    cfg.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n" + cfg.read_text())
    args = ["import", "openstl", str(ckpt), "--method", "ConvLSTM", "--config", str(cfg)]
    run_cli(*args, "--out", str(tmp_path / "m"), cwd=tmp_path, check=True)
    assert not marker.exists()
    # a setting that is not a literal is refused, naming its line
    cfg.write_text(cfg.read_text() + "num_hidden = ','.join(['4'] * 2)\n")
    result = run_cli(*args, "--out", str(tmp_path / "m2"), cwd=tmp_path)
    assert result.returncode == 2 and "'num_hidden' is not a literal" in result.stderr


class _Payload:
    """Pickles as a call of `pathlib.Path(marker).touch` (the method found by a call of
    `getattr`): code a full unpickling would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _Touch:
    """Pickles as one call of `shutil.copyfile(source, marker)`: code a full unpickling
    would run, by a global torch's weights-only unpickler refuses."""

    def __init__(self, source: Path, marker: Path) -> None:
        self.source, self.marker = source, marker

    def __reduce__(self):
        import shutil

        return (shutil.copyfile, (str(self.source), str(self.marker)))


def test_checkpoint_objects_are_never_unpickled(tmp_path):
    """Hyper-parameters holding an object a weights-only load refuses: only the tensors
    are read (with a warning), and the object's code never runs. One it cannot stand in
    for (a call of a call's result) is refused, naming why, and never run either."""
    record, state, data = _fixture("convlstm")
    marker, source = tmp_path / "unpickled", tmp_path / "source"
    source.write_text("x")
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state, hyper_parameters={"obj": _Touch(source, marker)})
    cfg = _write_config(tmp_path / "ConvLSTM.py", record["config"])
    args = ["import", "openstl", str(ckpt), "--method", "ConvLSTM", "--config", str(cfg)]
    result = run_cli(*args, "--out", str(tmp_path / "m"), cwd=tmp_path, check=True)
    assert not marker.exists()
    assert "(the first: shutil.copyfile); reading its tensors only" in result.stderr
    chained = _write_ckpt(tmp_path / "g.ckpt", state, hyper_parameters={"obj": _Payload(marker)})
    args[2] = str(chained)
    refused = run_cli(*args, "--out", str(tmp_path / "m2"), cwd=tmp_path)
    assert refused.returncode == 2 and not marker.exists()
    assert "cannot be read without running their code (Trying to call reduce for " in (
        refused.stderr
    )
    assert not (tmp_path / "m2").exists()
    module = _load64(tmp_path / "m")
    with torch.no_grad():
        out = module.eval()(data["input"][:, :3], all_frames=True, clamp=False).predictions
    assert (out - data["outputs"]).abs().max() <= 1e-12


def test_plain_state_dict_with_hyper_parameters_from_the_checkpoint(tmp_path):
    """An OpenSTL `.pth` state dict (no `model.` prefix) needs --config; a Lightning
    checkpoint's plain hyper_parameters describe the model without one."""
    record, state, data = _fixture("predrnnv2")
    ckpt = _write_ckpt(tmp_path / "p.ckpt", state, hyper_parameters=record["config"])
    run_cli("import", "openstl", str(ckpt), "--method", "PredRNN.V2", "--out", str(tmp_path / "a"),
            cwd=tmp_path, check=True)  # fmt: skip
    plain = tmp_path / "p.pth"
    torch.save(state, plain)
    cfg = _write_config(tmp_path / "PredRNNv2.py", record["config"])
    run_cli("import", "openstl", str(plain), "--method", "predrnnv2", "--config", str(cfg),
            "--out", str(tmp_path / "b"), cwd=tmp_path, check=True)  # fmt: skip
    for folder in ("a", "b"):
        module = _load64(tmp_path / folder)
        with torch.no_grad():
            out = module.eval()(data["input"][:, :3], all_frames=True, clamp=False).predictions
        assert (out - data["outputs"]).abs().max() <= 1e-12


def test_out_must_be_empty_without_overwrite(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result, _ = _import(tmp_path, "convlstm")
    assert result.returncode == 2, result.stderr
    assert "holds keep.txt, which no stpdist import wrote" in result.stderr  # --overwrite won't
    assert "pass --overwrite" not in result.stderr
    assert (out / "keep.txt").read_text() == "x"
    result, _ = _import(tmp_path, "convlstm", check=False)
    record, state, _ = _fixture("convlstm")
    ckpt = tmp_path / "convlstm.ckpt"
    cfg = tmp_path / "ConvLSTM.py"
    argv = ["import", "openstl", str(ckpt), "--method", "ConvLSTM", "--config", str(cfg),
            "--out", str(out), "--overwrite"]  # fmt: skip
    # --overwrite replaces an earlier import, never the user's own files
    refused = run_cli(*argv, cwd=tmp_path)
    assert refused.returncode == 2 and "holds keep.txt, which no stpdist import wrote" in (
        refused.stderr
    )
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    (out / "model.safetensors").write_text("an earlier import's")
    run_cli(*argv, cwd=tmp_path, check=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "index.json",
        "model.safetensors",
    ]


def test_model_folder_forecasts_through_stpdist_load(tmp_path):
    """The folder is a model folder: `stpdist.load` and `forecast` take it (float32)."""
    import stpdist

    _, folder = _import(tmp_path, "mau", check=True)
    module = stpdist.load(folder)
    record, _, data = _fixture("mau")
    frames = (data["input"][0, :3] * 255).float().numpy()
    out = module.forecast(frames)
    assert out.shape == (3, 1, 16, 16)


def test_unknown_and_unsupported_methods_are_refused(tmp_path):
    _, state, _ = _fixture("convlstm")
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state)
    for method, words in (("NotAModel", "valid: ConvLSTM"), ("SwinLSTM-B", "SwinLSTM-D")):
        result = run_cli("import", "openstl", str(ckpt), "--method", method, "--out",
                         str(tmp_path / "m"), cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2 and words in result.stderr


def test_convnext_ignores_dropout_as_openstl_does(tmp_path):
    # OpenSTL's ConvNeXtSubBlock never hands `drop` to timm's block: with drop 0.1 in the
    # config its training forward is still the fixture's
    record, state, data = _fixture("simvp_convnext")
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state)
    cfg = _write_config(tmp_path / "SimVP.py", dict(record["config"], drop=0.1))
    args = ["import", "openstl", str(ckpt), "--method", "SimVP", "--config", str(cfg)]
    run_cli(*args, "--out", str(tmp_path / "m"), cwd=tmp_path, check=True)
    module = _load64(tmp_path / "m").train()
    with torch.no_grad():
        out = module(data["input"][:, :4], all_frames=False).predictions
    assert (out - data["train_outputs"]).abs().max() <= 1e-12


def test_swin_translator_is_imported_without_the_shift_mask(tmp_path):
    # OpenSTL runs the shifted windows unmasked; the importer turns stpdist's mask off
    import yaml

    result, out = _import(tmp_path, "simvp_swin")
    assert result.returncode == 0, result.stderr
    backbone = yaml.safe_load((out / "config.yaml").read_text())["model"]["backbone"]
    assert backbone["translator"] == "swin" and backbone["swin_shift_mask"] is False


def test_swin_translator_differs_only_by_the_shift_mask():
    # the swin key map is right and the shift mask is the whole difference: stpdist's swin
    # with OpenSTL's weights matches OpenSTL once its shifted blocks stop masking
    from stpdist import openstl
    from stpdist.data.format import SplitIndex
    from stpdist.models.translators import SwinBlock

    record, state, data = _fixture("simvp_swin")
    found = openstl.settings("simvp", {}, record["config"])
    cfg = openstl.stpdist_config("simvp", {**found, "model_type": "vit"})
    cfg["model"]["backbone"]["translator"] = "swin"
    index = SplitIndex(split="test", shape=[8, 1, 16, 16], dtype="uint8", value_scale=255.0,
                       shards=[], min=[0.0], max=[1.0])  # fmt: skip
    module = build_module(openstl._load_dict(cfg), index=index).double()
    mapped = openstl.map_tensors(state, openstl.key_rules("simvp", found),
                                 openstl.UNUSED["simvp"], module.state_dict(), "fixture")  # fmt: skip
    module.load_state_dict(mapped.tensors)
    module.eval()
    shifted = [b for b in module.modules() if isinstance(b, SwinBlock) and b.shift]
    assert len(shifted) == 1  # the middle of the three blocks, windows of 4 on 8×8
    inputs = data["input"][:, :4]
    with torch.no_grad():
        masked = module(inputs, clamp=False).predictions
        for block in shifted:
            block.masked = False  # what `swin_shift_mask: false` builds
        unmasked = module(inputs, clamp=False).predictions
    assert (masked - data["outputs"]).abs().max() > 1e-2
    assert (unmasked - data["outputs"]).abs().max() <= 1e-12


def test_a_file_that_is_no_checkpoint_is_refused_saying_what_it_is(tmp_path):
    """A folder, a text file, a torch checkpoint cut short: one line naming the file and
    what it is, not torch's internal message cut mid-sentence."""
    from stpdist.errors import InputError
    from stpdist.openstl import read_checkpoint

    with pytest.raises(InputError, match=r"is a folder; expected a checkpoint file \(\.ckpt"):
        read_checkpoint(tmp_path)
    (tmp_path / "notes.pth").write_text("hello\n")
    with pytest.raises(InputError, match=r"notes\.pth: not a torch checkpoint \(neither a zip"):
        read_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "ConvLSTM.py").write_text("method = 'ConvLSTM'\nin_shape = [10, 1, 64, 64]\n")
    with pytest.raises(InputError, match=r"ConvLSTM\.py: not a torch checkpoint \(neither a"):
        read_checkpoint(tmp_path / "ConvLSTM.py")  # the config given as the checkpoint
    torch.save({"state_dict": {"model.a": torch.zeros(1000)}}, tmp_path / "whole.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:700])
    with pytest.raises(InputError) as caught:
        read_checkpoint(tmp_path / "cut.ckpt")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'cut.ckpt'}: a damaged or truncated torch checkpoint")
    assert message.endswith("failed finding central directory")
    assert read_checkpoint(tmp_path / "whole.ckpt")[0].keys() == {"a"}


def test_no_checkpoint_runs_code_or_changes_a_class_when_its_tensors_are_read(tmp_path):
    """The tensors-only fallback unpickled legacy (non-zip) files with plain pickle: a file
    of one pickled `os.system` call, or a legacy `torch.save` holding one, ran it. And a
    zip checkpoint could set attributes of an allowed class (BUILD on a class). Both come
    from a file a user was handed; now torch's weights-only unpickler reads every file."""
    import collections
    import io
    import zipfile

    from stpdist.errors import InputError
    from stpdist.openstl import read_checkpoint

    marker = tmp_path / "ran"
    raw = tmp_path / "raw.pth"  # not even torch's: one pickle of a call
    raw.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    legacy = tmp_path / "legacy.pth"
    state = {"model.a": torch.zeros(3)}
    torch.save({"state_dict": state, "hparams": _Payload(marker)}, legacy,
               _use_new_zipfile_serialization=False)  # fmt: skip
    for path in (raw, legacy):
        with pytest.raises(InputError):
            read_checkpoint(path)
        assert not marker.exists(), path
    with pytest.raises(InputError, match="legacy torch file .* re-save it"):
        read_checkpoint(legacy)

    template = tmp_path / "template.pt"
    torch.save({"state_dict": state}, template)
    tampering = b"\x80\x02ccollections\nCounter\nN}X\x0b\x00\x00\x00most_commonc" + (
        b"builtins\nprint\ns\x86b."
    )  # BUILD on the class: Counter.most_common = print
    forged = io.BytesIO()
    with zipfile.ZipFile(template) as zin, zipfile.ZipFile(forged, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, tampering if item.filename.endswith("data.pkl") else data)
    (tmp_path / "forged.pt").write_bytes(forged.getvalue())
    before = collections.Counter.most_common
    with pytest.raises(InputError):
        read_checkpoint(tmp_path / "forged.pt")
    assert collections.Counter.most_common is before


@pytest.mark.parametrize(
    ("checkpoint_of", "method", "named"),
    [("predrnn", "convlstm", "PredRNN"), ("mim", "predrnn", "MIM"),
     ("simvp_gsta", "convlstm", "SimVP or TAU")],
)  # fmt: skip
def test_a_checkpoint_of_another_method_is_named_as_such(tmp_path, checkpoint_of, method, named):
    """A PredRNN checkpoint imported as ConvLSTM was a size problem "needs --dataset"."""
    _, state, _ = _fixture(checkpoint_of)
    record, _, _ = _fixture(method)
    ckpt = _write_ckpt(tmp_path / "c.ckpt", state)
    config = _write_config(tmp_path / f"{record['method']}.py", record["config"])
    args = ["import", "openstl", str(ckpt), "--method", record["method"], "--config", str(config)]
    result = run_cli(*args, "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"its tensor names look like OpenSTL's {named}: --method {named.split()[0]}?" in (
        result.stderr
    )
    assert not (tmp_path / "m").exists()
