"""The documentation cannot rot unseen.

- Every shell and Python block of README.md and docs/pages/ is marked `<!-- run -->` (this
  file executes it, at the toy size it is written at) or `<!-- no-run: why -->`; a
  `<!-- config -->` YAML block must load as a config overlay.
- The generated references (docs/hooks.py) cover every command, flag and config key, and
  every config key has a docstring to show.
- Every section of the README before the site (tests/fixtures/docs/readme_sections.tsv) has
  its heading on the page that now holds it; the README stays a front page.

`make docs` (mkdocs build --strict) checks links, anchors and the API reference; CI runs it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "pages"
SECTIONS = Path(__file__).parent / "fixtures" / "docs" / "readme_sections.tsv"
EXAMPLE_LANGUAGES = {"bash", "sh", "shell", "console", "python", "py", "pycon"}
BLOCK_TIMEOUT_S = 180


class Block(NamedTuple):
    file: Path
    line: int  # of the opening fence
    language: str
    code: str
    marker: str | None  # run, no-run, config or None
    reason: str

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(PAGES.rglob("*.md"))]


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the marker comment right above it."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, language = fence.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i][len(indent) :])
            i += 1
        i += 1
        above = lines[start - 1].strip() if start else ""
        marker = re.fullmatch(r"<!-- (run|no-run|config)(?::\s*(.*?))? -->", above)
        kind, reason = (marker.group(1), marker.group(2) or "") if marker else (None, "")
        blocks.append(Block(path, start + 1, language.lower(), "\n".join(body), kind, reason))
    return blocks


def all_blocks() -> list[Block]:
    return [b for f in markdown_files() for b in code_blocks(f)]


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- markers -------------------------------------------------------------------------------


def test_every_example_is_marked_runnable_or_says_why_not():
    problems = []
    for block in all_blocks():
        if not block.language:
            problems.append(f"{block.where()}: a fence without a language (```text for output)")
        elif block.language in EXAMPLE_LANGUAGES and block.marker not in ("run", "no-run"):
            problems.append(f"{block.where()}: {block.language} block without <!-- run -->")
        elif block.marker == "no-run" and not block.reason.strip():
            problems.append(f"{block.where()}: <!-- no-run --> without a reason")
        elif block.marker == "config" and block.language != "yaml":
            problems.append(f"{block.where()}: <!-- config --> on a {block.language} block")
        elif block.marker == "run" and block.language not in ("bash", "python"):
            problems.append(f"{block.where()}: only bash and python blocks can run")
    assert not problems, "\n".join(problems)


def test_the_marker_parser_sees_marked_and_unmarked_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- run -->\n```bash\necho hi\n```\n\n```python\nprint(1)\n```\n\n"
        "<!-- no-run: needs a GPU -->\n```bash\nnvidia-smi\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b.marker, b.reason, b.code) for b in blocks] == [
        ("run", "", "echo hi"),
        (None, "", "print(1)"),
        ("no-run", "needs a GPU", "nvidia-smi"),
    ]


# --- runnable examples ---------------------------------------------------------------------

RUNNABLE = sorted({b.file for b in all_blocks() if b.marker == "run"})


def _environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        WANDB_MODE="offline",
        WANDB_DIR=str(folder / ".wandb"),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _run(block: Block, folder: Path, env: dict[str, str]) -> None:
    script = folder / (".block.sh" if block.language == "bash" else ".block.py")
    script.write_text(block.code + "\n")
    command = (
        ["bash", "-e", "-o", "pipefail", str(script)]
        if block.language == "bash"
        else [sys.executable, str(script)]
    )
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"{block.where()} exited {done.returncode}\n--- block\n{block.code}\n"
        f"--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-3000:]}"
    )


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_examples(page, tmp_path):
    """The page's runnable blocks, in order, in one fresh folder holding a copy of configs/
    (as a reader who follows the page from a clone would run them)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = _environment(tmp_path)
    for block in code_blocks(page):
        if block.marker == "run":
            _run(block, tmp_path, env)


