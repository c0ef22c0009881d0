"""Forecaster: the forecasting task, one EnhancedModule for every backbone, configured
from the `model` section of a config, never subclassed.

The task owns what is not architecture: patching around the backbone, the loss (plus the
backbone's explicit auxiliary losses), optimizer, learning-rate schedule, scheduled
sampling, output clamping and metrics. Backbones live in `stpdist/models/`.

Legend: B batch, T time, C channels, H×W frame size. Inputs B×T_in×C×H×W in [0, 1],
targets B×T_out×C×H×W.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from . import metrics, plugins
from .config import ConfigError, ModelConfig, ScheduleConfig, backbone_config, check_frame_size
from .console import warn_main
from .data.normalize import Normalizer
from .errors import InputError
from .models import BackboneOutput, FrameSpec, as_output, backbone_args, build_backbone
from .models.base import UNTRUSTED_SOURCES, UntrustedImportPath, import_object
from .models.fused import fusion
from .models.recurrent import FrameRecurrent
from .models.simvp import differential_divergence
from .module import EnhancedModule

_LOSSES = {
    "mse": lambda p, t: nn.functional.mse_loss(p, t),
    "l1": lambda p, t: nn.functional.l1_loss(p, t),
    "mse+l1": lambda p, t: nn.functional.mse_loss(p, t) + nn.functional.l1_loss(p, t),
}


def _user_loss(path: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`model.loss` given by import path: a function, or a class built with no arguments
    (an `nn.Module` loss such as `torch.nn:HuberLoss`). Refused with a ConfigError naming
    the key: what does not import, is not callable, or holds tensors of its own (they would
    be trained by no optimizer and saved in no checkpoint)."""
    try:
        found = import_object(path, "model.loss")
        if isinstance(found, type):
            found = found()
    except UntrustedImportPath:
        raise
    except (ImportError, ValueError, TypeError) as exc:
        said = str(exc)
        raise ConfigError(
            said if "model.loss" in said else f"model.loss '{path}': {said}"
        ) from None
    if not callable(found):
        raise ConfigError(f"model.loss '{path}' is {found!r}, not a function")
    if isinstance(found, nn.Module) and any(True for _ in found.state_dict()):
        raise ConfigError(
            f"model.loss '{path}' holds tensors of its own ({', '.join(found.state_dict())}): "
            "no optimizer trains them and no checkpoint keeps them; give a function, or a "
            "class without parameters or buffers"
        )
    return found


class Forecaster(EnhancedModule):
    """Backbone `config.name` with loss, optimizer, schedule, scheduled sampling, patching,
    clamping and metrics, all read from `config` (the `model` section)."""

    validation_predicts = True  # predict writes validation_step's predictions
    skips_batches = False  # never returns None: its steps read nothing on the host

    def __init__(
        self,
        config: ModelConfig,
        frame_shape: tuple[int, int, int],
        num_input_frames: int,
        num_output_frames: int,
        *,
        value_scale: float = 1.0,
        normalizer: Normalizer | None = None,
        geo: metrics.GeoInfo | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._graph_probabilities: torch.Tensor | None = None  # see refresh_graph_inputs
        channels, height, width = frame_shape
        # the data's frame size against what the config assumed of it (pool sizes, LPIPS)
        check_frame_size(config, height, width, "the data's frames")
        p = config.patch_size
        if height % p or width % p:
            raise ValueError(f"frame size {height}×{width} is not divisible by patch_size {p}")
        spec = FrameSpec(
            channels * p * p, height // p, width // p, num_input_frames, num_output_frames
        )
        if plugins.is_import_path(config.name):  # a user's backbone, by import path
            cls = plugins.resolve_model(config.name)
            values = config.backbone
            if dataclasses.is_dataclass(getattr(cls, "Args", None)) and not isinstance(
                values, cls.Args
            ):
                # its Args as the schema types them (an int 2 for a float field as 2.0, a
                # list for a tuple as a tuple), not the config's raw values (a plugins
                # review: `init_gain: 2` reached torch.tensor as an int)
                values = backbone_config(config)
            self.backbone = plugins.build_user_backbone(cls, spec, values)
        else:
            self.backbone = build_backbone(
                config.name, spec, backbone_args(config.name, config.backbone)
            )
        if config.sampling.mode != "none" and not isinstance(self.backbone, FrameRecurrent):
            raise ValueError(
                f"'{config.name}' does not feed frames back: scheduled sampling does not apply "
                "(a backbone built on stpdist.models.recurrent.FrameRecurrent does)"
            )
        if config.loss_frames == "all" and not isinstance(self.backbone, FrameRecurrent):
            raise ValueError(
                f"'{config.name}' does not predict frame by frame: model.loss_frames 'all' "
                "(every next-frame prediction) does not apply; use 'outputs'"
            )
        # not a submodule: a loss class's instance adds nothing to the weights
        object.__setattr__(self, "_loss", _LOSSES.get(config.loss))
        # a model folder read without trust_code: its loss is imported by no one (a forecast
        # needs none; a validation is refused at its first loss, as the import would be)
        self._untrusted = UNTRUSTED_SOURCES[-1] if UNTRUSTED_SOURCES else None
        if self._loss is None and self._untrusted is None:
            object.__setattr__(self, "_loss", _user_loss(config.loss))
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames
        self.frame_shape = tuple(frame_shape)
        self._patched_frame = (spec.channels, spec.height, spec.width)  # what the backbone sees
        self.frame_pixels = channels * height * width
        self.value_scale = value_scale  # stored units per 1.0 of scaled data (thresholds)
        # scaled batches → the model's space and back (data.normalize; identity by default)
        self.normalizer = normalizer or Normalizer("scale", value_scale=value_scale)
        self.geo = geo  # variable names, latitudes, climatology: per-variable scores
        # the channels CSI/POD/FAR/HSS count events in (model.evaluation.threshold_channel)
        self._scored_channels = _threshold_channels(config.evaluation, channels, self.channel_names)
        # LPIPS's AlexNet, built once; a plain attribute, not a submodule, so it stays out of
        # the parameters, the optimizer, state_dict and checkpoints
        lpips_weights = config.evaluation.lpips_weights
        self.lpips = metrics.LPIPSScorer(lpips_weights, (height, width)) if lpips_weights else None
        # PSNR and SSIM (data range 1) compare images in [0, 1]: not reported for data in
        # other units (physical, e.g. kelvin), where they would mean nothing
        self.image_scores = self.normalizer.unit_range

    def forward(
        self,
        inputs_BTCHW: torch.Tensor,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
        *,
        all_frames: bool = False,
        clamp: bool = True,
    ) -> BackboneOutput:
        """The backbone's output in the data's frame layout (predictions B×T_out×C×H×W,
        clamped to [0, 1] outside training when configured) with its auxiliary losses.
        `all_frames` (frame-recurrent backbones): every next-frame prediction instead,
        B×(T_in+T_out−1)×C×H×W, frames 1.. of inputs followed by targets. `clamp=False`:
        the raw predictions (for the `*_raw` metrics)."""
        p = self.config.patch_size
        extra = {"all_frames": True} if all_frames else {}  # other backbones lack the keyword
        with fusion(self.fuses(inputs_BTCHW.device)):
            out = as_output(
                self.backbone(
                    reshape_patch(inputs_BTCHW, p),
                    self.num_output_frames,
                    targets_BTCHW=None
                    if targets_BTCHW is None
                    else reshape_patch(targets_BTCHW, p),
                    teacher_mask_BT=teacher_mask_BT,
                    **extra,
                )
            )
        self._check_output(out.predictions, inputs_BTCHW.shape[0], all_frames)
        pred = reshape_patch_back(out.predictions, p)
        if clamp:
            pred = self.clamped(pred)
        return BackboneOutput(pred, out.aux_losses)

    def fuses(self, device: torch.device) -> bool:
        """Whether the backbone's fused regions run as fused kernels on `device`
        (`model.fused_kernels`)."""
        mode = getattr(self.config, "fused_kernels", "auto")
        return mode == "on" or (mode == "auto" and device.type == "cuda")

    def _check_output(self, predictions: Any, batch: int, all_frames: bool) -> None:
        """The backbone contract, B×T_out×C×H×W (in the patched layout the backbone sees),
        checked on every eager call: shapes are known on the host, so this reads nothing
        back from the device. A wrong shape would otherwise broadcast into the loss and
        train a whole epoch before failing."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return  # exports and compiled graphs: the eager calls before them checked it
        frames = self.num_output_frames
        if all_frames:
            frames += self.num_input_frames - 1
        expected = (batch, frames, *self._patched_frame)
        got = tuple(getattr(predictions, "shape", ()))
        if got != expected:
            what = "every next-frame prediction" if all_frames else "the T_out output frames"
            p = self.config.patch_size
            patched = f", after patch_size {p}" if p > 1 else ""
            returned = "×".join(map(str, got)) or type(predictions).__name__
            raise InputError(
                f"backbone '{self.config.name}' returned predictions of shape {returned}; "
                f"expected {'×'.join(map(str, expected))} (B×T×C×H×W: {what}{patched})"
            )

    def compile_for_training(self, mode: str = "default") -> None:
        """Regional compilation: a frame-recurrent backbone's one-frame `step` (compiled
        once, reused for all T_in+T_out−1 frames, instead of unrolling the loop into one
        graph), any other backbone whole. The teacher mask is drawn in `training_step`,
        outside the compiled code, and enters as a tensor: scheduled sampling, whose
        probabilities change every step, causes no recompilation. The loop then calls `step`
        at every frame (no batching over time, which would bypass it)."""
        if isinstance(self.backbone, FrameRecurrent):
            if mode == "reduce-overhead":
                raise ConfigError(
                    f"trainer.compile_mode reduce-overhead with '{self.config.name}': it "
                    "compiles the backbone's one-frame step, and this mode's CUDA graphs "
                    "start anew at each call outside training, overwriting the previous "
                    "frame's state (validation fails); use compile_mode default, or "
                    "trainer.cuda_graphs, which captures the whole training step"
                )
            self.backbone.step = torch.compile(self.backbone.step, mode=mode)
            self.backbone.batch_over_time = False
        else:
            self.backbone.compile(mode=mode)

    def enable_activation_checkpointing(self) -> None:
        """Frame-recurrent backbones recompute each step's activations in the backward."""
        if not isinstance(self.backbone, FrameRecurrent):
            raise ValueError(
                f"trainer.activation_checkpointing applies to frame-recurrent backbones; "
                f"'{self.config.name}' is not one"
            )
        self.backbone.checkpoint_steps = True

    def clamped(self, pred: torch.Tensor) -> torch.Tensor:
        """`pred` clamped to the data's range outside training when configured."""
        if self.config.evaluation.clamp_output and not self.training:
            pred = self.normalizer.clamp(pred)  # [0, 1] scaled, or each variable's range
        return pred

    def predict_frames(self, inputs_BTCHW: torch.Tensor) -> torch.Tensor:
        """Predictions B×T_out×C×H×W from the inputs alone, in the data's scaled units (as
        the streams deliver them); what validation and `predict` use. The statistics meet
        the values in float32: a model cast to bfloat16 gets its inputs in bfloat16 after
        them, and gives float32 predictions."""
        normalized = self.normalizer(inputs_BTCHW).to(inputs_BTCHW.dtype)
        return self.normalizer.inverse(self(normalized).predictions)

    # ------------------------------------------------------------------ physical units
    value_range: tuple[list[float], list[float]] | None = None
    """Per-channel min and max of the training data in physical units (`stpdist.load` sets
    them from index.json): `forecast` warns on inputs whose values do not look like them."""

    def from_physical(self, frames: torch.Tensor) -> torch.Tensor:
        """Stored (physical) units → the scaled units the model works in."""
        return frames / self.value_scale

    def to_physical(self, frames: torch.Tensor) -> torch.Tensor:
        """The model's scaled units → stored (physical) units."""
        return frames * self.value_scale

    @overload
    def forecast(self, frames: torch.Tensor, *, allow_nonfinite: bool = False) -> torch.Tensor: ...

    @overload
    def forecast(self, frames: Any, *, allow_nonfinite: bool = False) -> np.ndarray: ...

    @torch.inference_mode()
    def forecast(self, frames: Any, *, allow_nonfinite: bool = False) -> Any:
        """T_out frames after the given ones, all in physical (stored) units: a numpy array
        or tensor of T×C×H×W or B×T×C×H×W (T×H×W for a one-channel model), returned in the
        same layout, float32: a tensor as a tensor (on the module's device), anything else
        (an array, nested lists) as a numpy array. With more
        than T_in frames the newest T_in are used (as `stpdist forecast` does). The inputs
        are checked first (frame size and channels, at least T_in frames, dtype; NaN/Inf
        refused unless `allow_nonfinite`, except NaN of a model whose training data stored
        NaN as a fill value (`--allow-nan`), forecast from as that value; a warning when the values look [0, 1]-scaled for
        a model trained on 0–255), each failure one line. Scaling, patching and clamping
        happen inside; the module's mode is left as it is (a module from `stpdist.load` is
        in eval mode)."""
        from .inference import check_inputs, fill_missing

        as_numpy = not isinstance(frames, torch.Tensor)
        if not isinstance(frames, torch.Tensor):
            frames = np.asarray(frames)
        one_channel = frames.ndim == 3 and self.frame_shape[0] == 1  # T×H×W, as shard reads
        frames = frames[:, None] if one_channel else frames
        check_inputs(frames, self, "forecast inputs", allow_nonfinite=allow_nonfinite)
        if isinstance(frames, np.ndarray):  # a view with negative strides (frames[::-1]):
            frames = np.ascontiguousarray(frames)  # torch takes none
        x = torch.as_tensor(frames)
        single = x.dim() == 4
        x = x[None] if single else x
        x = x[:, -self.num_input_frames :]  # the newest T_in frames
        parameter = next(self.parameters())
        x = fill_missing(x.to(parameter.device, torch.float32), self)  # NaN as in training
        x = self.from_physical(x).to(parameter.dtype)
        out = self.to_physical(self.predict_frames(x).float())
        out = out[0] if single else out
        out = out[:, 0] if one_channel else out  # T_out×H×W, as given
        return out.cpu().numpy() if as_numpy else out

    # ------------------------------------------------------------------ hooks
    def configure_optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optimizer
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name]
        return kind(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)

    def configure_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        schedule = self.config.schedule
        _say_ignored_schedule_settings(schedule, self.planned_steps)
        if schedule.name == "none" and not schedule.warmup_steps:
            return None
        interval = schedule.interval
        if interval == "epoch" and (
            schedule.name not in ("cosine", "cosine_restarts")
            or (schedule.name == "cosine" and not schedule.total_steps)
        ):
            raise ValueError(
                "model.schedule.interval 'epoch' needs name 'cosine' with total_steps "
                "(epochs), or 'cosine_restarts'"
            )
        total = schedule.total_steps or self.planned_steps
        if schedule.name in ("onecycle", "cosine") and not total:
            raise ValueError(f"lr schedule '{schedule.name}' needs model.schedule.total_steps")
        if schedule.name == "onecycle":
            peak = self.config.optimizer.lr
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, peak, total_steps=total)
        factor = lr_factor(schedule, self.config.optimizer.lr, total)
        return {
            "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
            "interval": interval,
        }

    # ------------------------------------------------------------------ scheduled sampling
    def teacher_probabilities(self, step: int) -> tuple[float, float]:
        """(P(true input frame), P(true output frame)) at optimizer step `step`.

        linear (OpenSTL): outputs start at `start`, fall by `decay` per step, and are 0
        from `stop_step` on; inputs are always true.
        reverse (PredRNN.V2): inputs rise from 0.5 towards 1 (exponentially, time constant
        `reverse_alpha`) between the two `reverse_steps`; outputs fall linearly from 0.5
        to 0 over the same interval.
        """
        sampling = self.config.sampling
        if sampling.mode == "linear":
            if step >= sampling.stop_step:
                return 1.0, 0.0
            return 1.0, max(0.0, sampling.start - sampling.decay * step)
        if sampling.mode == "reverse":
            first, second = sampling.reverse_steps
            if step < first:
                return 0.5, 0.5
            if step < second:
                into = step - first
                return (
                    1 - 0.5 * math.exp(-into / sampling.reverse_alpha),
                    0.5 - 0.5 * into / (second - first),
                )
        return 1.0, 0.0

    def refresh_graph_inputs(self, step: int) -> None:
        """Scheduled sampling's probabilities of optimizer step `step` into a device tensor
        that `teacher_mask` then reads (a replayed graph reads no host value)."""
        if self.config.sampling.mode == "none":
            return
        p_in, p_out = self.teacher_probabilities(step - 1)  # training_step sees global_step
        if self._graph_probabilities is None:
            device = next(self.parameters()).device
            self._graph_probabilities = torch.zeros(2, device=device)
        self._graph_probabilities.copy_(torch.tensor([p_in, p_out]), non_blocking=True)

    def teacher_mask(self, inputs: torch.Tensor, step: int) -> torch.Tensor | None:
        """Per-sample choices of true (1) or predicted (0) frames, built on the device
        (under `trainer.cuda_graphs`, with the probabilities read from the device)."""
        mode = self.config.sampling.mode
        if mode == "none":
            return None
        b, t_in = inputs.shape[:2]
        p_in, p_out = self.teacher_probabilities(step)
        if self.in_step_graph and self._graph_probabilities is not None:
            p_in, p_out = self._graph_probabilities.unbind()
        draws_out = torch.rand(b, self.num_output_frames - 1, device=inputs.device) < p_out
        if mode == "linear":
            return draws_out.to(inputs.dtype)
        draws_in = torch.rand(b, t_in - 1, device=inputs.device) < p_in
        return torch.cat([draws_in, draws_out], dim=1).to(inputs.dtype)

    def training_step(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | dict[str, Any]:
        """The loss on the frames `loss_frames` names (the outputs, or every next-frame
        prediction against inputs[1:] then targets) plus the backbone's auxiliary losses,
        each also returned on its own for the logs."""
        inputs, targets = self.normalizer(inputs), self.normalizer(targets)
        mask = self.teacher_mask(inputs, self.global_step)
        every_frame = self.config.loss_frames == "all"
        out = self(inputs, targets if mask is not None else None, mask, all_frames=every_frame)
        truth = torch.cat([inputs[:, 1:], targets], dim=1) if every_frame else targets
        loss = self.loss(out.predictions, truth)
        outputs = out.predictions[:, -self.num_output_frames :]
        logged = {"frames_loss": loss.detach()}
        aux = dict(out.aux_losses)
        weight, form = self.config.divergence_weight, self.config.divergence_form
        if weight:
            aux["divergence"] = weight * differential_divergence(outputs, targets, form=form)
        for name, value in aux.items():
            loss = loss + value
            logged[name] = value.detach()
        return {"loss": loss, **logged} if aux else loss

    def loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`model.loss` of `predictions` against `targets`; one of the user's (an import
        path) that returns no single number is refused naming it and the shape."""
        if self._loss is None:
            UNTRUSTED_SOURCES.append(self._untrusted)
            try:
                object.__setattr__(self, "_loss", _user_loss(self.config.loss))
            except UntrustedImportPath as exc:
                raise InputError(str(exc)) from None
            finally:
                UNTRUSTED_SOURCES.pop()
        value = self._loss(predictions, targets)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(
                f"model.loss '{self.config.loss}' returned {shape}; expected one number, a "
                "tensor of one element (reduce it: .mean())"
            )
        return value.reshape(())

    def validation_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        # losses in the model's (normalised) space, metrics in the data's scaled units
        norm = self.normalizer
        raw_model, targets_model = self(norm(inputs), clamp=False).predictions, norm(targets)
        pred_model = self.clamped(raw_model)  # raw_model scores the `*_raw` metrics
        pred = norm.inverse(pred_model)
        copy_last = norm(inputs[:, -1:]).expand_as(targets)
        thresholds = [t / self.value_scale for t in self.config.evaluation.metric_thresholds]
        sums = metrics.batch_sums(
            pred,
            targets,
            raw_pred_BTCHW=norm.inverse(raw_model),
            image_scores=self.image_scores,
        )
        scored = (pred[:, :, self._scored_channels], targets[:, :, self._scored_channels])
        # persistence (copy the last input frame), per lead time: the nowcasting reference
        last = inputs[:, -1:].expand_as(targets)
        sums["persistence_sq_err"] = (last - targets).double().pow(2).sum(dim=(2, 3, 4)).sum(0)
        if thresholds:
            self._say_pooled_channels()
            sums.update(metrics.event_sums(*scored, thresholds))
            held = last[:, :, self._scored_channels]
            sums.update(metrics.event_sums(held, scored[1], thresholds, metrics.PERSISTENCE))
        if self.geo is not None:
            sums.update(metrics.geo_sums(pred, targets, self.geo, persistence=last))
        if self.lpips is not None:
            sums.update(self.lpips.sums(pred, targets))
        pools, fss = self.config.evaluation.csi_pool_sizes, self.config.evaluation.fss_sizes
        if thresholds and (pools or fss):
            convention = self.config.evaluation.score_convention
            sums.update(metrics.neighbourhood_sums(*scored, thresholds, pools, fss, convention))
        return {
            "loss": self.loss(pred_model, targets_model),
            "copy_last_mse": nn.functional.mse_loss(copy_last, targets_model),
            "sums": sums,
            "predictions": pred,
        }

    def metrics_from_sums(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        thresholds = self.config.evaluation.metric_thresholds
        convention = self.config.evaluation.score_convention
        out = metrics.summarize(sums, self.frame_pixels, thresholds, convention)
        if "persistence_sq_err" in sums:  # copy-last-frame MSE per lead time, per pixel
            per_lead = sums["persistence_sq_err"] / (float(sums["count"].sum()) * self.frame_pixels)
            out["persistence_mse"] = float(per_lead.mean())
            out.update(
                {f"persistence_mse/t{t + 1:02d}": v for t, v in enumerate(per_lead.tolist())}
            )
        if self.geo is not None:
            out.update(metrics.summarize_geo(sums, self.geo, self.value_scale))
        if thresholds:
            evaluation = self.config.evaluation
            out.update(
                metrics.summarize_neighbourhood(
                    sums, thresholds, evaluation.csi_pool_sizes, evaluation.fss_sizes, convention
                )
            )
        return out

    @property
    def schedule_follows_plan(self) -> bool:
        """Whether the lr schedule's length is the steps `fit` plans (a `cosine` without
        `model.schedule.total_steps`): a resume that plans more stretches it."""
        schedule = self.config.schedule
        return schedule.name == "cosine" and not schedule.total_steps

    def _say_pooled_channels(self) -> None:
        """Once: thresholds counted over several channels without a choice of them."""
        channels = self.frame_shape[0]
        if channels == 1 or self.config.evaluation.threshold_channel is not None:
            return
        if getattr(self, "_said_pooled", False):
            return
        self._said_pooled = True
        names = self.channel_names
        which = f" ({', '.join(names)})" if names else ""
        warn_main(
            "model.evaluation.metric_thresholds are counted over the %d channels%s together "
            "(CSI/POD/FAR/HSS of every channel's pixels pooled): set "
            "model.evaluation.threshold_channel to the channel they are in the units of, or "
            "'all' to pool them without this warning",
            channels, which,
        )  # fmt: skip

    @property
    def channel_names(self) -> list[str] | None:
        """A name per channel (the dataset's variables, e.g. z500, t2m), which sample
        pictures label their rows with; None where the module has no `geo` (`c0`, `c1`…)."""
        return None if self.geo is None else list(self.geo.names)

    @property
    def writes_physical_units(self) -> bool:
        """`predict` writes physical (stored) units unless the data are only scaled (the
        behaviour before per-variable normalisation: frames / value_scale)."""
        return not self.normalizer.identity

    def predict_step(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return self.predict_frames(inputs)


# ---------------------------------------------------------------------- lr schedules
def _say_ignored_schedule_settings(schedule: ScheduleConfig, planned: int | None) -> None:
    """Settings the chosen schedule does not read, and a cosine shorter than the run (its
    rest trains at `min_lr`), said once at fit: each ran silently (a schedules review)."""
    ignored = []
    if schedule.min_lr and schedule.name not in ("cosine", "cosine_restarts"):
        ignored.append(f"min_lr {schedule.min_lr:g}")
    if schedule.name != "cosine_restarts":
        if schedule.restart_every_steps:
            ignored.append(f"restart_every_steps {schedule.restart_every_steps}")
        if schedule.restart_mult != 1:
            ignored.append(f"restart_mult {schedule.restart_mult}")
    if ignored:
        own = " (onecycle ends at lr / 25 / 1e4, its own end)" * (schedule.name == "onecycle")
        warn_main(
            "model.schedule.name %s does not read %s%s: only the cosine schedules decay to "
            "min_lr, and only cosine_restarts restarts",
            schedule.name, ", ".join(ignored), own,
        )  # fmt: skip
    if (
        schedule.name == "cosine"
        and schedule.interval == "step"
        and schedule.total_steps
        and planned
        and schedule.total_steps < planned
    ):
        warn_main(
            "model.schedule.total_steps %d is shorter than this run's %d steps: the cosine "
            "ends at step %d, and the last %d steps train at min_lr %g",
            schedule.total_steps, planned, schedule.total_steps,
            planned - schedule.total_steps, schedule.min_lr,
        )  # fmt: skip


def lr_factor(
    schedule: ScheduleConfig, peak_lr: float, total: int | None
) -> Callable[[int], float]:
    """The learning rate at step `step` (epochs with `interval: epoch`) as a fraction of
    `peak_lr`, for every schedule but onecycle: a linear warm-up, (step + 1) / warmup_steps,
    then the schedule named, counted from the warm-up's end. `total` (cosine): the
    schedule's length with the warm-up."""
    warmup, name = schedule.warmup_steps, schedule.name
    floor = schedule.min_lr / peak_lr  # where the cosines end, as a fraction of the peak
    first, mult = schedule.restart_every_steps, schedule.restart_mult
    if name == "cosine":
        after = functools.partial(_cosine, length=max(1, (total or 0) - warmup), floor=floor)
    elif name == "cosine_restarts":
        if not first:
            raise ValueError(
                "lr schedule 'cosine_restarts' needs model.schedule.restart_every_steps"
            )
        after = functools.partial(_cosine_restarts, first=first, mult=mult, floor=floor)
    elif name == "none":
        after = _constant
    else:
        raise ValueError(f"lr schedule {name!r} has no warm-up form; expected none or a cosine")
    return functools.partial(_warmed_up, warmup=warmup, after=after)


def _warmed_up(step: int, *, warmup: int, after: Callable[[int], float]) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return after(step - warmup)


def _constant(step: int) -> float:
    return 1.0


def _cosine(step: int, *, length: int, floor: float) -> float:
    """Half a cosine from 1 down to `floor` over `length` steps, then `floor`."""
    progress = min(1.0, step / length)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def restart_cycle(step: int, first: int, mult: int) -> tuple[int, int]:
    """(steps into the current cycle, that cycle's length) at `step` of cosine cycles of
    `first`, `first`·mult, `first`·mult², … steps (closed form: no loop over cycles)."""
    if mult == 1:
        return step % first, first
    # cycle i starts at first·(mult^i − 1)/(mult − 1); float log guesses i, integers fix it
    i = int(math.log(step * (mult - 1) / first + 1, mult))
    while i > 0 and first * (mult**i - 1) // (mult - 1) > step:
        i -= 1
    while first * (mult ** (i + 1) - 1) // (mult - 1) <= step:
        i += 1
    return step - first * (mult**i - 1) // (mult - 1), first * mult**i


def _cosine_restarts(step: int, *, first: int, mult: int, floor: float) -> float:
    """SGDR's cosine with warm restarts: each cycle falls from 1 to `floor`, then the
    rate jumps back to the peak."""
    into, length = restart_cycle(step, first, mult)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * into / length))


