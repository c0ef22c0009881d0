"""From a resolved Config to the pieces a run needs: dataset, streams, module."""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .data.format import INDEX_FILE, read_index
from .data.stream import ShardEvalStream, ShardTrainStream
from .data.synthetic import write_moving_digits
from .models.forecaster import Forecaster
from .trainer import Trainer


def split_dir(cfg: Config, split: str) -> Path:
    return Path(cfg.data.root) / split


def ensure_dataset(cfg: Config, trainer: Trainer) -> None:
    """Generate synthetic moving digits into `data.root` when configured and absent (on the
    main process, the others waiting)."""
    synth = cfg.data.synthesize
    with trainer.main_process_first():
        if synth is None or (split_dir(cfg, cfg.data.train_split) / INDEX_FILE).is_file():
            return
        if trainer.is_main:
            print(f"generating synthetic moving digits into {cfg.data.root}")
            write_moving_digits(
                cfg.data.root,
                {
                    cfg.data.train_split: synth.train,
                    cfg.data.val_split: synth.val,
                    cfg.data.test_split: synth.test,
                },
                seed=synth.seed,
                num_frames=synth.num_frames,
                image_size=synth.image_size,
                num_digits=synth.num_digits,
                digits_path=synth.digits,
                workers=2,
            )


def _stream_args(cfg: Config, split: str, eval_: bool) -> dict:
    batch = cfg.data.eval_batch_size if eval_ and cfg.data.eval_batch_size else cfg.data.batch_size
    template = cfg.data.url_template
    return {
        "skip_bad": cfg.data.skip_bad_samples,
        "url_template": template.replace("{split}", split) if template else None,
        "batch_size": batch,
        "num_input_frames": cfg.data.num_input_frames,
        "num_output_frames": cfg.data.num_output_frames,
    }


def train_stream(cfg: Config) -> ShardTrainStream:
    return ShardTrainStream(
        split_dir(cfg, cfg.data.train_split),
        shuffle_buffer=cfg.data.shuffle_buffer,
        **_stream_args(cfg, cfg.data.train_split, False),
    )


def eval_stream(cfg: Config, split: str) -> ShardEvalStream:
    return ShardEvalStream(split_dir(cfg, split), **_stream_args(cfg, split, True))


def build_module(cfg: Config, frame_shape: tuple[int, int, int] | None = None) -> Forecaster:
    """The Forecaster for `cfg.model`, for frames C×H×W of `frame_shape` or, by default, of
    the dataset's index."""
    value_scale = 1.0
    if frame_shape is None:
        for split in (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split):
            if (split_dir(cfg, split) / INDEX_FILE).is_file():
                index = read_index(split_dir(cfg, split))
                frame_shape, value_scale = tuple(index.shape[1:]), index.value_scale
                break
        else:
            raise FileNotFoundError(f"no dataset split with {INDEX_FILE} under {cfg.data.root}")
    shape = (0, *frame_shape)
    m = cfg.model
    return Forecaster(
        m.name,
        tuple(shape[1:]),
        cfg.data.num_input_frames,
        cfg.data.num_output_frames,
        backbone_args=dict(m.backbone),
        patch_size=m.patch_size,
        loss=m.loss,
        optimizer=m.optimizer,
        lr=m.lr,
        weight_decay=m.weight_decay,
        lr_schedule=m.lr_schedule,
        warmup_steps=m.warmup_steps,
        total_steps=m.total_steps,
        clamp_output=m.clamp_output,
        scheduled_sampling=m.scheduled_sampling,
        sampling_start=m.sampling_start,
        sampling_decay=m.sampling_decay,
        sampling_stop_step=m.sampling_stop_step,
        reverse_sampling_steps=tuple(m.reverse_sampling_steps),
        reverse_sampling_alpha=m.reverse_sampling_alpha,
        aux_loss_weight=m.aux_loss_weight,
        metric_thresholds=list(m.metric_thresholds),
        value_scale=value_scale,
    )
