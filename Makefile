# The README's commands. Each bootstraps .venv/ on a fresh machine and is cheap to re-run:
# stamps in .make/ skip what is already done; ninja rebuilds only changed kernels.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMPS := .make
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' | grep -v generated)
# Seed-system plugins are installed with the core; plugins/example is the plugin author's guide
# and its test installs it into a throwaway environment.
PLUGINS := $(filter-out plugins/example/%,$(wildcard plugins/*/pyproject.toml))
# GPU machines get the full benchmark shapes, others a quick pass.
BENCH_ARGS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,--quick)

.PHONY: demo test lint bench wheel wheel-index cuda-check install clean

# The dual-path recipe end to end: trains dualpath/scenes (Stage I, Stage II) into runs/demo,
# prints its retrieval table next to chance and a bag-of-words baseline, writes the report.
demo: install
	$(PY) -m fusedembed demo dualpath --run-dir runs/demo

test: install
	$(PY) -m pytest

# ruff over the Python tree (rules in pyproject.toml [tool.ruff]).
lint: install
	$(VENV)/bin/ruff check .

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b $(BENCH_ARGS) || exit 1; done

# The core wheel (its extension compiled against this torch, which it then requires:
# fusedembed-X.Y.Z+pt214cpu, +pt214cu130 with FUSEDEMBED_CUDA=1) and one pure-Python wheel per
# plugin, into dist/.
wheel: install
	$(PIP) wheel --no-build-isolation --no-deps -w dist . $(dir $(wildcard plugins/*/pyproject.toml))

# Find-links pages over whatever dist/ holds (wheels from several build machines may be collected
# there): index.html and one page per variant. Standard library only, so no .venv is needed.
wheel-index:
	$(PYTHON) tools/wheel_index.py dist

install: $(STAMPS)/build

# A torch already importable here (system site-packages) is used as it is; else the pinned one.
$(STAMPS)/venv:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@mkdir -p $(STAMPS) && touch $@

# Build requirements: pyproject.toml's [build-system] list (torch comes above); the runtime and
# test ones are installed with the package itself (`-e .[test]`).
BUILD_REQS = $(PY) -c 'import importlib, sys; toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "pip._vendor.tomli"); print(*(r for r in toml.load(open("pyproject.toml", "rb"))["build-system"]["requires"] if r != "torch"))'

$(STAMPS)/deps: $(STAMPS)/venv constraints.txt pyproject.toml
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt $$($(BUILD_REQS))
	@touch $@

$(STAMPS)/build: $(STAMPS)/deps setup.py fusedembed/_version.py $(CSRC) $(PLUGINS)
	$(PIP) install -c constraints.txt --no-build-isolation -e ".[test]"
	@for p in $(dir $(PLUGINS)); do $(PIP) install --no-build-isolation --no-deps -e $$p || exit 1; done
	@touch $@

# Compiles every CUDA source with the C++ ones for sm_80 and sm_90, runs nothing: keeps the CUDA
# code building on machines without a GPU. Its output goes to build/cuda-check, not the package.
cuda-check: $(STAMPS)/deps
	@nvcc=$$(command -v nvcc || true); \
	if [ -z "$$nvcc" ] && [ -z "$$CUDA_HOME" ]; then echo "skipped: no nvcc"; exit 0; fi; \
	home=$${CUDA_HOME:-$$( [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda || dirname $$(dirname $$nvcc))}; \
	echo "cuda-check: CUDA_HOME=$$home archs=$${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"; \
	start=$$(date +%s); \
	FUSEDEMBED_CUDA=1 CUDA_HOME=$$home TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" \
		$(PY) setup.py -q build_ext --build-temp build/cuda-check/tmp --build-lib build/cuda-check/lib \
		&& echo "cuda-check: compiled in $$(( $$(date +%s) - start )) s"

clean:
	rm -rf build dist $(STAMPS) fusedembed/_C*.so csrc/generated fusedembed/_build_meta.py
