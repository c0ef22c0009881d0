"""Entry point for multi-process trainer tests: `torchrun --nproc_per_node N tests/dist_train.py …`
(or plain `python` for one process). Trains TinyModule on TinySequences and writes results.

`--jobs FILE` runs several such runs in turn in the same processes (a JSON list of argument
lists; `["batch-dict", OUT]` runs tests/dist_batch_dict.py's run): on 2 busy cores each
launch costs ~15 s of CPU in imports, and a Trainer may follow another in a process."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402
from stpdist.config import CheckpointConfig  # noqa: E402
from stpdist.trainer import PREEMPTED_EXIT_CODE, Preempted  # noqa: E402


class Scripted(TinyModule):
    """TinyModule that can hang (to be killed) or skip a batch on rank 0 at a given step."""

    def __init__(
        self,
        hang_at: int | None,
        skip_at: int | None,
        step_sleep: float = 0.0,
        val_sleep: float = 0.0,
        marker: Path | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.hang_at, self.skip_at, self.step_sleep = hang_at, skip_at, step_sleep
        self.val_sleep, self.marker = val_sleep, marker

    def validation_step(self, inputs, targets):
        if self.marker is not None:
            self.marker.touch()  # a validation is under way
        time.sleep(self.val_sleep)  # a long validation, for a test to signal inside it
        return super().validation_step(inputs, targets)

    def training_step(self, inputs, targets):
        time.sleep(self.step_sleep)  # slows the run so a test can signal it mid-training
        if self.hang_at is not None and self.global_step == self.hang_at:
            time.sleep(600)  # the test kills the process group while we wait here
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.skip_at is not None and self.global_step == self.skip_at and rank == 0:
            return None
        return super().training_step(inputs, targets)


class MetricSequences(torch.utils.data.Dataset):
    """`num` sequences of 5 frames 1×8×8 (3 in, 2 out) — big enough for the 7×7 SSIM."""

    def __init__(self, num: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.frames = torch.rand(num, 5, 1, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        return self.frames[i, :3], self.frames[i, 3:]


class MetricModule(TinyModule):
    """Predicts the last input frame, dimmed; reports every metric through sums."""

    def predict_step(self, inputs, targets):
        return inputs[:, -1:].expand(-1, 2, -1, -1, -1) * 0.9

    def validation_step(self, inputs, targets):
        from stpdist.metrics import batch_sums

        pred = self.predict_step(inputs, targets)
        return {
            "loss": torch.nn.functional.mse_loss(pred, targets),
            "sums": batch_sums(pred, targets, [0.3, 0.7]),
            "predictions": pred,
        }

    def metrics_from_sums(self, sums):
        from stpdist.metrics import summarize

        return summarize(sums, 64, [0.3, 0.7])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num", type=int, default=40)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--hang-at", type=int, default=None)
    p.add_argument("--skip-at", type=int, default=None)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--resume", default=None)
    p.add_argument("--validate", type=int, default=0, help="validate on this many samples")
    p.add_argument("--eval-batch", type=int, default=3)
    p.add_argument("--metrics", type=int, default=0, help="evaluate MetricModule on N samples")
    p.add_argument("--val-every", type=int, default=None, help="fit validates every N steps")
    p.add_argument("--val-sleep", type=float, default=0.0, help="seconds per validation batch")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    marker = Path(args.out) / "validating"
    module = Scripted(
        args.hang_at, args.skip_at, args.step_sleep, args.val_sleep, marker, dropout=args.dropout
    )
    trainer = Trainer(
        max_epochs=None,
        max_steps=args.steps,
        gradient_accumulation_steps=args.accum,
        output_dir=args.out,
        progress_bar=False,
        log_every_n_steps=1,
        checkpoint=CheckpointConfig(every_n_steps=args.ckpt_every, keep_last=100),
        val_every_n_steps=args.val_every,
    )
    results = {}
    if args.metrics:
        data = DataLoader(MetricSequences(args.metrics), batch_size=args.eval_batch)
        results = trainer.validate(MetricModule(), data)
    elif args.validate:
        val = DataLoader(TinySequences(args.validate, seed=99), batch_size=args.eval_batch)
        results = trainer.validate(module, val)
        trainer.predict(module, val, out=Path(args.out) / "predictions")
    else:
        train = DataLoader(TinySequences(args.num), batch_size=args.batch, shuffle=True)
        val = None
        if args.val_every:
            val = DataLoader(TinySequences(40, seed=99), batch_size=args.eval_batch)
        try:
            state = trainer.fit(module, train, val, resume=args.resume)
        except Preempted as stop:
            sys.stdout.write(f"preempted: {stop}\n")  # one write: the ranks share a pipe
            sys.stdout.flush()
            sys.exit(PREEMPTED_EXIT_CODE)
        results = {"global_step": state.global_step, "epoch": state.epoch}
    if trainer.is_main:
        (Path(args.out) / "result.json").write_text(json.dumps(results))


def main() -> None:
    if sys.argv[1:2] == ["--jobs"]:
        for job in json.loads(Path(sys.argv[2]).read_text()):
            if job[0] == "batch-dict":
                import dist_batch_dict

                # no close: it would end the process group the next job trains on
                dist_batch_dict.run(Path(job[1]), close=False)
            else:
                run(parse(job))
    else:
        run(parse())


if __name__ == "__main__":
    main()
