"""MkDocs hooks: the reference pages are generated from the code at build time.

A page holds a marker where generated Markdown goes; `on_page_markdown` replaces it:

- `<!-- generated: cli -->`: every `stpdist` command and flag, from `stpdist.cli.parser()`;
- `<!-- generated: config -->`: every configuration key (type, default, check, docstring),
  from the dataclasses in `stpdist/config.py`;
- `<!-- generated: backbones -->`: every backbone's `model.backbone` keys, from the `Args`
  dataclass of each registered backbone;
- `<!-- include: PATH -->`: a Markdown file of the repository (PATH from the repository
  root), its title line dropped and its headings one level deeper.

So a new flag or config key appears in the site by itself, and a docstring is written once.
The functions below import nothing from MkDocs: tests/test_docs.py calls them directly.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_MARKER = re.compile(r"<!-- (generated|include): ([\w./-]+) -->")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the markers of a page with what they name."""
    return _MARKER.sub(lambda m: _expand(m.group(1), m.group(2)), markdown)


def _expand(kind: str, name: str) -> str:
    if kind == "include":
        return include(ROOT / name)
    generators = {"cli": cli_reference, "config": config_reference, "backbones": backbones}
    if name not in generators:
        raise ValueError(f"<!-- generated: {name} -->: expected one of {sorted(generators)}")
    return generators[name]()


# --- include -------------------------------------------------------------------------------


def include(path: Path) -> str:
    """A repository Markdown file without its `# ` title, every heading one level deeper."""
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    fenced = False
    out = []
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and re.match(r"#{1,5} ", line) else line)
    return "\n".join(out) + "\n"


# --- command line --------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """name → (parser, help) of a parser's sub-commands, in declaration order."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (sp, helps.get(name, "")) for name, sp in action.choices.items()}
    return {}


def _argument_row(action: argparse.Action) -> str | None:
    if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
        return None
    if action.option_strings:
        name = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            name += f" `{action.metavar or action.dest.upper()}`"
    else:
        name = f"`{action.metavar or action.dest}`"
        if action.nargs in ("*", "+"):
            name += " …"
        elif action.nargs == "?":
            name += " (optional)"
    details = []
    if action.choices is not None:
        details.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        details.append("required")
    default = action.default
    if action.nargs != 0 and default not in (None, [], argparse.SUPPRESS):
        details.append(f"default `{default}`")
    if isinstance(action, argparse._AppendAction):
        details.append("repeatable")
    return f"| {name} | {_cell(action.help or '')} | {_cell('; '.join(details))} |"


def _command_section(path: str, p: argparse.ArgumentParser, help_: str, level: int) -> list[str]:
    p.prog = path
    out = [f"{'#' * level} `{path}`", ""]
    if help_:
        out += [help_[0].upper() + help_[1:] + ".", ""]
    out += ["```text", p.format_usage().strip(), "```", ""]
    rows = [r for r in map(_argument_row, p._actions) if r]
    if rows:
        out += ["| argument | what | values |", "|---|---|---|", *rows, ""]
    for name, (sp, sub_help) in _subparsers(p).items():
        out += _command_section(f"{path} {name}", sp, sub_help, min(level + 1, 6))
    return out


def cli_reference() -> str:
    """Markdown for every command of `stpdist.cli.parser()`, its usage and arguments."""
    from stpdist.cli import parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"  # argparse wraps usage lines at the terminal width
    try:
        top = parser()
        out = ["```text", top.format_help().strip(), "```", ""]
        for name, (sp, help_) in _subparsers(top).items():
            out += _command_section(f"stpdist {name}", sp, help_, 3)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out)


# --- configuration -------------------------------------------------------------------------


def field_docstrings(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(inspect.getsource(klass).lstrip())
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            doc = getattr(after, "value", None)
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(doc, ast.Constant)
                and isinstance(doc.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(doc.value)
    return docs


def describe_check(rule: Any) -> str:
    """What a field's declared check accepts, in its own words: the message it gives for
    the first of a few bad values that it refuses."""
    for probe in (-1, "", [-1]):
        try:
            problem = rule(probe)
        except (TypeError, ValueError):
            continue
        if problem:
            return problem
    return (inspect.getdoc(rule) or "checked").splitlines()[0]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _section_type(f: dataclasses.Field, owner: type) -> type | None:
    """The dataclass a field holds (`checkpoint: CheckpointConfig`, `ema: Optional[EmaConfig]`)."""
    hint = typing.get_type_hints(owner)[f.name]
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _type_text(f: dataclasses.Field) -> str:
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.replace("typing.", "")


def _default_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(section below)"
    return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def _field_rows(cls: type, prefix: str) -> tuple[list[str], list[tuple[str, type]]]:
    docs = field_docstrings(cls)
    rows, sections = [], []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        section = _section_type(f, cls)
        if section is not None:
            sections.append((key, section))
        rule = f.metadata.get("check")
        check = describe_check(rule) if rule is not None else ""
        doc = docs.get(f.name, "")
        if section is not None:
            doc += f" See [`{key}`](#{key.replace('.', '')})."
        rows.append(
            f"| `{key}` | `{_cell(_type_text(f))}` | {_cell(_default_text(_default(f)))} "
            f"| {_cell(check)} | {_cell(doc)} |"
        )
    return rows, sections


def _class_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(cls.__name__ + "(") else doc  # dataclass's generated one


def _section(key: str, cls: type, level: int) -> list[str]:
    rows, sections = _field_rows(cls, key + ".")
    out = [f"{'#' * level} `{key}`", ""]
    if _class_doc(cls):
        out += [_class_doc(cls), ""]
    out += ["| key | type | default | accepts | what |", "|---|---|---|---|---|", *rows, ""]
    for sub_key, sub_cls in sections:
        out += _section(sub_key, sub_cls, min(level + 1, 6))
    return out


def config_reference() -> str:
    """Markdown for every key of `stpdist.config.Config`, section by section."""
    from stpdist.config import Config

    out: list[str] = []
    for f in dataclasses.fields(Config):
        out += _section(f.name, _section_type(f, Config), 3)  # type: ignore[arg-type]
    return "\n".join(out)


def backbones() -> str:
    """Markdown for the `model.backbone` keys of every registered backbone."""
    from stpdist.models import BACKBONES

    out: list[str] = []
    for name, cls in BACKBONES.items():
        args = cls.Args
        out += [
            f"### `{name}`",
            "",
            f"`{cls.__module__}.{cls.__name__}`, arguments `{args.__name__}`.",
        ]
        if _class_doc(cls):
            out += ["", _class_doc(cls).split("\n\n")[0]]
        rows, _ = _field_rows(args, "")
        out += ["", "| key | type | default | accepts | what |", "|---|---|---|---|---|", *rows, ""]
    return "\n".join(out)
