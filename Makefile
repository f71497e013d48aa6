# make run  : execute every notebook in order, in place (NODE_BUDGET, default quick)
# make test : ruff, unit tests and the notebooks under nbval (NODE_BUDGET=smoke)
# make lab  : JupyterLab on the repository, opened on notebooks/, with the project's kernel
# make bench: odecore against torchdiffeq (benchmarks/results.md)
# make bench-example: the authors' latent ODE example, scored on notebook 03's protocol
# make gpu-check: on a CUDA machine, the CUDA tests, the notebooks (smoke) and a timed quick
#                 run of notebook 02 on the GPU, with a report (scripts/gpu_check.py)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Datasets are read from NODE_DATA_ROOT: the shared offline copy of MNIST
# when it lies beside the repo, else data/ (torchvision downloads there).
SHARED_DATA := $(abspath ../shared/data)
NODE_DATA_ROOT ?= $(if $(wildcard $(SHARED_DATA)/MNIST/raw/*),$(SHARED_DATA),$(CURDIR)/data)
export NODE_DATA_ROOT
NODE_BUDGET ?= quick

# On x86 CPUs with AVX2, use PyTorch's AVX2 kernels: on this project's AVX-512
# machines (AMD EPYC) torch 2.14's AVX-512 expm1, which ELU uses, measured
# 8x slower than its AVX2 one (376 vs 47 us for 32k floats). Override freely.
ifneq ($(shell grep -qs avx2 /proc/cpuinfo && echo yes),)
ATEN_CPU_CAPABILITY ?= avx2
export ATEN_CPU_CAPABILITY
endif

.PHONY: venv run test lab bench bench-example gpu-check clean

venv: $(STAMP)

# Rebuilt whenever the pinned requirements or the project metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	NODE_BUDGET=$(NODE_BUDGET) $(PY) scripts/run_notebooks.py notebooks

# The numerical tests once more on a second floating-point path: PyTorch's scalar
# kernels (no vector code), MKL's and oneDNN's most conservative code paths. A bound
# that rests on one kernel's rounding fails here first, not on a user's CPU.
SECOND_FP_PATH := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41

test: $(STAMP)
	$(PY) -m ruff check .
	NODE_BUDGET=smoke NODE_PROGRESS=text $(PY) scripts/pytest_strict.py tests notebooks --nbval-lax \
		--nbval-current-env --nbval-cell-timeout=600
	$(SECOND_FP_PATH) NODE_BUDGET=smoke $(PY) scripts/pytest_strict.py tests -m numerical -q

# The server's root is the repository, so the notebooks' links to ../odecore.py and
# the other modules open; the browser starts in notebooks/. Progress bars are widgets.
# Saving a notebook (or JupyterLab's autosave) cleans it as make run does: the config
# file's pre-save hook. (Jupyter refuses to run as root unless told: containers and
# these machines are root.)
LAB_CONFIG := scripts/jupyter_server_config.py
lab: $(STAMP)
	$(PY) -m jupyter lab --config=$(LAB_CONFIG) --ServerApp.root_dir=. \
		--LabApp.default_url=/lab/tree/notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	PYTHONPATH=tests $(PY) benchmarks/bench.py --threads 1

bench-example: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) benchmarks/latent_ode_example.py

gpu-check: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV)
