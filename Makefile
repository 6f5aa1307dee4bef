# Two commands: `make run` (the main job) and `make test` (the whole suite).
# Both create .venv if missing and install lrkit with its dev extra into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, preferring one already in the venv, then a local CPU wheel
# (pip's find-links), then PyTorch's CPU index; GPU users install their own torch into
# .venv before `make` (see README) and it is left alone.
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: run test install lint docs bench-optim clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)" \
	  || $(PY) -m pip install -q torch --index-url $(TORCH_CPU_INDEX)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

# The main job: the arena's quick suite (about 4 minutes on 2 idle cores), resumable;
# results, report.md and report.html in bench-results/.
run: install
	$(VENV)/bin/lrkit bench --suite quick --out bench-results

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	KERAS_BACKEND=torch $(PY) -m pytest -q -n 2

# The documentation site (site/): every python example of every page runs while it builds,
# and --strict fails on a broken example, link or reference. No network needed.
docs: install
	KERAS_BACKEND=torch NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: install
	$(VENV)/bin/ruff check .

bench-optim: install
	$(PY) benchmarks/optim_step.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache
