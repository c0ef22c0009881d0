"""`stpdist sweep CONFIG SWEEP.yaml`: a wandb sweep whose parameters are stpdist's dotted
config keys (`model.optimizer.lr`, `model.backbone.hidden_channels`).

    stpdist sweep CONFIG SWEEP.yaml [--count N] [--project P]   create a sweep, run an agent
    stpdist sweep CONFIG SWEEP.yaml --agent SWEEP_ID [--count N] join a sweep with an agent
    stpdist sweep CONFIG SWEEP.yaml --params JSON                 one trial, no sweep server

Every parameter of SWEEP.yaml is checked with `load_config` (each listed value, or min and
max) before the sweep is created: a key that is not a config key is refused naming it.
A trial is one training of CONFIG with the agent's values applied as dotted overrides, in
its own folder `<trainer.output_dir>/sweep-<sweep_id>/<run_id>` (an existing one is
refused, never reused), tracked by wandb under the agent's run id (`tracker.json` holds it,
so `stpdist train <folder>/config.yaml --resume auto` continues that run, and finishes
the trial as the sweep would). The sweep's metric (`metric: {name, goal}`) gets, as the
run's summary and in `<folder>/sweep.json`, its best logged value.

wandb hands out parameters from its server only: offline there is no sweep. `--params`
runs exactly what the agent's function runs, with the given values instead of the agent's:
in a `wandb agent` child (`command: [..., --params, ${args_json}]`) the run and sweep ids
come from the agent's environment; without one the run is a plain (offline by default) run
in `sweep-local/`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from . import console
from .config import ConfigError, _yaml_error, check_output_dir, load_config
from .console import say
from .errors import InputError, require_extra

SET_BY_THE_SWEEP = (
    "trainer.output_dir",
    "logging.trackers",
    "logging.wandb.project",
    "logging.wandb.mode",  # a trial run by the server is online whatever it is given
)
"""Keys a trial sets itself: not sweep parameters."""
LOCAL_SWEEP = "local"
TRIAL_FILE = "sweep.json"
"""A trial's record in its folder: sweep and run ids, parameters, the metric's best value."""
"""The sweep id of trials run with `--params` outside a wandb agent."""


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the later one won,
    silently: a parameter listed twice was swept over its second values only)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        self.flatten_mapping(node)  # `<<: *anchor` merged first (what a safe load does)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found a key that is not a name: {key!r}", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_sweep(path: str | Path) -> dict[str, Any]:
    """SWEEP.yaml as a dict, its `method`, `metric` and `parameters` checked."""
    path = Path(path)
    if not path.is_file():
        from .recipes import hint

        raise InputError(f"sweep file not found: {path}{hint(path)}")
    try:
        spec = yaml.load(path.read_text(), Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _yaml_error(str(path), exc) from None  # the line and column, as a config's
    if not isinstance(spec, dict):
        raise InputError(f"{path}: expected a mapping (method, metric, parameters)")
    if spec.get("method") not in ("grid", "random", "bayes"):
        raise InputError(f"{path}: method {spec.get('method')!r}: expected grid, random or bayes")
    metric = spec.get("metric")
    if (
        not isinstance(metric, dict)
        or not isinstance(metric.get("name"), str)
        or metric.get("goal", "minimize") not in ("minimize", "maximize")
    ):
        raise InputError(
            f"{path}: metric {metric!r}: expected {{name: val/mse, goal: minimize|maximize}}"
        )
    if "/" not in metric["name"]:  # it was found missing only after the whole training
        raise InputError(
            f"{path}: metric name {metric['name']!r}: results are logged as <split>/<name> "
            f"(val/{metric['name']}, train/loss): name one of them"
        )
    split, _, rest = metric["name"].partition("/")
    if split not in ("val", "train"):  # test/…: scored by no training (found at its end)
        raise InputError(
            f"{path}: metric name {metric['name']!r}: a trial logs its training's results, "
            f"train/… and val/… (val/{rest}); the {split} split is scored by none (stpdist "
            "validate or predict score it after)"
        )
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise InputError(f"{path}: parameters: expected a mapping of dotted config keys")
    return spec


def sample_values(path: str | Path, key: str, spec: Any) -> list[Any]:
    """The values of a parameter that are checked against the schema: `value`, every one
    of `values`, or `min` and `max`."""
    if isinstance(spec, dict) and "value" in spec:
        return [spec["value"]]
    if isinstance(spec, dict) and isinstance(spec.get("values"), list) and spec["values"]:
        return list(spec["values"])
    distribution = spec.get("distribution") if isinstance(spec, dict) else None
    if isinstance(spec, dict) and "min" in spec and "max" in spec:
        low, high = spec["min"], spec["max"]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        if not numbers or low > high:
            raise InputError(
                f"{path}: parameter {key!r}: min {low!r} and max {high!r}: expected two "
                "numbers, min at most max"
            )
        # wandb's log_uniform draws exp(u), u in [min, max]: min and max are exponents
        if distribution in EXPONENT_BOUNDS:
            return [math.exp(low), math.exp(high)]
        if distribution in INVERSE_EXPONENT_BOUNDS:  # 1 / exp(u)
            return [math.exp(-high), math.exp(-low)]
        if distribution in FLOAT_DRAWS and isinstance(low, int) and isinstance(high, int):
            return [low, high, low + (high - low) / 3]  # integer bounds, yet float draws
        return [low, high]
    if isinstance(spec, dict) and "mu" in spec and distribution in NORMAL_DISTRIBUTIONS:
        mu = spec["mu"]  # unbounded draws: the centre stands for them
        if isinstance(mu, bool) or not isinstance(mu, int | float):
            raise InputError(f"{path}: parameter {key!r}: mu {mu!r}: expected a number")
        return [math.exp(mu) if "log" in distribution else mu]
    raise InputError(
        f"{path}: parameter {key!r}: expected value, values, min and max, or a normal "
        "distribution's mu and sigma (nested `parameters` are not supported: name the dotted "
        f"key, e.g. model.optimizer.lr), got {spec!r}"
    )


EXPONENT_BOUNDS = ("log_uniform", "q_log_uniform")
"""wandb's distributions whose `min` and `max` are natural-log exponents of the values (its
`log_uniform_values` takes the values themselves)."""
INVERSE_EXPONENT_BOUNDS = ("inv_log_uniform",)
"""Its distribution of values 1 / exp(u), u in [min, max]."""
NORMAL_DISTRIBUTIONS = ("normal", "q_normal", "log_normal", "q_log_normal")
"""Its distributions by `mu` and `sigma` (of the log for the log_ ones)."""
FLOAT_DRAWS = ("uniform", "log_uniform_values", "inv_log_uniform_values")
"""Its distributions by `min` and `max` whose draws are floats whatever the bounds (an
integer setting takes `int_uniform` or a `q_` one)."""
GRID_CHECKED = 64
"""Most combinations of parameter values checked together (a setting checked against
another: `model.schedule.min_lr` at most `model.optimizer.lr`)."""


def _outside_the_sweep(
    spec: dict[str, Any], params: dict[str, Any], path: str | Path, overrides: list[str]
) -> list[str]:
    """What a `--params` trial does that the sweep's agent would not (a sweeps review: each
    ran silently): a value outside its parameter's values or bounds, a parameter not given
    (the config's value trains), a command-line override the parameters replace."""
    lines = []
    for key, param in spec["parameters"].items():
        if key not in params:
            lines.append(f"{key} is not given: the config's value trains, not one of {path}'s")
            continue
        value = params[key]
        if not isinstance(param, dict):
            continue
        if "values" in param and not any(_same(value, v) for v in param["values"]):
            lines.append(f"{key} {value!r} is not among {path}'s values {param['values']}")
        elif "value" in param and value != param["value"]:
            lines.append(f"{key} {value!r} is not {path}'s value {param['value']!r}")
        elif (
            "min" in param
            and "max" in param
            and isinstance(value, int | float)
            and not str(param.get("distribution", "")).startswith("q_")  # rounded past them
        ):
            bounds = sample_values(path, key, param)[:2]
            low, high = min(bounds), max(bounds)
            slack = 1e-9 * max(abs(low), abs(high))
            if not low - slack <= value <= high + slack:
                lines.append(f"{key} {value!r} is outside {path}'s range {low:g} … {high:g}")
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in params:
            lines.append(f"{key} is both an override ({item}) and a parameter: the parameter's "
                         f"{params[key]!r} trains")  # fmt: skip
    return lines


def trials_summary(
    config: str | Path, sweep_path: str | Path, overrides: list[str] | None = None
) -> str:
    """The trials of the sweep's metric under the config's `trainer.output_dir` (every
    `sweep-*/<run_id>/sweep.json`, any sweep id, local ones included), best first, as a
    markdown table: trial, sweep, value, finished, parameters, the command's overrides;
    trials not finished (or that never logged the metric) last."""
    spec = read_sweep(sweep_path)
    cfg = load_config(config, overrides)
    name, goal = spec["metric"]["name"], spec["metric"].get("goal", "minimize")
    rows, unreadable = [], []
    for path in sorted(Path(cfg.trainer.output_dir).glob(f"sweep-*/*/{TRIAL_FILE}")):
        try:
            record = json.loads(path.read_text())
            metric = record["metric"]
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(str(path))
            continue
        if metric.get("name") == name:
            rows.append(record)
    sign = 1 if goal == "minimize" else -1

    def rank(record: dict[str, Any]) -> tuple[int, float]:
        value = record["metric"].get("value")
        done = record.get("finished") and isinstance(value, int | float)
        return (0, sign * value) if done else (1, 0.0)

    lines = [
        f"{len(rows)} trial(s) of {name} ({goal}) under {cfg.trainer.output_dir}, best first:",
        "",
        "| trial | sweep | value | finished | parameters | overrides |",
        "|---|---|---|---|---|---|",
    ]
    for record in sorted(rows, key=rank):
        value = record["metric"].get("value")
        shown = "" if value is None else f"{value:.6g}"
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in record.get("parameters", {}).items())
        extra = " ".join(record.get("overrides") or [])  # recorded since 2026-12-07
        lines.append(
            f"| {record.get('run_id')} | {record.get('sweep_id')} | {shown} | "
            f"{'yes' if record.get('finished') else 'no'} | {params} | {extra} |"
        )
    if unreadable:
        lines += ["", f"unreadable (not listed): {', '.join(unreadable)}"]
    return "\n".join(lines)


def _same(value: Any, listed: Any) -> bool:
    """Whether a `--params` value is a sweep's listed one (`1e-3` in a YAML file is text to
    PyYAML, the number 0.001 to JSON)."""
    if value == listed:
        return True
    try:
        return float(value) == float(listed)
    except (TypeError, ValueError):
        return False


def override(key: str, value: Any) -> str:
    """`key=value` as `load_config` reads it (JSON is YAML: lists, strings, null)."""
    return f"{key}={json.dumps(value)}"


def check_parameters(
    config: str | Path, spec: dict[str, Any], path: str | Path, overrides: list[str]
) -> None:
    """Refuse, in one line naming it, a parameter that is not a config key or whose
    values the schema rejects (the config and its overrides are checked alone first: their
    errors are not a parameter's)."""
    load_config(config, overrides)
    samples = {}
    for key, param in spec["parameters"].items():
        if key in SET_BY_THE_SWEEP:
            raise InputError(f"{path}: parameter {key!r} is set by each trial, not swept")
        samples[key] = sample_values(path, key, param)
        for value in samples[key]:
            try:
                load_config(config, [*overrides, override(key, value)])
            except ConfigError as exc:
                draws = param.get("distribution") if isinstance(param, dict) else None
                floats = (
                    f" (wandb's {draws} draws floats: an integer setting takes int_uniform "
                    "or a q_ distribution)"
                    if draws in FLOAT_DRAWS and isinstance(value, float)
                    else ""
                )
                raise ConfigError(f"{path}: sweep parameter {key!r}: {exc}{floats}") from None
    _check_together(config, samples, path, overrides)


def _check_together(
    config: str | Path, samples: dict[str, list[Any]], path: str | Path, overrides: list[str]
) -> None:
    """The parameters' values in combination (a grid's every trial; a range's ends), up to
    `GRID_CHECKED` of them: a setting checked against another (`model.schedule.min_lr` at
    most `model.optimizer.lr`) failed only in the trials that combined them."""
    import itertools

    if len(samples) < 2 or math.prod(len(v) for v in samples.values()) > GRID_CHECKED:
        return
    for values in itertools.product(*samples.values()):
        chosen = dict(zip(samples, values))
        try:
            load_config(config, [*overrides, *(override(k, v) for k, v in chosen.items())])
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
            raise ConfigError(f"{path}: sweep parameters together ({shown}): {exc}") from None


def trial_folder(output_dir: str | Path, sweep_id: str, run_id: str) -> Path:
    """`<output_dir>/sweep-<sweep_id>/<run_id>`; one that holds anything is refused."""
    folder = Path(output_dir) / f"sweep-{sweep_id}" / run_id
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder}: {_earlier_trial(folder, run_id)}")
    return folder


def _earlier_trial(folder: Path, run_id: str) -> str:
    """What the occupied trial folder `folder` holds, and what to do (a relaunched job with
    the same run id: its trial goes on with `stpdist train --resume auto`, never again)."""
    try:
        record = json.loads((folder / TRIAL_FILE).read_text())
        finished, metric = record["finished"], record["metric"]
        best = f"best {metric['name']} {metric['value']}"
        if metric["value"] is None:
            best = f"{metric['name']} never logged"
    except (OSError, ValueError, KeyError, TypeError):
        return "a trial folder that holds an earlier run; not overwritten"
    if finished:
        return f"trial {run_id} finished before ({best}, in {TRIAL_FILE}); not run again"
    if not (folder / "config.yaml").is_file():  # stopped before its training began
        return (
            f"trial {run_id} was started before and stopped before its training began; "
            f"delete {folder} to run it again"
        )
    return (
        f"trial {run_id} was started before and did not finish; it is not run again (nor "
        f"overwritten): continue it with stpdist train {folder / 'config.yaml'} --resume auto"
    )


