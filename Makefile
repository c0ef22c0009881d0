# Quick start: `make demo` (train on synthetic moving digits), `make test` (the suite),
# `make docs` (the documentation site, docs/site/), `make docs-serve` (served while you edit).
VENV   ?= .venv
TORCH_INDEX ?=
PY     := $(VENV)/bin/python
export WANDB_MODE ?= offline

.PHONY: demo test test-slurm lint install install-docs docs docs-serve

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build. This project's machines
# hold the CPU build of 2.13.0 on disk; elsewhere PyPI's Linux torch is the CUDA build, and
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU one instead.
# pip byte-compiles one file at a time (half of a fresh install's 80 s here); compileall does
# it on every core, leaving out what no run imports (packages' own tests, pip: a quarter of
# the files), and compiles stpdist itself (an editable install: where PYTHONDONTWRITEBYTECODE
# is set, as on this project's machines, every process compiled it again, 0.09 s each). It
# exits 1 when a file does not compile (Python 2 test data some packages ship): such a file
# is only left uncompiled.
install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-compile torch==2.13.0 \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q --no-compile -e ".[test,wandb,formats]"
	@$(PY) -m compileall -q -j 0 -x '/site-packages/(.*/)?(tests?|pip)/' "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" stpdist >/dev/null || true

# train (resuming if an earlier demo left checkpoints), then predict the test split
demo: install
	$(VENV)/bin/stpdist train configs/quickstart.yaml --resume auto
	$(VENV)/bin/stpdist predict configs/quickstart.yaml

# two workers (pytest-xdist, work stealing): most tests wait on subprocesses
test: install
	WANDB_DIR=$$(mktemp -d) $(PY) -m pytest -q -n 2 --dist worksteal

# opt-in: starts a local 2-node SLURM cluster (installs slurm + munge when missing and
# adds the node names to /etc/hosts; needs root). CI runs it.
test-slurm: install
	WANDB_DIR=$$(mktemp -d) $(PY) -m pytest -q -m slurm --slurm

# ruff's rules include C901: no function in stpdist/ above a cyclomatic complexity of 15
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the docs extra (MkDocs, Material, mkdocstrings) on top of the install: the reference pages
# are generated from stpdist's own parsers and dataclasses, so the package must import
install-docs: install
	$(PY) -m pip install -q -e ".[docs]"

# the site into docs/site/, strict: a broken link or anchor, a reference mkdocstrings cannot
# resolve or a docstring it cannot parse fails the build
docs: install-docs
	$(VENV)/bin/mkdocs build --strict -f docs/mkdocs.yml

# serves the site at http://127.0.0.1:8000, rebuilt on every save
docs-serve: install-docs
	$(VENV)/bin/mkdocs serve -f docs/mkdocs.yml
