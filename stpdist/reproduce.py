"""`stpdist reproduce CONFIG --seeds N [--small]`: train a recipe with N seeds, evaluate each
run's best checkpoint on the test split, and put mean ± std beside OpenSTL's published
Moving MNIST numbers. Results go to `<out>/reproduce.json` and `<out>/reproduce.md`.

OpenSTL's numbers are shown only beside a run in their setting: a model they publish, 10→10
frames of 1×64×64, a test split written from Moving MNIST's `mnist_test_seq.npy`
(`stpdist shard mmnist-npy`), not `--small`. Otherwise the table leaves their column out
and says which of these the run differs in (the frame-sum columns of a 32×32, 5-frame run
would read as "better" than OpenSTL's 64×64, 10-frame ones).

Columns use OpenSTL's conventions so they can be compared: MSE and MAE as per-frame sums
of raw (unclamped) errors (`mse_frame_raw`, `mae_frame_raw`), SSIM with data range 2
(`ssim_openstl`), PSNR per frame; beside them the per-pixel MSE, the range-1 SSIM and the
copy-last-input-frame baseline's per-pixel MSE. OpenSTL picks its checkpoint on the test
set; here the checkpoint is chosen on the validation split and scored once on the test
split.

`--resume auto` continues an earlier call with the same arguments (stopped by a signal, or
with fewer `--seeds`): every seed goes on from its newest checkpoint (a finished one trains
nothing more and is scored again), a seed without checkpoints starts; the table covers
all seeds.

`--small`: a scaled-down recipe that finishes on 2 CPU cores in minutes (32×32 canvas,
digits 12 px, 5→5 frames, 2 layers of 16 channels, on-the-fly training digits); the
numbers show the harness works and beat copy-last-frame, they are not OpenSTL's setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import statistics
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, check_output_dir, load_config
from .console import finite_json
from .data.format import SplitIndex
from .errors import InputError

OPENSTL_MMNIST = {  # REFERENCE.md: 200 epochs, one V100, batch 16, 10→10
    "convlstm": {"mse": 29.80, "mae": 90.64, "ssim": 0.9288, "psnr": 22.10},
    "predrnn": {"mse": 23.97, "mae": 72.82, "ssim": 0.9462, "psnr": 23.28},
    "predrnnpp": {"mse": 22.06, "mae": 69.58, "ssim": 0.9509, "psnr": 23.65},
    "mim": {"mse": 22.55, "mae": 69.97, "ssim": 0.9498, "psnr": 23.56},
    "e3dlstm": {"mse": 35.97, "mae": 78.28, "ssim": 0.9320, "psnr": 21.11},
    "phydnet": {"mse": 28.19, "mae": 78.64, "ssim": 0.9374, "psnr": 22.62},
    "mau": {"mse": 26.86, "mae": 78.22, "ssim": 0.9398, "psnr": 22.76},
    "predrnnv2": {"mse": 24.13, "mae": 73.73, "ssim": 0.9453, "psnr": 23.21},
    "tau": {"mse": 24.60, "mae": 71.93, "ssim": 0.9454, "psnr": 23.19},
    # SimVP with the gSTA translator (SimVP.V2, "gSTA-S"), as configs/mmnist/simvp.yaml:
    # OpenSTL's docs/en/model_zoos/video_benchmarks.md, MetaVP table, 200 epochs. Its STL
    # table repeats MSE, MAE and SSIM but prints PSNR 38.35 (and 37.97 for IncepU), out of
    # line with every other row; the MetaVP table's 22.78 is used.
    "simvp": {"mse": 26.69, "mae": 77.19, "ssim": 0.9402, "psnr": 22.78},
}
OPENSTL_TRANSLATORS = {"simvp": "gsta", "tau": "tau"}
"""The translator OpenSTL's published SimVP/TAU numbers are for."""

OPENSTL_SETTING = "Moving MNIST's mnist_test_seq.npy, 10→10 frames of 1×64×64"