# ---------------------------------------------------------------------- patching
def reshape_patch(frames_BTCHW: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B×T×C×H×W → B×T×(p·p·C)×(H/p)×(W/p): fold p×p pixel patches into channels."""
    if patch_size == 1:
        return frames_BTCHW
    b, t, c, h, w = frames_BTCHW.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"frame size {h}×{w} is not divisible by patch_size {p}")
    x = frames_BTCHW.reshape(b, t, c, h // p, p, w // p, p)
    return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, t, p * p * c, h // p, w // p)


def reshape_patch_back(patches_BTCHW: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of `reshape_patch`."""
    if patch_size == 1:
        return patches_BTCHW
    b, t, pc, hp, wp = patches_BTCHW.shape
    p = patch_size
    c = pc // (p * p)
    x = patches_BTCHW.reshape(b, t, p, p, c, hp, wp)
    return x.permute(0, 1, 4, 5, 2, 6, 3).reshape(b, t, c, hp * p, wp * p)


def _threshold_channels(evaluation: Any, channels: int, names: list[str] | None) -> slice:
    """The channels of a frame that the thresholds' event counts take
    (`model.evaluation.threshold_channel`: an index, a variable's name, or `all`)."""
    chosen = evaluation.threshold_channel
    if chosen is None or chosen == "all":
        return slice(None)
    if chosen.isdigit() and int(chosen) < channels:
        return slice(int(chosen), int(chosen) + 1)
    if names and chosen in names:
        return slice(names.index(chosen), names.index(chosen) + 1)
    named = f", a variable's name ({', '.join(names)})" if names else ""
    raise ConfigError(
        f"model.evaluation.threshold_channel {chosen!r}: expected a channel index, 0 to "
        f"{channels - 1}{named}, or 'all'"
    )
