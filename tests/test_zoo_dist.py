"""The zoo trains on 2 ranks to the end: one launch (2 CPU ranks over gloo) runs
this file as a script, which trains each backbone of issue 11 (and the two extra ConvLSTM
forms) for a few steps with `stpdist.Trainer` on tiny in-memory data; the test checks the
step count, that the weights moved and are bitwise the same on both ranks, and that
PhyDNet's moment loss reached the log.

Legend: B batch, T time, C channels, H×W frame size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.multiprocess

SAMPLES, BATCH, EPOCHS = 8, 2, 2  # per rank: 4 samples, 2 batches → 2 steps per epoch
STEPS = (SAMPLES // 2 // BATCH) * EPOCHS
T_IN, T_OUT, FRAME = 3, 2, (2, 8, 8)


def runs() -> dict[str, tuple[str, dict, bool]]:
    """Run name → (backbone, its arguments, frame-recurrent?), at test_zoo's sizes; the
    frame-recurrent ones train as their recipes do: scheduled sampling, loss on all frames."""
    from test_zoo import CONVLSTM_SMALL, SMALL

    zoo = {name: (name, SMALL[name], name != "predformer") for name in SMALL}
    zoo["convlstm-openstl"] = ("convlstm", {**CONVLSTM_SMALL, "variant": "openstl"}, True)
    zoo["convlstm-shi"] = ("convlstm", {**CONVLSTM_SMALL, "variant": "shi"}, False)
    return zoo


def main(out: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from stpdist import Trainer
    from stpdist.config import CheckpointConfig, ModelConfig, OptimizerConfig, SamplingConfig
    from stpdist.task import Forecaster

    frames = torch.rand(SAMPLES, T_IN + T_OUT, *FRAME, generator=torch.Generator().manual_seed(3))
    data = TensorDataset(frames[:, :T_IN], frames[:, T_IN:])
    results = {}
    for run, (name, backbone, recurrent) in runs().items():
        torch.manual_seed(0)  # the same initial weights on both ranks (DDP checks too)
        config = ModelConfig(
            name=name,
            backbone=backbone,
            optimizer=OptimizerConfig(lr=1e-3),
            sampling=SamplingConfig(mode="linear", start=0.5) if recurrent else SamplingConfig(),
            loss_frames="all" if recurrent else "outputs",
        )
        module = Forecaster(config, FRAME, T_IN, T_OUT)
        start = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
        trainer = Trainer(
            max_epochs=EPOCHS,
            output_dir=str(out / run),
            progress_bar=False,
            log_every_n_steps=1,
            checkpoint=CheckpointConfig(every_epoch=False, keep_best=0),
        )
        state = trainer.fit(module, DataLoader(data, batch_size=BATCH, shuffle=True))
        weights = torch.cat([p.detach().flatten() for p in module.parameters()])
        gathered = [torch.empty_like(weights) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, weights)
        results[run] = {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "rank_difference": max((g - gathered[0]).abs().max().item() for g in gathered),
            "moved": (weights - start).abs().max().item(),
        }
    if torch.distributed.get_rank() == 0:
        (out / "results.json").write_text(json.dumps(results))


def test_zoo_trains_on_two_ranks_to_the_end(tmp_path):
    from conftest import run_ranks

    run_ranks([__file__, str(tmp_path)], 2, timeout=240, cwd=Path(__file__).parent)
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results) == sorted(runs())
    for run, result in results.items():
        assert (result["global_step"], result["epoch"]) == (STEPS, EPOCHS), run
        assert result["rank_difference"] == 0.0, run
        assert result["moved"] > 0, run
    logged = [json.loads(line) for line in (tmp_path / "phydnet" / "metrics.jsonl").open()]
    moments = [entry["train/moment"] for entry in logged if "train/moment" in entry]
    assert len(moments) == STEPS and all(m > 0 for m in moments)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(Path(sys.argv[1]))
