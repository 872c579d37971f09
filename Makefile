# One entry point for a fresh machine: `make demo` (set up + demo) and `make test` (set up + tests).
# GPU users choose their torch build, e.g.
#   make demo TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# The default pins the version whose CPU wheel this project is developed against.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.volgan-installed

.PHONY: setup demo test lint docs bench clean

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, on its own, so the package's loose `torch>=` requirement is already met.
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/volgan demo

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks examples
	$(BIN)/ruff format --check src tests scripts benchmarks examples
	$(BIN)/mypy

# The suite, then the tests whose floats depend on the CPU's kernels (`-m numerics`) again with oneDNN
# and ATen limited to AVX2: an AVX-512 machine then sees the failures an AVX2-only machine would
# (on an AVX2 machine the second pass repeats the first with the same kernels).
AVX2_ONLY := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2

test: lint docs
	$(BIN)/python -m pytest -q
	$(AVX2_ONLY) $(BIN)/python -m pytest -q -m numerics

# The documentation site (MkDocs + Material + mkdocstrings) into site/; strict: a warning (a broken
# link, a reference to something that no longer exists) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