# (column, metric key, OpenSTL column or None)
COLUMNS = [
    ("MSE (frame sum, raw)", "mse_frame_raw", "mse"),
    ("MAE (frame sum, raw)", "mae_frame_raw", "mae"),
    ("SSIM (range 2)", "ssim_openstl", "ssim"),
    ("PSNR", "psnr", "psnr"),
    ("MSE / pixel", "mse", None),
    ("SSIM (range 1)", "ssim", None),
    ("copy-last MSE / pixel", "persistence_mse", None),
]


def small_overrides(out: Path, digits: str | None) -> list[str]:
    """The scaled-down CPU recipe (applied after the config's own values)."""
    root = out / "data"
    overrides = [
        f"data.root={root}",
        f"data.synthesize.root={root}",
        "data.synthesize.train=512",
        "data.synthesize.val=64",
        "data.synthesize.test=128",
        "data.synthesize.num_frames=10",
        "data.synthesize.image_size=32",
        "data.synthesize.digit_size=12",
        "data.train_source=moving_digits",
        "data.batch_size=16",
        "data.eval_batch_size=32",
        "data.num_input_frames=5",
        "data.num_output_frames=5",
        "model.backbone.hidden_channels=[16,16]",
        "model.backbone.kernel_size=3",
        "model.patch_size=2",
        "model.optimizer.lr=0.002",
        "model.schedule.name=none",
        "model.sampling.mode=none",
        "trainer.max_epochs=8",
        "trainer.max_steps=null",
        "trainer.val_every_n_epochs=2",
        "trainer.val_every_n_steps=null",
        "trainer.num_workers=0",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=100",
        "trainer.checkpoint.every_n_steps=null",
        "trainer.checkpoint.monitor=val/mse",
        "logging.trackers=[]",
        "logging.num_samples=0",
    ]
    if digits:
        overrides.append(f"data.synthesize.digits={digits}")
    return overrides


SMALL_BACKBONE_KEYS = ("hidden_channels", "kernel_size")
"""The backbone arguments `--small` sets: the frame-recurrent backbones' width and kernel."""


def _check_small_fits(cfg: Config, config: str | None, overrides: list[str]) -> None:
    """`--small` sets backbone arguments that not every backbone takes, or takes in that
    form (TrajGRU's widths need one entry per level, three): such a backbone is refused by
    name, before any work (not as a key the user never wrote)."""
    import dataclasses

    from .config import ConfigError, _backbone_class

    args = getattr(_backbone_class(cfg.model), "Args", None)
    takes = {f.name for f in dataclasses.fields(args)} if dataclasses.is_dataclass(args) else set()
    why = None
    if not set(SMALL_BACKBONE_KEYS) <= takes:
        why = "does not take"
    else:
        try:  # the backbone built at the small recipe's frames (a second at most)
            from .build import build_module

            small = load_config(config, [*small_overrides(Path("."), None), *overrides])
            build_module(small, (1, 32, 32))
        except ConfigError as exc:
            why = f"does not take as set ({str(exc).split(': ', 1)[-1]})"
    if why is not None:
        raise InputError(
            f"--small: the scaled-down recipe sets model.backbone's "
            f"{' and '.join(SMALL_BACKBONE_KEYS)} ([16, 16] and 3), which {cfg.model.name!r} "
            f"{why}; it is for the frame-recurrent backbones (convlstm, predrnn, …): run "
            "this recipe without --small, with your own overrides"
        )


def _refuse_earlier_seeds(out: Path, seeds: int) -> None:
    """Before any work: an `out` holding a seed of an earlier call, refused in the words of
    `reproduce` (the Trainer's refusal names its config key, after the data was read)."""
    for seed in range(seeds):
        checkpoints = out / f"seed{seed}" / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.glob("step-*")):
            raise InputError(
                f"--out {out} holds seed{seed} of an earlier call ({checkpoints}): add "
                "--resume auto to continue it (a finished seed trains no more), or choose "
                "another --out"
            )