def test_a_broken_example_fails(tmp_path):
    """The runner reports a failing command in the middle of a block, not only the last."""
    page = tmp_path / "page.md"
    page.write_text("<!-- run -->\n```bash\nstpdist train no-such.yaml\necho done\n```\n")
    (block,) = code_blocks(page)
    with pytest.raises(AssertionError, match="no-such.yaml"):
        _run(block._replace(file=ROOT / "README.md"), tmp_path, _environment(tmp_path))


def test_config_snippets_load(tmp_path):
    from stpdist.config import load_config

    snippets = [b for b in all_blocks() if b.marker == "config"]
    assert snippets, "no <!-- config --> block found"
    for i, block in enumerate(snippets):
        path = tmp_path / f"snippet{i}.yaml"
        path.write_text(block.code + "\n")
        try:
            load_config(path)
        except Exception as exc:  # the message names the key; say which block it was
            pytest.fail(f"{block.where()}: {exc}")


# --- generated references ------------------------------------------------------------------


def _parsers(parser, path: str):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_cli_reference_lists_every_command_and_flag():
    from stpdist.cli import parser

    text = hooks().cli_reference()
    missing = []
    for path, p in _parsers(parser(), "stpdist"):
        heading = re.search(rf"^#+ `{re.escape(path)}`$", text, re.M)
        if path == "stpdist":  # the top level is its --help text
            section, quote = text.split("\n#", 1)[0], ""
        elif heading is None:
            missing.append(path)
            continue
        else:
            section, quote = text[heading.end() :].split("\n#", 1)[0], "`"
        for action in p._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help") and f"{quote}{option}{quote}" not in section:
                    missing.append(f"{path} {option}")
    assert not missing, missing


def _config_keys(cls, prefix: str = ""):
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        yield key, cls, f.name
        for candidate in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(candidate):
                yield from _config_keys(candidate, key + ".")


def test_config_reference_lists_every_key_with_its_docstring():
    from stpdist.config import Config

    h = hooks()
    text = h.config_reference()
    keys = list(_config_keys(Config))
    assert len(keys) > 80
    missing = [key for key, _, _ in keys if f"`{key}`" not in text]
    assert not missing, f"keys missing from the configuration reference: {missing}"
    undocumented = [  # the four top-level sections are headings, not rows
        key for key, cls, name in keys if "." in key and not h.field_docstrings(cls).get(name)
    ]
    assert not undocumented, f"config fields without a docstring: {undocumented}"


def test_config_reference_states_each_check_and_default():
    text = hooks().config_reference()
    row = next(line for line in text.splitlines() if "`trainer.grad_clip_norm`" in line)
    assert "`None`" in row and "a positive finite number" in row, row
    row = next(line for line in text.splitlines() if "`data.batch_size`" in line)
    assert "`8`" in row and "an integer in [1, 1048576]" in row, row


def test_backbone_reference_lists_every_argument():
    from stpdist.models import BACKBONES

    h = hooks()
    text = h.backbones()
    for name, cls in BACKBONES.items():
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        for f in dataclasses.fields(cls.Args):
            assert f"`{f.name}`" in section, (name, f.name)
            assert h.field_docstrings(cls.Args).get(f.name), f"{name}: {f.name} has no docstring"


def test_reference_pages_hold_the_generated_markers():
    assert "<!-- generated: cli -->" in (PAGES / "reference" / "cli.md").read_text()
    text = (PAGES / "reference" / "configuration.md").read_text()
    assert "<!-- generated: config -->" in text and "<!-- generated: backbones -->" in text


# --- the old README's sections, the new front page -----------------------------------------


def _headings(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_every_section_of_the_old_readme_has_a_page():
    rows = [
        line.split("\t")
        for line in SECTIONS.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(rows) == 38  # every heading of README.md at 0e38f79
    missing = [
        f"{heading!r} on {page}"
        for heading, page in rows
        if not (PAGES / page).is_file() or heading not in _headings(PAGES / page)
    ]
    assert not missing, missing


def test_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the documentation"
    broken = [t for t in local if not (ROOT / t).exists()]
    assert not broken, broken
