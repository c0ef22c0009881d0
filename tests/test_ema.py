"""EMA of the weights (`trainer.ema`): equal to an average computed by hand over the same
optimizer steps, resumed bit for bit, and what validation, predict, load and export use
(the raw weights on request)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from helpers import TinyModule, TinySequences, loader
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from stpdist import Trainer
from stpdist.checkpoint import MODEL_FILE
from stpdist.config import CheckpointConfig, ConfigError, EmaConfig
from stpdist.ema import EMA_FILE

DEBUG = Path(__file__).parent.parent / "configs" / "debug.yaml"


class Recording(TinyModule):
    """TinyModule that keeps a copy of its parameters as they are before each optimizer
    step: `seen[k]` holds the weights after step k (k = 0: the initial weights)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def training_step(self, inputs, targets):
        self.seen[self.global_step] = {
            n: p.detach().clone().double() for n, p in self.named_parameters()
        }
        return super().training_step(inputs, targets)


def make_trainer(out: Path, **kwargs) -> Trainer:
    kwargs.setdefault("max_epochs", None)
    return Trainer(output_dir=out, progress_bar=False, log_every_n_steps=1, **kwargs)


def hand_ema(weights: list[dict[str, torch.Tensor]], cfg: EmaConfig) -> dict[str, torch.Tensor]:
    """The average after the last of `weights` (index k: the weights after step k)."""
    ema = {n: w.clone() for n, w in weights[0].items()}
    for step in range(1, len(weights)):
        if step <= cfg.start_step:
            ema = {n: w.clone() for n, w in weights[step].items()}
        elif (step - cfg.start_step) % cfg.every_n_steps == 0:
            ema = {n: cfg.decay * ema[n] + (1 - cfg.decay) * w for n, w in weights[step].items()}
    return ema


@pytest.mark.parametrize(
    ("cfg", "accumulation"),
    [(EmaConfig(decay=0.7), 1), (EmaConfig(decay=0.8, start_step=3, every_n_steps=2), 2)],
)
def test_ema_equals_an_average_computed_by_hand(tmp_path, cfg, accumulation):
    torch.manual_seed(0)
    module = Recording(lr=0.05)
    steps = 9
    trainer = make_trainer(
        tmp_path, max_steps=steps, ema=cfg, gradient_accumulation_steps=accumulation
    )
    trainer.fit(module, loader(40, 2))
    final = {n: p.detach().clone().double() for n, p in module.named_parameters()}
    weights = [module.seen[k] for k in range(steps)] + [final]
    expected = hand_ema(weights, cfg)
    got = dict(zip(trainer.ema.names, trainer.ema.shadow))
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name].double(), value, rtol=0, atol=1e-7)
    # the averaging moved it away from the weights (a copy would pass the test above too
    # only if every update copied): the average is not the final weights
    assert any(not torch.equal(got[n].double(), final[n]) for n in final)
    # the checkpoint holds it as written, listed in its manifest
    last = trainer.checkpoints.latest()
    saved = load_file(str(last / EMA_FILE))
    assert all(torch.equal(saved[n], got[n]) for n in got)
    assert EMA_FILE in (last / "manifest.json").read_text()


def test_ema_resumes_bitwise(tmp_path):
    policy = CheckpointConfig(every_n_steps=4, keep_last=10)
    cfg = EmaConfig(decay=0.75, start_step=1)

    def run(out: Path, steps: int, resume: str | None = None) -> Trainer:
        torch.manual_seed(0)
        trainer = make_trainer(out, max_steps=steps, ema=cfg, checkpoint=policy)
        trainer.fit(TinyModule(), loader(40, 4), resume=resume)
        return trainer

    run(tmp_path / "whole", 8)
    run(tmp_path / "split", 4)
    run(tmp_path / "split", 8, resume="auto")
    for name in (EMA_FILE, MODEL_FILE):
        whole = load_file(str(tmp_path / "whole/checkpoints/step-00000008" / name))
        split = load_file(str(tmp_path / "split/checkpoints/step-00000008" / name))
        assert whole.keys() == split.keys()
        assert all(torch.equal(whole[k], split[k]) for k in whole), name