def _call_settings(cfg: Config) -> dict[str, Any]:
    """What trains a seed, flat (`model.optimizer.lr`: 0.003): the resolved config with the
    backbone's typed Args (a default written out is the default), but the keys `reproduce`
    sets per seed and those of CALL_ALONE."""
    from .config import backbone_config
    from .tracking import flat_dict

    flat = flat_dict(dataclasses.asdict(cfg))
    typed = backbone_config(cfg.model)
    if dataclasses.is_dataclass(typed):
        typed = dataclasses.asdict(typed)
    flat.update(flat_dict({"backbone": typed}, "model."))
    alone = (*CALL_ALONE, *SET_BY_REPRODUCE)  # prefixes, as `openstl_differences` reads
    kept = {key: value for key, value in flat.items() if not key.startswith(alone)}
    kept.update({k: v for k, v in flat.items() if k.startswith("model.backbone.")})
    return kept


def _refuse_other_settings(out: Path, cfg: Config) -> None:
    """A `--resume auto` whose settings differ from those a seed of `out` trained with (its
    run's config.yaml; seeds with no checkpoint yet are not compared), refused naming them,
    before any seed trains: its table would average seeds trained otherwise (seed 0 finished
    at one learning rate, seed 2 trained at another)."""
    now = _call_settings(cfg)
    for folder in sorted(out.glob("seed*")):
        if (
            not any((folder / "checkpoints").glob("step-*"))
            or not (folder / "config.yaml").is_file()
        ):
            continue
        try:
            before = _call_settings(load_config(folder / "config.yaml"))
        except (ConfigError, OSError) as exc:
            raise InputError(
                f"{folder / 'config.yaml'}: unreadable ({str(exc).splitlines()[0]}); it records "
                f"how {folder.name} trained, which --resume auto continues"
            ) from None
        changed = [
            f"{key} {before.get(key)!r} → {now.get(key)!r}"
            for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key)
        ]
        if changed:
            listed = "; ".join(changed[:8]) + (f" … ({len(changed)} in all)" * (len(changed) > 8))
            raise InputError(
                f"--resume auto continues the seeds {out} holds with the settings they trained "
                f"with ({folder / 'config.yaml'}); this call differs: {listed}. Resume with "
                "those settings, or choose another --out"
            )


def run_seed(
    config: str, overrides: list[str], seed: int, out: Path, resume: str | None = None
) -> tuple[dict[str, float], bool, str]:
    """Train one seed (with `resume="auto"`: on from its newest checkpoint, if it has one;
    a finished seed trains nothing more); return the test-split metrics of its best
    checkpoint, whether this is the main process (it alone writes the table), and that
    checkpoint."""
    from accelerate.utils import set_seed

    from . import build
    from .trainer import Trainer

    cfg = load_config(
        config, [*overrides, f"trainer.seed={seed}", f"trainer.output_dir={out / f'seed{seed}'}"]
    )
    check_output_dir(cfg)  # before any data is read or generated
    trainer = Trainer.from_config(cfg)
    build.ensure_dataset(cfg, trainer)  # (into an occupied folder: refused with advice)
    set_seed(seed)
    module = build.build_module(cfg)
    # model.init_weights: every seed fine-tunes from them (a resumed seed: its checkpoint)
    build.init_weights(cfg, module, trainer.checkpoints, resume)
    build.describe_dataset(cfg)  # splits a model cannot take alike: refused before training
    build.keep_index(cfg, trainer)  # each checkpoint a model folder, as `stpdist train`'s
    train, val = build.train_stream(cfg), build.eval_stream(cfg, cfg.data.val_split)
    trainer.fit(module, train, val, resume=resume)
    # the best ranked, else the newest, as `validate --ckpt best`: a damaged one is passed
    # over with a warning naming it (it was replaced silently by the next best)
    ckpt = trainer.checkpoints.choose("best")
    split = cfg.data.test_split
    results = trainer.validate(module, build.eval_stream(cfg, split), ckpt=ckpt, split=split)
    trainer.close()
    prefix = f"{split}/"
    scores = {k[len(prefix) :]: float(v) for k, v in results.items() if k.startswith(prefix)}
    return scores, trainer.is_main, str(ckpt)