def best_value(records: list[dict[str, Any]], name: str, goal: str) -> float | None:
    """The best (lowest for minimize) finite value of `name` in metrics.jsonl records."""
    values = [r[name] for r in records if isinstance(r.get(name), int | float)]
    if not values:
        return None
    return min(values) if goal == "minimize" else max(values)


def run_trial(
    config: str | Path,
    params: dict[str, Any],
    metric: dict[str, Any],
    *,
    overrides: list[str],
    project: str,
    sweep_id: str,
    run_id: str,
) -> dict[str, Any]:
    """Train CONFIG with `params` as dotted overrides in the trial's own folder; the best
    value of `metric` goes to the wandb run's summary and `<folder>/sweep.json`."""
    from accelerate.utils import set_seed

    from . import build
    from .trainer import Trainer

    swept = [*overrides, *(override(key, value) for key, value in params.items())]
    cfg = load_config(config, swept)  # a bad value: refused before any data work
    folder = trial_folder(cfg.trainer.output_dir, sweep_id, run_id)
    trackers = [*cfg.logging.trackers, *([] if "wandb" in cfg.logging.trackers else ["wandb"])]
    # absolute in the trial's config.yaml: `stpdist train <folder>/config.yaml --resume auto`
    # from another folder continues the trial (a relative one began a new run there)
    places = [
        f"{key}={Path(value).absolute()}"
        for key, value in (("data.root", cfg.data.root),
                           ("data.synthesize.root", getattr(cfg.data.synthesize, "root", None)))
        if value and not Path(value).is_absolute()
    ]  # fmt: skip
    trial = [
        *places,
        f"trainer.output_dir={folder.absolute()}",
        f"logging.trackers={json.dumps(trackers)}",
        f"logging.wandb.project={project}",
    ]
    if sweep_id != LOCAL_SWEEP:
        trial.append("logging.wandb.mode=online")  # the sweep's server reads the metric
    cfg = load_config(config, [*swept, *trial])
    check_output_dir(cfg)  # before any data is read or generated
    say(f"sweep {sweep_id} trial {run_id}: {' '.join(swept[len(overrides) :])} in {folder}")
    trainer = Trainer.from_config(cfg)
    build.ensure_dataset(cfg, trainer)
    set_seed(cfg.trainer.seed)
    module = build.build_module(cfg)
    build.init_weights(cfg, module, trainer.checkpoints, None)
    val = build.eval_stream(cfg, cfg.data.val_split) if build.describe_dataset(cfg) else None
    build.keep_index(cfg, trainer)  # as `stpdist train` keeps it
    name, goal = metric["name"], metric.get("goal", "minimize")
    if val is not None and name.startswith("val/"):  # fit's validation results: val/…
        # a typo stops the trial at its first validation, not after its whole training
        trainer.required_results[name] = "the sweep's metric"
    result = {"sweep_id": sweep_id, "run_id": run_id, "parameters": params, "finished": False}
    result["metric"] = {"name": name, "goal": goal, "value": None}
    # what else made the trial (a sweeps review: trials of other sweep files and other
    # overrides were told apart by provenance.jsonl alone)
    result["config"], result["overrides"] = str(config), list(overrides)
    if trainer.is_main:  # a trial stopped on the way is finished by `stpdist train --resume`
        # written once the run lock is held: a second trial of the same run id (a job
        # launched twice) is refused before it, and wrote its parameters over the first's
        trainer.when_locked.append(lambda: _write_record(folder, result, make=True))
    trainer.fit(module, build.train_stream(cfg), val)
    result = finish_trial(folder, trainer)
    trainer.close()
    if result["metric"]["value"] is None:
        from .tracking import MetricsLog

        logged = any(
            name in record for record in MetricsLog(folder).records()
        )  # only as NaN (a metric NaN by convention: an MLOps review said "never logged")
        said = "was logged only as NaN (not finite)" if logged else "was never logged"
        raise InputError(f"sweep metric {name!r} {said} by trial {run_id} ({folder})")
    say(f"sweep trial {run_id} finished: best {name} {result['metric']['value']:.6g} ({folder})")
    return result


def _write_record(folder: Path, record: dict[str, Any], make: bool = False) -> None:
    if make:
        folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{TRIAL_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, folder / TRIAL_FILE)


def finish_trial(folder: Path, trainer: Any) -> dict[str, Any] | None:
    """After a trial's training (`run_trial`'s, or `stpdist train <folder>/config.yaml
    --resume auto` continuing a stopped one): the best value of the sweep's metric in the
    folder's metrics log goes into `sweep.json` (finished) and the wandb run's summary,
    by which the sweep ranks its runs. None for a folder that is not a trial's."""
    from .tracking import MetricsLog

    path = folder / TRIAL_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        name, goal = record["metric"]["name"], record["metric"]["goal"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a sweep trial's record ({exc})") from None
    value = best_value(list(MetricsLog(folder).records()), name, goal)
    record["metric"]["value"], record["finished"] = value, True
    if trainer.is_main:
        if value is not None:  # the best, not the last
            trainer.tracker.set_wandb_summary({name: value})
        _write_record(folder, record)
    return record


def _process_state() -> Any:
    """accelerate's `PartialState`: this process' rank among those its launcher started,
    the process group set up (from the launcher's environment) as the Trainer's
    Accelerator then uses it; a plain process has none."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # the Trainer's choice of device


def _agreed_run_id(ranks: Any) -> str:
    """A new run id, the same on every rank (each rank trains in the trial folder it
    names): drawn on the main process and broadcast to the others."""
    from accelerate.utils import broadcast_object_list

    from .tracking import _new_run_id

    drawn = [_new_run_id() if ranks.is_main_process else None]
    if ranks.num_processes > 1:
        broadcast_object_list(drawn, from_process=0)
    return drawn[0]


def _agent_parameters() -> dict[str, Any]:
    """The parameters a wandb agent wrote for its current trial (WANDB_SWEEP_PARAM_PATH:
    `{key: {value: v}}`, the file wandb.init reads them from)."""
    written = yaml.safe_load(Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text()) or {}
    written.pop("wandb_version", None)
    return {key: entry["value"] for key, entry in written.items()}


def sweep(
    config: str | Path,
    sweep_path: str | Path,
    *,
    overrides: list[str] | None = None,
    project: str | None = None,
    count: int | None = None,
    agent: str | None = None,
    params: dict[str, Any] | None = None,
) -> None:
    """Create a sweep and run an agent (or join sweep `agent`), each trial a `run_trial`;
    with `params`, run one trial with them, without a sweep server."""
    overrides = list(overrides or [])
    spec = read_sweep(sweep_path)
    check_parameters(config, spec, sweep_path, overrides)
    project = project or load_config(config, overrides).logging.wandb.project
    if params is not None:
        given = [flag for flag, value in (("--count", count), ("--agent", agent)) if value]
        if given:  # they were ignored: one trial ran, with no agent
            raise InputError(
                f"--params runs one trial with the values given, without an agent: "
                f"{' and '.join(given)} would be ignored; drop them, or drop --params"
            )
        unknown = sorted(set(params) - set(spec["parameters"]))
        if unknown:
            raise InputError(
                f"--params {', '.join(unknown)}: not parameters of {sweep_path} "
                f"({', '.join(spec['parameters'])})"
            )
        try:  # the values given, checked as the sweep's are
            load_config(config, [*overrides, *(override(k, v) for k, v in params.items())])
        except ConfigError as exc:
            raise ConfigError(f"--params: {exc}") from None
        outside = _outside_the_sweep(spec, params, sweep_path, overrides)
        # inside a `wandb agent` child (command: [..., --params, ${args_json}]): its ids
        sweep_id = os.environ.get("WANDB_SWEEP_ID") or LOCAL_SWEEP
        ranks = _process_state()
        console.setup(ranks.is_main_process)  # the trial's line is said before the Trainer
        for line in outside:
            console.warn_main("--params: %s", line)
        run_id = os.environ.get("WANDB_RUN_ID") or _agreed_run_id(ranks)
        saved = os.environ.get("WANDB_RUN_ID")
        os.environ["WANDB_RUN_ID"] = run_id  # the tracker's run id, as an agent sets it
        try:
            run_trial(
                config,
                params,
                spec["metric"],
                overrides=overrides,
                project=project,
                sweep_id=sweep_id,
                run_id=run_id,
            )
        finally:
            if saved is None:
                os.environ.pop("WANDB_RUN_ID", None)
            ranks.destroy_process_group()  # a failure before the Trainer's close: not left alive
        return
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        raise InputError(
            f"WANDB_MODE={os.environ['WANDB_MODE']}: a wandb sweep needs the wandb server to "
            "hand out parameters; run one trial offline with --params JSON"
        )
    wandb = require_extra("wandb", "wandb", "a wandb sweep")

    console.setup(_process_state().is_main_process)  # lines said before the Trainer's
    if agent is None:
        agent = wandb.sweep(spec, project=project)
        say(
            f"sweep {agent} in project {project}; more agents: stpdist sweep {config} "
            f"{sweep_path} --agent {agent}"
        )

    def trial() -> None:
        run_trial(
            config,
            _agent_parameters(),
            spec["metric"],
            overrides=overrides,
            project=project,
            sweep_id=os.environ["WANDB_SWEEP_ID"],
            run_id=os.environ["WANDB_RUN_ID"],
        )

    wandb.agent(agent, function=trial, project=project, count=count)
