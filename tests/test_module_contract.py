"""A user's own EnhancedModule through the Python API and the CLI, from a review of the hook
contract (each case reproduced first, on the code before):

- a scheduler built on a second optimizer (`configure_lr_scheduler` calling
  `self.configure_optimizer()` again, a seed-project pattern) scheduled one nobody stepped:
  the learning rate never changed, silently;
- a module with lazy layers trained and saved, but none of its checkpoints loaded back
  (stpdist's own shape check read the shape of a parameter not yet materialised);
- a task class named by `model.name` silently ignored the Forecaster's settings given to it
  (`model.optimizer.lr: 0.5` trained at the module's own 0.01);
- a `training_step_end` that broke the output was blamed on `training_step`; a malformed
  validation "sums" leaked AttributeErrors; an empty validation loader was refused only
  after an epoch of training; `batch_size=None` was said to be a custom batch sampler."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import TinyModule, TinySequences, loader, said_warnings
from torch import nn
from torch.utils.data import DataLoader

from stpdist import Trainer
from stpdist.config import ConfigError, load_config
from stpdist.errors import InputError


def _trainer(tmp_path: Path, **fields) -> Trainer:
    fields = {"max_epochs": 1, "progress_bar": False, "output_dir": tmp_path / "run", **fields}
    return Trainer(**fields)


class _SecondOptimizer(TinyModule):
    def configure_lr_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.StepLR(self.configure_optimizer(), 1, 0.5)


def test_a_scheduler_of_another_optimizer_is_refused_before_training(tmp_path):
    with pytest.raises(TypeError, match="StepLR of another optimizer than the one it was given"):
        _trainer(tmp_path).fit(_SecondOptimizer(), loader(16))
    assert not (tmp_path / "run" / "checkpoints").exists()


class _Lazy(TinyModule):
    def __init__(self) -> None:
        super().__init__(scheduler=False)
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.Tanh(), nn.Linear(16, 32))


def test_a_module_with_lazy_layers_loads_its_checkpoints_back(tmp_path):
    trained = _Lazy()
    _trainer(tmp_path, max_epochs=1).fit(trained, loader(16), loader(8, shuffle=False))
    last = tmp_path / "run" / "checkpoints" / "step-00000004"
    results = _trainer(tmp_path).validate(_Lazy(), loader(8, shuffle=False), ckpt=last)
    expected = _trainer(tmp_path).validate(trained, loader(8, shuffle=False))
    assert results["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-6)
    state = _trainer(tmp_path, max_epochs=2).fit(_Lazy(), loader(16), resume="auto")
    assert state.global_step == 8  # 4 steps an epoch, the second epoch resumed


def test_a_task_class_refuses_the_forecasters_settings_naming_them(tmp_path, monkeypatch):
    package = tmp_path / "mine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text(
        "from helpers import TinyModule\n\nclass Task(TinyModule):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    sys.modules.pop("mine", None)
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: mine.task:Task\n  backbone: {lr: 0.01}\n")
    assert load_config(config).model.name == "mine.task:Task"  # backbone keywords: its own
    for override, key in [("model.optimizer.lr=0.5", "'model.optimizer.lr'"),
                          ("model.patch_size=4", "'model.patch_size'"),
                          ("model.schedule.name=cosine", "'model.schedule.name'")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"^{key}: settings of stpdist's Forecaster, which "
                           "'mine.task:Task'"):  # fmt: skip
            load_config(config, [override])
    # a checkpoint's config.yaml written by an earlier stpdist, which took them: read as is
    saved = load_config(config, ["model.optimizer.lr=0.5"], saved=True)
    assert saved.model.optimizer.lr == 0.5


class _EndReturnsAFloat(TinyModule):
    def training_step_end(self, output):
        return output.item()


class _BadSums(TinyModule):
    def __init__(self, sums) -> None:
        super().__init__()
        self.sums = sums

    def validation_step(self, inputs, targets):
        return {**super().validation_step(inputs, targets), "sums": self.sums}


def test_hook_errors_name_the_hook_and_the_entry(tmp_path):
    with pytest.raises(TypeError, match="^training_step_end returned a float at step 1"):
        _trainer(tmp_path).fit(_EndReturnsAFloat(), loader(16))
    for sums, said in [(1.0, "validation_step returned 'sums' as a float; expected a dict"),
                       ({"hits": 3}, r"validation_step returned sums\['hits'\] as a int")]:  # fmt: skip
        with pytest.raises(TypeError, match=said):
            _trainer(tmp_path / "v").validate(_BadSums(sums), loader(8, shuffle=False))


def test_an_empty_validation_set_and_an_unbatched_loader_are_refused_before_training(tmp_path):
    empty = DataLoader(TinySequences(0), batch_size=4)
    with pytest.raises(InputError, match="the validation data holds no samples"):
        _trainer(tmp_path).fit(TinyModule(), loader(16), empty)
    assert not (tmp_path / "run" / "checkpoints").exists()  # no epoch trained first
    unbatched = DataLoader(TinySequences(8), batch_size=None)
    with pytest.raises(TypeError, match="has batch_size=None .* set batch_size"):
        _trainer(tmp_path).fit(TinyModule(), unbatched)
    sampler = torch.utils.data.BatchSampler(range(8), 2, drop_last=False)
    custom = DataLoader(TinySequences(8), batch_sampler=sampler)
    with pytest.raises(TypeError, match="has a custom batch_sampler, which the Trainer cannot"):
        _trainer(tmp_path).fit(TinyModule(), custom)


class _LayerMadeInTheStep(TinyModule):
    """A layer created in the first training_step, after configure_optimizer."""

    def training_step(self, inputs, targets):
        if not hasattr(self, "late"):
            self.late = nn.Linear(32, 32)
        return nn.functional.mse_loss(self.late(self.net(inputs)).view(-1, 2, 1, 4, 4), targets)


class _HalfOptimized(TinyModule):
    def configure_optimizer(self):
        return torch.optim.Adam(self.net[1].parameters(), lr=self.lr)


def test_trainable_parameters_the_optimizer_never_steps_are_named(tmp_path):
    """A layer created after configure_optimizer (or left out of the optimizer's parameters)
    trained never, without a word: one warning at the first step names it; a module whose
    every trainable parameter is in the optimizer (lazy layers too) hears nothing."""
    with said_warnings() as said:
        module = _LayerMadeInTheStep(scheduler=False)
        _trainer(tmp_path, output_dir=tmp_path / "late").fit(module, loader(16))
        _trainer(tmp_path, output_dir=tmp_path / "half").fit(_HalfOptimized(), loader(16))
        _trainer(tmp_path, output_dir=tmp_path / "lazy").fit(_Lazy(), loader(16))
    found = [line for line in said if "in none of the optimizer's" in line]
    assert len(found) == 2, said
    assert found[0].startswith(
        "_LayerMadeInTheStep: trainable parameter(s) 'late.weight', 'late.bias' are in none "
        "of the optimizer's parameter groups at step 1, so they never change"
    ), found[0]
    assert found[1].startswith("_HalfOptimized: trainable parameter(s) 'net.4.weight', "), found
    assert module.late.weight.grad is not None  # it took part in the loss, and stayed put