SETTING_ALONE = ("trainer.output_dir", "trainer.num_workers", "trainer.progress_bar",
                 "trainer.log_every_n_steps", "trainer.checkpoint.keep_last",
                 "trainer.checkpoint.every_", "logging.", "data.root", "data.url_template",
                 "data.synthesize.root", "data.synthesize.digits", "trainer.keep_global_batch",
                 "trainer.compile", "trainer.cuda_graphs", "trainer.cudnn_benchmark",
                 "trainer.deterministic", "trainer.channels_last", "trainer.num_threads",
                 "trainer.activation_checkpointing", "model.fused_kernels",
                 "trainer.dist_timeout_s")  # fmt: skip
"""Keys whose values leave the trained model and its scores as they are (where the data
are kept, how fast a step runs): changed from the recipe's, they keep a run comparable with
OpenSTL's numbers. Not among them: the training digits' settings (`data.synthesize.train`,
`num_digits`…) and the choice of the scored checkpoint (`trainer.checkpoint.monitor`,
`mode`, `keep_best`)."""

CALL_ALONE = tuple(key for key in SETTING_ALONE if key != "data.synthesize.digits") + (
    "data.eval_batch_size",
    "model.backbone",  # compared as its typed Args (`backbone`), defaults filled in
)
"""What a `--resume auto` may change: what leaves the training as it is (SETTING_ALONE, but
the digits a `--small` recipe draws from) and the evaluation batch (float rounding)."""


OPENSTL_CAVEATS = (
    "Even in OpenSTL's setting three differences remain: OpenSTL reports the best of three "
    "trials (here: the mean ± std of the seeds), picks its checkpoint on the test set (here: "
    "the best by validation), and this test split is mnist_test_seq.npy's sequences after "
    "the 1 000 held out for validation."
)


def _recipe_changes(cfg: Config, recipe: Config) -> list[str]:
    """`key value, not the recipe's value` for each setting of `cfg` that differs from the
    `recipe`'s (its training length, batch, rates, model) outside `SETTING_ALONE`."""
    from .config import to_dict
    from .tracking import flat_dict

    ours, theirs = (flat_dict(to_dict(c)) for c in (cfg, recipe))
    changed = []
    for key in sorted(set(ours) | set(theirs)):
        if key.startswith(SETTING_ALONE) or ours.get(key) == theirs.get(key):
            continue
        if key in GLOBAL_BATCH:  # compared as the batch they make with the ranks
            continue
        changed.append(f"{key} {ours.get(key)}, not the recipe's {theirs.get(key)}")
    return changed


def openstl_differences(
    cfg: Config, small: bool, test_index: SplitIndex, recipe: Config | None = None
) -> list[str]:
    """How this run's setting differs from the one OpenSTL's published numbers are for
    (`OPENSTL_SETTING`), and from the `recipe` as shipped, which follows OpenSTL's training
    (its epochs, batch, rates): empty, the numbers may stand side by side."""
    from .data.sources.moving_mnist import MovingMnistNpy

    why = []
    if small:
        why.append("--small is a scaled-down recipe")
    elif recipe is not None:
        why += _recipe_changes(cfg, recipe)
        ranks = _world_size()
        ours = cfg.data.batch_size * cfg.trainer.gradient_accumulation_steps * ranks
        theirs = recipe.data.batch_size * recipe.trainer.gradient_accumulation_steps
        if ours != theirs:  # the recipe's batch is OpenSTL's, on one GPU
            why.append(
                f"a global batch of {ours} ({ranks} rank{'s' * (ranks > 1)} × "
                f"{cfg.data.batch_size} × "
                f"accumulation {cfg.trainer.gradient_accumulation_steps}), not the recipe's "
                f"{theirs}: set data.batch_size or trainer.gradient_accumulation_steps to keep it"
            )
    if cfg.model.name not in OPENSTL_MMNIST:
        why.append(f"OpenSTL publishes no Moving MNIST numbers for model {cfg.model.name!r}")
    expected = OPENSTL_TRANSLATORS.get(cfg.model.name)
    translator = (cfg.model.backbone or {}).get("translator", expected)
    if expected is not None and translator != expected:
        why.append(
            f"the numbers listed for {cfg.model.name} are OpenSTL's with the {expected} "
            f"translator, not {translator}"
        )
    frames = (cfg.data.num_input_frames, cfg.data.num_output_frames)
    if frames != (10, 10):
        why.append(f"{frames[0]}→{frames[1]} frames, not 10→10")
    shape = tuple(test_index.shape[1:])
    if shape != (1, 64, 64):
        why.append(f"frames of {'×'.join(map(str, shape))}, not 1×64×64")
    if test_index.source != MovingMnistNpy.name:  # what `stpdist shard mmnist-npy` records
        origin = test_index.source or "an unnamed source"
        why.append(f"the test split was written from {origin}, not from mnist_test_seq.npy")
    return why