def _val_loss(module: nn.Module, params: dict[str, torch.Tensor], val: TinySequences) -> float:
    """The mean squared error over `val` with `params` put into `module`, by hand."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(params[name])
        return float(nn.functional.mse_loss(module(val.inputs), val.targets))


def test_validation_and_predict_use_the_ema_and_the_raw_weights_on_request(tmp_path):
    torch.manual_seed(0)
    module = TinyModule(lr=0.05, scheduler=False)
    val = TinySequences(12, seed=5)
    val_loader = DataLoader(val, batch_size=12)
    trainer = make_trainer(tmp_path, max_steps=10, ema=EmaConfig(decay=0.9))
    state = trainer.fit(module, loader(40, 4), val_loader)
    last = trainer.checkpoints.latest()
    raw = load_file(str(last / MODEL_FILE))
    ema = load_file(str(last / EMA_FILE))
    # after validation the module holds its raw weights again, bit for bit
    assert all(torch.equal(p, raw[n]) for n, p in module.named_parameters())
    probe = TinyModule()
    with_ema, with_raw = _val_loss(probe, ema, val), _val_loss(probe, raw, val)
    assert abs(with_ema - with_raw) > 1e-4  # the two differ: the test can tell them apart
    assert state.metrics["val/loss"] == pytest.approx(with_ema, rel=1e-6)
    # validate and predict from the checkpoint: the EMA, or the raw weights when asked
    assert trainer.validate(TinyModule(), val_loader, ckpt=last)["val/loss"] == pytest.approx(
        with_ema, rel=1e-6
    )
    rows = (trainer.output_dir / "metrics.jsonl").read_text()
    raw_results = trainer.validate(TinyModule(), val_loader, ckpt=last, raw_weights=True)
    assert raw_results["val/loss"] == pytest.approx(with_raw, rel=1e-6)
    # the run's rows are its model's: the raw weights' results are not logged among them
    assert (trainer.output_dir / "metrics.jsonl").read_text() == rows
    # the module just trained, without ckpt: its EMA too (it scored its raw weights)
    in_memory = trainer.validate(module, val_loader)["val/loss"]
    assert in_memory == pytest.approx(with_ema, rel=1e-6)
    in_memory_raw = trainer.validate(module, val_loader, raw_weights=True)["val/loss"]
    assert in_memory_raw == pytest.approx(with_raw, rel=1e-6)
    assert all(torch.equal(p, raw[n]) for n, p in module.named_parameters())


def test_cli_export_load_and_predict_use_the_ema_unless_raw_weights(tmp_path):
    train = ("train", str(DEBUG), "trainer.max_epochs=1", "trainer.ema.decay=0.5",
             "logging.num_samples=0")  # fmt: skip
    run_cli(*train, cwd=tmp_path, check=True)
    run = tmp_path / "runs" / "debug"
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    raw, ema = load_file(str(ckpt / MODEL_FILE)), load_file(str(ckpt / EMA_FILE))
    assert any(not torch.equal(raw[n], ema[n]) for n in ema)
    run_cli("export", str(run), "--out", "averaged", cwd=tmp_path, check=True)
    run_cli("export", str(run), "--out", "raw", "--raw-weights", cwd=tmp_path, check=True)
    averaged = load_file(str(tmp_path / "averaged" / MODEL_FILE))
    assert all(torch.equal(averaged[n], ema[n]) for n in ema)
    assert all(torch.equal(averaged[n], raw[n]) for n in raw if n not in ema)  # buffers
    exported_raw = load_file(str(tmp_path / "raw" / MODEL_FILE))
    assert exported_raw.keys() == raw.keys()
    assert all(torch.equal(exported_raw[n], raw[n]) for n in raw)
    # the exported folders say which weights they hold, and where from (a deployment review)
    step = int(ckpt.name.split("-")[1])
    for name, weights in (("averaged", "ema"), ("raw", "raw")):
        info = json.loads((tmp_path / name / "export.json").read_text())
        assert info["weights"] == weights
        assert info["exported_from"] == {"path": str(ckpt.resolve()), "step": step}
    # the raw weights are not in an averaged export: asked for, refused (they were the EMA's)
    proc = run_cli("export", "averaged", "--out", "again", "--raw-weights", cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "again").exists()
    assert "averaged weights (trainer.ema) of" in proc.stderr and str(ckpt.resolve()) in proc.stderr
    run_cli("export", "averaged", "--out", "again", cwd=tmp_path, check=True)
    again = json.loads((tmp_path / "again" / "export.json").read_text())
    assert again["weights"] == "ema" and again["exported_from"]["step"] == step
    assert all(torch.equal(load_file(str(tmp_path / "again" / MODEL_FILE))[n], ema[n]) for n in ema)
    # an export written before export.json existed, of an EMA run: its weights unknown
    (tmp_path / "again" / "export.json").unlink()
    run_cli("export", "again", "--out", "older", cwd=tmp_path, check=True)
    assert json.loads((tmp_path / "older" / "export.json").read_text())["weights"] == "unknown"
    proc = run_cli("export", "raw", "--out", "raw-again", "--raw-weights", cwd=tmp_path)
    assert proc.returncode == 0 and "holds no separate averaged weights; its weights are used" in (
        proc.stdout + proc.stderr
    )

    import stpdist

    loaded = stpdist.load(run, "last")
    assert all(torch.equal(p, ema[n]) for n, p in loaded.named_parameters())
    assert loaded.global_step == int(ckpt.name.split("-")[1])  # was 0: validate logged step 0
    loaded_raw = stpdist.load(run, "last", raw_weights=True)
    assert all(torch.equal(p, raw[n]) for n, p in loaded_raw.named_parameters())

    # predict (and validate) read the checkpoint the same way: the flag changes the results
    for name, flag in (("ema", ()), ("raw", ("--raw-weights",))):
        predict = ("predict", str(DEBUG), "--ckpt", "last", "--out", f"pred-{name}", *flag)
        run_cli(*predict, cwd=tmp_path, check=True)
    metrics = [(tmp_path / f"pred-{n}" / "metrics.json").read_text() for n in ("ema", "raw")]
    assert metrics[0] != metrics[1]
    assert [json.loads(m)["raw_weights"] for m in metrics] == [False, True]
    assert [json.loads(m)["precision"] for m in metrics] == ["no", "no"]
    # in another precision than float32: said, and recorded (it was neither: a deployment
    # review saw outputs that differed from forecast's and export's without a word why)
    bf16 = ("predict", str(DEBUG), "--ckpt", "last", "--out", "pred-bf16", "--samples", "0",
            "trainer.mixed_precision=bf16")  # fmt: skip
    proc = run_cli(*bf16, cwd=tmp_path, check=True)
    assert "running in bf16 (the config's trainer.mixed_precision;" in proc.stdout
    assert json.loads((tmp_path / "pred-bf16" / "metrics.json").read_text())["precision"] == "bf16"
    # the raw weights' results never silently replace the EMA's of the same checkpoint
    predict = ("predict", str(DEBUG), "--ckpt", "last", "--out", "pred-ema", "--raw-weights")
    proc = run_cli(*predict, cwd=tmp_path)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (tmp_path / "pred-ema" / "metrics.json").read_text() == metrics[0]
    # nor do validate's: --ckpt best, whose newer results replace older ones, included
    run_cli("validate", str(DEBUG), cwd=tmp_path, check=True)
    kept = (run / "metrics_val.json").read_text()
    proc = run_cli("validate", str(DEBUG), "--raw-weights", cwd=tmp_path)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (run / "metrics_val.json").read_text() == kept
    # nor do those of another precision (a diff review: bf16 replaced float32 silently)
    proc = run_cli("validate", str(DEBUG), "trainer.mixed_precision=bf16", cwd=tmp_path)
    assert proc.returncode == 2 and ", precision bf16); pass --overwrite" in proc.stderr
    assert "running in bf16" not in proc.stdout  # not said for a run that is refused
    assert (run / "metrics_val.json").read_text() == kept


def test_ema_settings_are_checked():
    with pytest.raises(ConfigError, match=r"'ema.decay' is 1.5; expected a number strictly"):
        make_trainer(Path("unused"), max_steps=1, ema=EmaConfig(decay=1.5))
    with pytest.raises(ConfigError, match=r"'ema.every_n_steps' is 0"):
        make_trainer(Path("unused"), max_steps=1, ema=EmaConfig(every_n_steps=0))


def test_ema_update_reads_nothing_on_the_host_between_check_points(tmp_path, monkeypatch):
    """The update is device math: steps that neither log nor save read no tensor back."""
    from helpers import HostReads

    torch.manual_seed(0)
    module = TinyModule(scheduler=False)
    module.skips_batches = False  # else every step agrees on skips on the host
    reads = HostReads(monkeypatch)
    original = module.training_step

    def marked(inputs, targets):
        reads.mark(module.global_step + 1)
        return original(inputs, targets)

    module.training_step = marked
    trainer = Trainer(
        output_dir=tmp_path,
        max_epochs=None,
        max_steps=6,
        progress_bar=False,
        log_every_n_steps=3,
        ema=EmaConfig(decay=0.9, start_step=2),
        checkpoint=CheckpointConfig(every_epoch=False, keep_last=1),
    )
    trainer.fit(module, loader(40, 4))
    monkeypatch.undo()
    assert sorted(reads.per_step) == [1, 2, 3, 4, 5, 6]
    assert {step for step, found in reads.per_step.items() if found} == {3, 6}, reads.per_step
