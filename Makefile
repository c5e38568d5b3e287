# fastdiff_edu: build the book, run the tests, open JupyterLab.
# Everything is installed into ./.venv on first use; nothing needs to be installed beforehand
# except Python >= 3.10 with venv.
#
#   make book   build the HTML book into _build/html (warnings are errors)
#   make test   unit tests + every notebook in book/ and tutorials/ executed by nbval
#   make lab    JupyterLab with the MyST-markdown notebooks opening as notebooks
#   make clean  remove build outputs (keeps .venv); `make distclean` removes .venv too

PYTHON     ?= python3
VENV       ?= .venv
# The CPU build of PyTorch. GPU users: e.g. `make TORCH_SPEC="torch==2.5.1 --index-url ..."`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= dev
# Test oracle, without its training dependencies (see tests/oracles.py).
K_DIFFUSION_SPEC ?= k-diffusion==0.1.1.post1

BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(EXTRAS)
NB_DIRS := $(wildcard book tutorials)
PYTEST_ARGS ?= --durations=15

.DEFAULT_GOAL := help
.PHONY: help install book test lab clean distclean

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --no-deps $(K_DIFFUSION_SPEC)
	touch $@

install: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

# pytest over tests/ and nbval (lax: every cell must run without raising) over the notebooks.
# Notebooks are jupytext MyST markdown; conftest.py lets nbval collect them.
# Exit status 5 ("no tests collected") is a failure here: tests/ is never empty.
test: $(STAMP)
	$(BIN)/python -m pytest tests $(NB_DIRS) --nbval-lax --nbval-current-env $(PYTEST_ARGS); \
	rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests: check the paths and conftest.py" >&2; \
	exit $$rc

# JupyterLab opens .md files with jupytext's "Jupytext Notebook" viewer by default (settings
# override inside the venv, so nothing in ~/.jupyter changes). Root needs --allow-root.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

$(LAB_OVERRIDES): $(STAMP)
	mkdir -p $(@D)
	echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}}}' > $@

lab: $(LAB_OVERRIDES)
	$(BIN)/jupyter lab $(LAB_ARGS)

clean:
	rm -rf _build .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) *.egg-info