GLOBAL_BATCH = ("data.batch_size", "trainer.gradient_accumulation_steps")
"""Compared as the global batch they make with the number of ranks."""


def _world_size() -> int:
    """The processes of this run (torchrun's and accelerate's WORLD_SIZE; 1 alone)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


SET_BY_REPRODUCE = {"trainer.seed": "--seeds N (seeds 0…N−1)", "trainer.output_dir": "--out"}
"""Overrides `reproduce` sets for each seed itself: given as overrides, they were dropped
(a `trainer.seed=5` trained seed 0, and the table then said the recipe was changed)."""


def _sets(override: str, key: str) -> bool:
    """Whether the dotted `override` (`a.b=v`, or `a={b: v}`) sets `key`."""
    from omegaconf import OmegaConf

    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist([override]), resolve=False)
    except Exception:  # noqa: BLE001 - load_config says what is wrong with it
        return False
    for part in key.split("."):
        if not isinstance(given, dict) or part not in given:
            return False
        given = given[part]
    return True


def summarize(name: str, runs: list[dict[str, float]], comparable: bool = True) -> dict[str, Any]:
    """Mean and (sample) standard deviation per column, with OpenSTL's number where the
    run is `comparable` with it."""
    published = OPENSTL_MMNIST.get(name, {}) if comparable else {}
    table = {}
    for column, key, theirs in COLUMNS:
        values = [run[key] for run in runs if key in run]
        if not values:
            continue
        table[column] = {
            "key": key,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,  # one seed: none
            "values": values,
            "openstl": published.get(theirs) if theirs else None,
        }
    return table


def markdown(
    name: str,
    table: dict[str, Any],
    seeds: int,
    small: bool,
    command: str,
    test_sequences: int,
    differences: list[str],
    ranked: bool = True,
) -> str:
    """The table as markdown; `ranked`: the checkpoints scored are the best by validation
    (else the newest: `trainer.checkpoint.keep_best` 0 ranks none)."""
    setting = "scaled-down CPU recipe (--small)" if small else "the recipe as configured"
    scored = (
        "best checkpoint (by validation)"
        if ranked
        else "newest checkpoint (trainer.checkpoint.keep_best 0 ranks none)"
    )
    lines = [
        f"`{command}` — {name}, {seeds} seed(s), {setting}; {scored} "
        f"on the test split ({test_sequences} sequences); ± the seeds' sample standard "
        "deviation (n − 1).",
        "",
    ]
    if differences:
        lines += [
            f"OpenSTL's published numbers are left out: they are for {OPENSTL_SETTING}, and "
            f"this run differs: {'; '.join(differences)}.",
            "",
            "| metric | stpdist (mean ± std) |",
            "|---|---|",
        ]
        for column, row in table.items():
            lines.append(f"| {column} | {_mean_std(row)} |")
        return "\n".join(lines) + "\n"
    lines += ["| metric | stpdist (mean ± std) | OpenSTL MMNIST |", "|---|---|---|"]
    for column, row in table.items():
        theirs = "" if row["openstl"] is None else _published(row["openstl"])
        lines.append(f"| {column} | {_mean_std(row)} | {theirs} |")
    return "\n".join([*lines, "", OPENSTL_CAVEATS]) + "\n"


def _published(value: float) -> str:
    """A published number as its table prints it: 29.80, 0.9277 (`:g` dropped the zero
    of 29.80 and 22.10; a metrics review)."""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _mean_std(row: dict[str, Any]) -> str:
    """`mean ± std` at 4 significant digits, the spread (the seeds' sample standard
    deviation, n − 1) at 3 (at 2, 1.0476 read as "± 1"), trailing zeros kept in both
    (0.04800 beside 0.02159, ± 1.40); one seed has no spread: `± n/a`."""
    spread = "n/a" if row["std"] is None else f"{row['std']:#.3g}"
    return f"{row['mean']:#.4g} ± {spread}"


def command_line(
    config: str,
    seeds: int,
    small: bool,
    out: str | Path | None,
    digits: str | None,
    overrides: list[str],
) -> str:
    """The `stpdist reproduce` command that makes this table (shell-quoted)."""
    words = ["stpdist", "reproduce", str(config), *overrides, "--seeds", str(seeds)]
    words += ["--small"] if small else []
    words += ["--out", str(out)] if out is not None else []
    words += ["--digits", digits] if digits else []
    return shlex.join(words)


def reproduce(
    config: str,
    seeds: int,
    *,
    small: bool = False,
    out: str | Path | None = None,
    digits: str | None = None,
    overrides: list[str] | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Train `config` with seeds 0..N−1, score each best checkpoint on the test split,
    write reproduce.json and reproduce.md under `out`; return the summary. `resume="auto"`
    continues an earlier (stopped, or fewer-seed) call: each seed from its newest
    checkpoint, a seed without one from scratch."""
    from . import build
    from .data.format import read_index

    for item in overrides or []:
        for key in SET_BY_REPRODUCE:  # `trainer.seed=5`, or `trainer={seed: 5}`
            if _sets(item, key):
                raise InputError(
                    f"{item}: reproduce sets {key} for each seed itself; use "
                    f"{SET_BY_REPRODUCE[key]} instead"
                )
    cfg = load_config(config, overrides)
    name = cfg.model.name
    if digits and not small:
        raise InputError(
            f"--digits {digits}: only the --small recipe draws digits (the recipe's own data "
            "is read from data.root); add --small, or leave --digits out"
        )
    if small:
        _check_small_fits(cfg, config, overrides or [])
    command = command_line(config, seeds, small, out, digits, overrides or [])
    out = Path(out or f"runs/reproduce/{name}{'-small' if small else ''}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a folder for the runs and the table")
    if resume != "auto":
        _refuse_earlier_seeds(out, seeds)
    all_overrides = [*(small_overrides(out, digits) if small else []), *(overrides or [])]
    if resume == "auto":
        _refuse_other_settings(out, load_config(config, all_overrides))
    seeded = [run_seed(config, all_overrides, seed, out, resume) for seed in range(seeds)]
    runs = [scores for scores, _, _ in seeded]
    cfg = load_config(config, all_overrides)
    test_index = read_index(build.split_dir(cfg, cfg.data.test_split))
    differences = openstl_differences(cfg, small, test_index, recipe=load_config(config))
    table = summarize(name, runs, comparable=not differences)
    summary = {
        "config": str(config),
        "model": name,
        "seeds": seeds,
        "small": small,
        "command": command,
        "test_sequences": test_index.num_samples,
        "test_source": test_index.source,
        "openstl_setting": OPENSTL_SETTING,
        "openstl_differences": differences,
        "table": table,
        "runs": runs,
        # which seed each of `runs` is, and the checkpoint its scores are of (best by
        # validation: seeds' steps differ)
        "scored": [{"seed": seed, "checkpoint": ckpt} for seed, (_, _, ckpt) in enumerate(seeded)],
    }
    if seeded and not seeded[-1][1]:  # the table once, from the main process (every rank has it)
        return summary
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.json").write_text(json.dumps(finite_json(summary), indent=2))
    ranked = cfg.trainer.checkpoint.keep_best > 0
    text = markdown(name, table, seeds, small, command, test_index.num_samples, differences, ranked)
    (out / "reproduce.md").write_text(text)
    print(text)
    print(f"written: {out / 'reproduce.json'}, {out / 'reproduce.md'}")
    return summary
