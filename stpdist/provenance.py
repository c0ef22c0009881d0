"""What a run was made with, for whoever reproduces it: `<output_dir>/provenance.jsonl`,
one JSON line a start and a resume, written by the main process once the run's checks are
passed. Each holds the command line, the versions (stpdist and the git commit of its
source where it runs from a checkout, a SHA-256 of its Python files that tells changes not
committed, Python, torch, accelerate, numpy), the platform, the
ranks, accumulation, loader workers and intra-op threads (the weights depend on all of
them), the resolved config, the weights a fine-tuning started from (path and SHA-256),
and the training data's `index.json` (path and SHA-256). A resume's line names the config
keys changed since the line before it (also said on the console): `config.yaml` holds the
newest settings only.

Nothing is run to find the commit: the `.git` folder beside the package is read (its HEAD,
the ref it names or `packed-refs`), and a tree not in git gives none."""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.jsonl"
COMMAND: list[str] | None = None
"""The `stpdist` command line being run (set by `cli.main`); else the program's own path
(`sys.argv[0]`) alone: a program's arguments are its own (a token among them)."""
HEX_SHA = re.compile(r"[0-9a-f]{40}")


def source_commit() -> str | None:
    """The git commit of the stpdist source tree this process imports, where it is a
    checkout (an editable install): read from `.git`, never by running git."""
    root = Path(__file__).resolve().parent.parent
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            pointed = git.read_text().strip().removeprefix("gitdir:").strip()
            git = (root / pointed).resolve()
        head = (git / "HEAD").read_text().strip()
        if HEX_SHA.fullmatch(head):
            return head
        ref = head.removeprefix("ref:").strip()
        if not ref.startswith("refs/") or ".." in ref:
            return None
        common = git
        if (git / "commondir").is_file():  # a worktree's refs live in the main .git
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for folder in dict.fromkeys((git, common)):
            loose = folder / ref
            if loose.is_file():
                found = loose.read_text().strip()
                return found if HEX_SHA.fullmatch(found) else None
            packed = folder / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    sha, _, name = line.partition(" ")
                    if name == ref and HEX_SHA.fullmatch(sha):
                        return sha
    except (OSError, UnicodeDecodeError):
        return None
    return None


def source_sha256() -> str:
    """SHA-256 over the stpdist package's Python files (their paths in the package and
    bytes, in path order): the same for the same code whatever the install, and other for
    a checkout with changes not committed, which `commit` cannot tell (the reproducibility
    review's "no dirty flag")."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package).as_posix()}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """The versions and platform a run's numbers depend on."""
    import accelerate
    import numpy
    import torch

    from . import __version__

    return {
        "stpdist": __version__,
        "commit": source_commit(),
        "source_sha256": source_sha256(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys → leaf values."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix.removesuffix("."): value}


def changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """`key old → new` for each dotted config key whose value differs."""
    if before is None or after is None:
        return []
    old, new = _flat(before), _flat(after)
    return [
        f"{key} {old.get(key)!r} → {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _last_config(path: Path) -> dict[str, Any] | None:
    """The config of the file's last readable line (a line cut by a kill is passed over)."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("config"), dict):
            return entry["config"]
    return None


def record(output_dir: str | Path, entry: dict[str, Any]) -> list[str]:
    """Append `entry` (with the time, the command line and `environment()`) as a line of
    `provenance.jsonl`; returns the config keys changed since the line before it."""
    path = Path(output_dir) / PROVENANCE_FILE
    changed = changes(_last_config(path), entry.get("config"))
    line = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **entry,
        "command": list(COMMAND) if COMMAND is not None else sys.argv[:1],
        **environment(),
        **({"changed": changed} if changed else {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, 2)
        if f.tell():  # a line a kill cut short is ended first, not joined to this one
            f.seek(-1, 2)
            ended = f.read(1) == b"\n"
            if not ended:
                f.write(b"\n")
        f.write((json.dumps(line, default=str) + "\n").encode())
    return changed
