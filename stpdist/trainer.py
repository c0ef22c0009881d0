"""Trainer: fit / validate / predict as straight-line loops on accelerate.

Runs unchanged on one CPU process, several CPU processes (torchrun or accelerate launch:
gloo is chosen by itself on a CPU-only host), one or many GPUs, several nodes.
Tensors: inputs B×T_in×C×H×W, targets B×T_out×C×H×W.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointManager, TrainState, load_weights, read_state
from .config import CheckpointConfig, Config, LoggingConfig, to_yaml
from .data.stream import LoaderContext, as_eval_source, as_train_source, unpack_batch
from .module import EnhancedModule
from .tracking import Tracker, format_scalars

log = logging.getLogger("stpdist")


PREEMPTED_EXIT_CODE = 75
"""`stpdist train` exits with this code after a SIGTERM/SIGUSR1 stop with a checkpoint
(EX_TEMPFAIL: try again; `--resume auto` continues)."""


class Preempted(RuntimeError):
    """Training stopped on a signal after a completed optimizer step and a checkpoint."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(
            f"stopped on a signal after step {step}; checkpoint {checkpoint}; "
            "resume with --resume auto"
        )
        self.step, self.checkpoint = step, checkpoint


class _StopFlag:
    """Set by SIGTERM or SIGUSR1 (SLURM's warning signal); read at step boundaries."""

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def install(self) -> None:
        self.requested = False
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class _TrainingStep(nn.Module):
    """Routes `training_step` through the (DDP-)wrapped forward, so DDP's gradient hooks
    and accelerate's autocast see it."""

    def __init__(self, module: EnhancedModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Any:
        return self.module.training_step_end(self.module.training_step(inputs, targets))


def _loss_of(output: Any, step: int) -> torch.Tensor | None:
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if "loss" not in output:
            raise KeyError(
                f"training_step returned a dict without 'loss' at step {step} "
                f"(keys: {sorted(output)}); return the loss or None to skip the batch"
            )
        return output["loss"]
    raise TypeError(f"training_step must return a Tensor, a dict or None; got {type(output)}")


def _scalars_of(output: Any) -> dict[str, torch.Tensor]:
    """The scalar entries of a validation output (a tensor is the loss)."""
    if isinstance(output, torch.Tensor):
        return {"loss": output}
    if isinstance(output, dict):
        return {
            k: v
            for k, v in output.items()
            if (isinstance(v, torch.Tensor) and v.numel() == 1) or isinstance(v, float | int)
        }
    raise TypeError(f"validation_step must return a Tensor or a dict; got {type(output)}")


def _scheduler_of(returned: Any) -> tuple[Any, str]:
    if returned is None:
        return None, "step"
    if isinstance(returned, dict):
        interval = returned.get("interval", "step")
        if interval not in ("step", "epoch") or "scheduler" not in returned:
            raise ValueError(
                "configure_lr_scheduler dict needs 'scheduler' and 'interval' in ('step', 'epoch')"
            )
        return returned["scheduler"], interval
    return returned, "step"


class Trainer:
    """Runs an `EnhancedModule`'s hooks with DDP, mixed precision, accumulation,
    clipping, exact checkpoint/resume and exact cross-rank validation."""

    def __init__(
        self,
        *,
        max_epochs: int | None = 1,
        max_steps: int | None = None,
        mixed_precision: str = "no",
        gradient_accumulation_steps: int = 1,
        grad_clip_norm: float | None = None,
        seed: int = 0,
        output_dir: str | Path = "runs/default",
        log_every_n_steps: int = 10,
        val_every_n_epochs: int = 1,
        val_every_n_steps: int | None = None,
        checkpoint: CheckpointConfig | None = None,
        num_workers: int | None = None,
        progress_bar: bool = True,
        logging: LoggingConfig | None = None,
        config: Config | None = None,
    ) -> None:
        if max_epochs is None and max_steps is None:
            raise ValueError("set max_epochs or max_steps")
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.grad_clip_norm = grad_clip_norm
        self.seed = seed
        self.output_dir = Path(output_dir)
        self.log_every_n_steps = log_every_n_steps
        self.val_every_n_epochs = val_every_n_epochs
        self.val_every_n_steps = val_every_n_steps
        self.checkpoint_policy = checkpoint or CheckpointConfig()
        self.num_workers = num_workers
        self.progress_bar = progress_bar
        self.config = config
        self._stop = _StopFlag()
        logging = logging or LoggingConfig(num_samples=0)
        # the tracker decides the accelerate logger, which the Accelerator needs at birth
        self.tracker = Tracker(
            self.output_dir,
            is_main=False,
            num_samples=logging.num_samples,
            wandb=logging.wandb,
            config=config,
        )
        self.accelerator = _make_accelerator(
            mixed_precision, gradient_accumulation_steps, self.tracker.log_with
        )
        self.tracker.is_main = self.accelerator.is_main_process
        self.tracker.metrics.enabled = self.accelerator.is_main_process
        self.checkpoints = CheckpointManager(
            self.output_dir / "checkpoints",
            keep_last=self.checkpoint_policy.keep_last,
            keep_best=self.checkpoint_policy.keep_best,
            monitor=self.checkpoint_policy.monitor,
            mode=self.checkpoint_policy.mode,
        )
        # a process group left alive at interpreter exit can abort gloo's threads
        atexit.register(self.close)

    def close(self) -> None:
        """Finish trackers and destroy the process group (idempotent; also runs at exit).
        No barrier here: after a crash on one rank a barrier would never return."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.accelerator.trackers or (dist.is_available() and dist.is_initialized()):
            self.accelerator.end_training()

    @classmethod
    def from_config(cls, cfg: Config) -> Trainer:
        t = cfg.trainer
        return cls(
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            grad_clip_norm=t.grad_clip_norm,
            seed=t.seed,
            output_dir=t.output_dir,
            log_every_n_steps=t.log_every_n_steps,
            val_every_n_epochs=t.val_every_n_epochs,
            val_every_n_steps=t.val_every_n_steps,
            checkpoint=t.checkpoint,
            num_workers=t.num_workers,
            progress_bar=t.progress_bar,
            logging=cfg.logging,
            config=cfg,
        )

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def main_process_first(self) -> Any:
        """Context: the main process runs the body first, the others after it (e.g. to
        generate a dataset once)."""
        return self.accelerator.main_process_first()

    def _ctx(self) -> LoaderContext:
        acc = self.accelerator
        return LoaderContext(
            rank=acc.process_index,
            world_size=acc.num_processes,
            seed=self.seed,
            batch_multiple=acc.gradient_accumulation_steps,
            num_workers=self.num_workers,
        )

    def _print(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def _to_device(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(self.accelerator.device, non_blocking=True)

    def _agree(self, loss: torch.Tensor | None) -> tuple[float, bool, bool, bool]:
        """(global mean loss, any rank skipped, any rank non-finite, any rank asked to
        stop), the same on every rank.

        One small all-reduce per micro-batch keeps ranks in lockstep on skips, NaNs and
        preemption signals.
        """
        flags = torch.zeros(4, dtype=torch.float64, device=self.accelerator.device)
        flags[3] = float(self._stop.requested)
        if loss is None:
            flags[1] = 1
        else:
            value = loss.detach().double()
            finite = torch.isfinite(value)
            flags[0] = torch.where(finite, value, torch.zeros_like(value))
            flags[2] = (~finite).double()
        world = self.accelerator.num_processes
        if world > 1:
            dist.all_reduce(flags)
        total, skipped, nonfinite, stop = flags.tolist()  # host sync: waits for the device
        return total / world, skipped > 0, nonfinite > 0, stop > 0

    def _sync_grads_by_hand(self, module: nn.Module) -> None:
        """Average gradients across ranks when the micro-batch that would have carried
        DDP's all-reduce was skipped on every rank."""
        world = self.accelerator.num_processes
        if world == 1:
            return
        for param in module.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(world)

    def _save_config(self) -> None:
        if self.is_main and self.config is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(to_yaml(self.config))

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        module: EnhancedModule,
        train_data: Any,
        val_data: Any = None,
        resume: str | Path | None = None,
    ) -> TrainState:
        """Train `module`; `resume` is None, "auto" (newest complete checkpoint) or a path."""
        acc = self.accelerator
        ctx = self._ctx()
        train = as_train_source(train_data)
        val = as_eval_source(val_data) if val_data is not None else None
        batches_per_epoch = train.batches_per_epoch(ctx)
        accum = acc.gradient_accumulation_steps
        steps_per_epoch = batches_per_epoch // accum
        planned = [
            n
            for n in (self.max_steps, (self.max_epochs or 0) * steps_per_epoch or None)
            if n is not None
        ]
        total_steps = min(planned)
        module.planned_steps = total_steps  # read by schedules that need their length

        module.to(acc.device)
        optimizer = module.configure_optimizer()
        scheduler, interval = _scheduler_of(module.configure_lr_scheduler(optimizer))
        # The scheduler is not prepared: a prepared one steps num_processes times per step.
        model, optimizer = acc.prepare(_TrainingStep(module), optimizer)

        state = TrainState(world_size=acc.num_processes)
        if resume is None and self.checkpoints.latest() is not None:
            raise FileExistsError(
                f"{self.checkpoints.root} holds checkpoints of an earlier run; resume it "
                "(resume='auto', CLI --resume auto) or use another output_dir"
            )
        start = self.checkpoints.resolve(resume)
        if start is not None:
            saved = read_state(start)
            if saved.world_size != acc.num_processes and saved.batch != 0:
                raise ValueError(
                    f"{start} was written mid-epoch by {saved.world_size} processes; resume it "
                    f"with {saved.world_size} (now {acc.num_processes})"
                )
            state = self.checkpoints.load(start, acc, module, optimizer, scheduler)
            state.world_size = acc.num_processes
            self._rebucket_like_a_fresh_run(model, module, optimizer, train, ctx, state, start)
            self._print(f"resumed from {start} (epoch {state.epoch}, step {state.global_step})")
        else:
            if resume == "auto":
                self._print(f"no checkpoint in {self.checkpoints.root}; starting from scratch")
            set_seed(self.seed + acc.process_index)
        self._save_config()
        self.tracker.start(acc)
        config_yaml = to_yaml(self.config) if self.config is not None else None

        def save_checkpoint() -> None:
            path = self.checkpoints.save(acc, module, optimizer, scheduler, state, config_yaml)
            last_saved[0] = state.global_step
            self._print(f"checkpoint: {path}")

        def run_validation() -> None:
            results, samples = self._evaluate(module, val, ctx, self.tracker.num_samples)
            state.metrics = results
            last_validated[0] = state.global_step
            self.tracker.log(results, step=state.global_step, epoch=state.epoch)
            self.tracker.log_samples(samples, results, step=state.global_step)
            self._print(f"step {state.global_step}: {format_scalars(results)}")

        last_saved, last_validated = [state.global_step], [state.global_step]
        self._stop.install()  # SIGTERM / SIGUSR1: checkpoint after this step, then stop
        try:
            bar = tqdm(
                total=total_steps,
                initial=state.global_step,
                disable=not (self.is_main and self.progress_bar),
                dynamic_ncols=True,
            )
            module.train()
            window = {"loss": 0.0, "batches": 0, "samples": 0, "time": time.perf_counter()}
            epoch_stats = {"loss": 0.0, "batches": 0, "time": time.perf_counter()}
            grad_norm: float | None = None
            contributed = False  # did any micro-batch of this accumulation window backprop?
            done = state.global_step >= total_steps
            while not done and (self.max_epochs is None or state.epoch < self.max_epochs):
                bar.set_description(f"epoch {state.epoch}")
                for batch in train.iterate(ctx, state.epoch, state.batch):
                    inputs, targets, _ = unpack_batch(batch)
                    inputs, targets = self._to_device(inputs), self._to_device(targets)
                    module.global_step, module.current_epoch = state.global_step, state.epoch
                    with acc.accumulate(model):
                        loss = _loss_of(model(inputs, targets), state.global_step + 1)
                        mean_loss, skipped, nonfinite, stop = self._agree(loss)
                        if nonfinite:
                            raise FloatingPointError(
                                f"non-finite loss at step {state.global_step + 1} (epoch "
                                f"{state.epoch}, batch {state.batch}); last checkpoint: "
                                f"{self.checkpoints.latest()}"
                            )
                        if not skipped:
                            acc.backward(loss)
                            contributed = True
                        elif acc.sync_gradients and contributed:
                            self._sync_grads_by_hand(module)
                        if acc.sync_gradients and self.grad_clip_norm is not None and contributed:
                            grad_norm = float(
                                acc.clip_grad_norm_(module.parameters(), self.grad_clip_norm)
                            )
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    state.batch += 1
                    if not skipped:
                        window["loss"] += mean_loss
                        window["batches"] += 1
                        epoch_stats["loss"] += mean_loss
                        epoch_stats["batches"] += 1
                    window["samples"] += inputs.shape[0] * acc.num_processes
                    if not acc.sync_gradients:
                        continue

                    # ---- one optimizer step done
                    contributed = False
                    state.global_step += 1
                    if scheduler is not None and interval == "step":
                        if not acc.optimizer_step_was_skipped:
                            scheduler.step()
                    bar.update(1)
                    if state.global_step % self.log_every_n_steps == 0 and window["batches"]:
                        elapsed = time.perf_counter() - window["time"]
                        scalars = {
                            "train/loss": window["loss"] / window["batches"],
                            "train/lr": optimizer.param_groups[0]["lr"],
                            "train/samples_per_s": window["samples"] / max(elapsed, 1e-9),
                        }
                        if grad_norm is not None:
                            scalars["train/grad_norm"] = grad_norm
                        self.tracker.log(scalars, step=state.global_step, epoch=state.epoch)
                        bar.set_postfix(
                            loss=f"{scalars['train/loss']:.4g}",
                            lr=f"{scalars['train/lr']:.3g}",
                            sps=f"{scalars['train/samples_per_s']:.0f}",
                        )
                        window.update(loss=0.0, batches=0, samples=0, time=time.perf_counter())
                    if stop:  # every rank saw the same flag: all stop after this step
                        if last_saved[0] != state.global_step:
                            save_checkpoint()
                        bar.close()
                        raise Preempted(state.global_step, self.checkpoints.latest())
                    if state.batch == batches_per_epoch:  # the epoch ends on this step
                        break
                    if val is not None and self.val_every_n_steps:
                        if state.global_step % self.val_every_n_steps == 0:
                            run_validation()
                    every = self.checkpoint_policy.every_n_steps
                    if every and state.global_step % every == 0:
                        save_checkpoint()
                    if state.global_step >= total_steps:
                        done = True
                        break
                else:
                    if state.batch != batches_per_epoch:
                        raise RuntimeError(
                            f"training source yielded {state.batch} batches in epoch {state.epoch} "
                            f"on rank {acc.process_index}; it announced {batches_per_epoch}"
                        )
                if done:
                    break
                # ---- end of epoch
                finished_epoch = state.epoch
                state.epoch, state.batch = state.epoch + 1, 0
                if scheduler is not None and interval == "epoch":
                    scheduler.step()
                summary = {
                    "train/epoch_loss": epoch_stats["loss"] / max(epoch_stats["batches"], 1),
                    "time_s": round(time.perf_counter() - epoch_stats["time"], 2),
                }
                epoch_stats.update(loss=0.0, batches=0, time=time.perf_counter())
                self.tracker.log(summary, step=state.global_step, epoch=finished_epoch)
                due_val = self.val_every_n_epochs and state.epoch % self.val_every_n_epochs == 0
                due_step_val = self.val_every_n_steps and (
                    state.global_step % self.val_every_n_steps == 0
                )
                if val is not None and (due_val or due_step_val):
                    run_validation()
                self._print(
                    f"epoch {finished_epoch} done: step {state.global_step}/{total_steps}, "
                    f"{format_scalars({**summary, **state.metrics})}"
                )
                every = self.checkpoint_policy.every_n_steps
                if self.checkpoint_policy.every_epoch or (every and state.global_step % every == 0):
                    save_checkpoint()
                done = state.global_step >= total_steps
            bar.close()
            if val is not None and last_validated[0] != state.global_step:
                run_validation()
            if last_saved[0] != state.global_step or self.checkpoints.latest() is None:
                save_checkpoint()
            acc.wait_for_everyone()
            return state
        finally:
            self._stop.restore()

    def _rebucket_like_a_fresh_run(
        self,
        model: nn.Module,
        module: EnhancedModule,
        optimizer: Any,
        train: Any,
        ctx: LoaderContext,
        state: TrainState,
        start: Path,
    ) -> None:
        """DDP re-buckets gradients after its first backward, in the order they became
        ready. A fresh run's later steps use those buckets; a resumed run's first step would
        use the initial ones and, beyond 2 ranks, sum gradients in another order (off by
        float rounding). One throwaway forward/backward on the next batch lets DDP re-bucket
        as a fresh run did; weights, buffers and this rank's RNG are then put back."""
        if self.accelerator.num_processes <= 2:
            return  # two-term sums do not depend on the order
        batch = next(iter(train.iterate(ctx, state.epoch, state.batch)), None)
        if batch is None:  # the checkpoint sits at an epoch's end
            batch = next(iter(train.iterate(ctx, state.epoch + 1, 0)), None)
        if batch is None:
            return
        inputs, targets, _ = unpack_batch(batch)
        module.global_step, module.current_epoch = state.global_step, state.epoch
        loss = _loss_of(model(self._to_device(inputs), self._to_device(targets)), 0)
        _, skipped, nonfinite, _ = self._agree(loss)
        if not (skipped or nonfinite):
            loss.backward()  # all-reduced by DDP; the gradients are dropped below
        optimizer.zero_grad(set_to_none=True)
        self.checkpoints.restore_weights_and_rng(start, self.accelerator, module)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _evaluate(
        self, module: EnhancedModule, source: Any, ctx: LoaderContext, num_samples: int = 0
    ) -> tuple[dict[str, float], list]:
        """Batch-size-weighted means of the scalars every rank's batches returned, plus the
        module's metrics from additive "sums", all reduced exactly; and up to `num_samples`
        (key, inputs, truth, prediction) of the main process' first batches."""
        acc = self.accelerator
        was_training = module.training
        module.eval()
        scalars: dict[str, float] = {}
        sums: dict[str, torch.Tensor] = {}
        samples: list = []
        count = 0
        with acc.autocast():
            for batch in source.iterate(ctx):
                inputs, targets, keys = unpack_batch(batch)
                inputs, targets = self._to_device(inputs), self._to_device(targets)
                output = module.validation_step_end(module.validation_step(inputs, targets))
                size = inputs.shape[0]
                for key, value in _scalars_of(output).items():
                    scalars[key] = scalars.get(key, 0.0) + float(value) * size
                if isinstance(output, dict) and "sums" in output:
                    for key, value in output["sums"].items():
                        value = value.detach().double()
                        sums[key] = sums[key] + value if key in sums else value
                if self.is_main and len(samples) < num_samples and isinstance(output, dict):
                    preds = output.get("predictions")
                    for i in range(
                        min(size, num_samples - len(samples)) if preds is not None else 0
                    ):
                        key = keys[i] if keys is not None else f"{count + i:08d}"
                        samples.append(
                            (
                                key,
                                inputs[i].float().cpu().numpy(),
                                targets[i].float().cpu().numpy(),
                                preds[i].float().cpu().numpy(),
                            )
                        )
                count += size
        # ranks that saw no batch know no names or shapes: take the union
        layout = (sorted(scalars), sorted((k, tuple(v.shape)) for k, v in sums.items()))
        if acc.num_processes > 1:
            gathered: list = [None] * acc.num_processes
            dist.all_gather_object(gathered, layout)
            layout = (
                sorted(set().union(*(g[0] for g in gathered))),
                sorted(set().union(*(g[1] for g in gathered))),
            )
        names, shapes = layout
        parts = [
            torch.tensor(
                [scalars.get(n, 0.0) for n in names] + [count],
                dtype=torch.float64,
                device=acc.device,
            )
        ]
        for key, shape in shapes:
            value = sums.get(key)
            parts.append(
                (
                    value
                    if value is not None
                    else torch.zeros(shape, dtype=torch.float64, device=acc.device)
                ).flatten()
            )
        flat = torch.cat(parts)
        if acc.num_processes > 1:
            dist.all_reduce(flat)
        values = flat[: len(names) + 1].tolist()
        total_count = int(values[-1])
        if total_count == 0:
            raise ValueError("the validation data holds no samples")
        results = {f"val/{n}": v / total_count for n, v in zip(names, values[:-1])}
        if shapes:
            reduced, offset = {}, len(names) + 1
            for key, shape in shapes:
                size = int(np.prod(shape)) if shape else 1
                reduced[key] = flat[offset : offset + size].view(shape)
                offset += size
            for key, value in module.metrics_from_sums(reduced).items():
                results[f"val/{key}"] = value
        results["val/num_samples"] = total_count
        module.train(was_training)
        return results, samples

    def validate(self, module: EnhancedModule, data: Any, ckpt: str | Path | None = None) -> dict:
        """Evaluate `module` (weights from `ckpt` if given) over all of `data`."""
        if ckpt is not None:
            load_weights(ckpt, module)
        module.to(self.accelerator.device)
        results, _ = self._evaluate(module, as_eval_source(data), self._ctx())
        self.tracker.log(results, step=module.global_step, epoch=module.current_epoch)
        return results

    @torch.no_grad()
    def predict(
        self,
        module: EnhancedModule,
        data: Any,
        ckpt: str | Path | None = None,
        out: str | Path | None = None,
    ) -> Path:
        """Write predictions keyed by sample: `out/predictions-r<rank>-<part>.npz`, each with
        `keys` (N,) and `predictions` N×T_out×C×H×W float32. Returns `out`."""
        acc = self.accelerator
        if ckpt is not None:
            load_weights(ckpt, module)
        out = Path(out) if out is not None else self.output_dir / "predictions"
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            for old in out.glob("predictions-r*.npz"):
                old.unlink()
        acc.wait_for_everyone()
        module.to(acc.device)
        module.eval()
        written = 0
        with acc.autocast():
            for part, batch in enumerate(as_eval_source(data).iterate(self._ctx())):
                inputs, targets, keys = unpack_batch(batch)
                if keys is None:
                    raise ValueError("prediction batches must carry sample keys")
                pred = module.predict_step(self._to_device(inputs), self._to_device(targets))
                np.savez(
                    out / f"predictions-r{acc.process_index:03d}-{part:06d}.npz",
                    keys=np.asarray(keys),
                    predictions=pred.float().cpu().numpy(),
                )
                written += len(keys)
        total = torch.tensor([written], device=acc.device)
        if acc.num_processes > 1:
            dist.all_reduce(total)
        self._print(f"wrote {int(total.item())} predictions to {out}")
        return out


def _make_accelerator(
    mixed_precision: str, accumulation: int, log_with: str | None = None
) -> Accelerator:
    """An Accelerator for this host: CPU ranks over gloo when there is no CUDA device."""
    cpu = not torch.cuda.is_available()
    if mixed_precision == "fp16" and cpu:
        raise ValueError(
            "mixed_precision='fp16' needs a CUDA device (on CPU it would silently run in "
            "fp32); use 'bf16' or 'no'"
        )
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be no, bf16 or fp16; got {mixed_precision!r}")
    # A new Trainer in the same process may ask for other settings than the last one.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    plugin = GradientAccumulationPlugin(num_steps=accumulation, sync_with_dataloader=False)
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=plugin,
        step_scheduler_with_optimizer=False,
        log_with=log_with,
        project_dir=None,
    )


def load_predictions(folder: str | Path) -> dict[str, np.ndarray]:
    """Every prediction `Trainer.predict` wrote to `folder`, by sample key."""
    found: dict[str, np.ndarray] = {}
    for file in sorted(Path(folder).glob("predictions-r*.npz")):
        with np.load(file, allow_pickle=False) as data:
            found.update(zip(data["keys"].tolist(), data["predictions"]))
    return found
