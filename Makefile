# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .install.stamp
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install demo test test-all bench bench-gpu lint fmnist label-studio-server reproduce

# torch first, from the pinned CPU wheel, so nothing else pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[test,label]"
	# The independent OpenAI-CLIP reference of the parity tests. Not in the test extra: its torchvision (and timm's)
	# would replace the CPU torch with a CUDA build, and no torchvision release imports beside this torch; its
	# model and tokenizer code needs none of it (ftfy, its one other need here, is in the test extra). `make test`
	# fails the parity tests if it is missing (tests/_required.py), so a skipped install cannot pass unnoticed.
	$(PIP) install --quiet --no-deps "open_clip_torch==3.3.0"
	touch $(STAMP)

install: $(STAMP) fmnist

# The demo and the multi-process tests read Fashion-MNIST: a failed install stops here, not as a skipped test later.
fmnist:
	@if [ -f $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = "0" ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null; fi
	@[ -f $(FMNIST) ] || { echo "Fashion-MNIST missing ($(FMNIST)): run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; }

DEMO := workdirs/demo
SEEDS := 1 2 3
# The study's clearest finding (RESULTS.md): entropy sampling with and without PCB, and random sampling.
demo: install
	for s in $(SEEDS); do \
	  $(PYTHON) -m alpeft_jax.main --config=configs/demo.py:seed=$$s --workdir=$(DEMO)/entropy+pcb/s$$s && \
	  $(PYTHON) -m alpeft_jax.main --config=configs/demo.py:pcb=false,seed=$$s --workdir=$(DEMO)/entropy/s$$s && \
	  $(PYTHON) -m alpeft_jax.main --config=configs/demo.py:random,seed=$$s --workdir=$(DEMO)/random/s$$s || exit 1; \
	done
	$(PYTHON) -m alpeft_jax.report $(DEMO)/entropy+pcb/s* $(DEMO)/entropy/s* $(DEMO)/random/s* --summary \
	  --against linear:random,linear:entropy+pcb --out $(DEMO)/curves.png

# The study behind RESULTS.md (hours on 2 CPU cores; not part of `make test`). Resumable: rerun it after a stop and
# finished runs are skipped, a half-done run resumes from its checkpoint. Then the tables, plots and RESULTS.md.
reproduce: install
	$(PYTHON) benchmarks/study.py run --groups core --jobs 2
	$(PYTHON) benchmarks/study.py run --groups extra --jobs 2
	$(PYTHON) benchmarks/study.py tables
	$(PYTHON) benchmarks/study.py results

# The Label Studio server the oracle tests talk to: its own cached venv and empty database (not a dependency of ours).
label-studio-server: $(STAMP)
	$(PYTHON) tests/_label_studio_server.py install >/dev/null

lint: $(STAMP)
	$(PYTHON) -m ruff check alpeft_jax configs tests benchmarks launch
	$(PYTHON) -m ruff format --check alpeft_jax configs tests benchmarks launch
	$(PYTHON) -m mypy  # alpeft_jax/, settings in pyproject.toml

# Test files run on TEST_WORKERS processes (pytest-xdist; a file's tests stay on one worker, sharing its fixtures).
# ALPEFT_REQUIRE_ALL=1: a test whose reference (open_clip) or data (Fashion-MNIST) is missing fails, never skips.
TEST_WORKERS ?= 2
test: install lint label-studio-server
	ALPEFT_REQUIRE_ALL=1 $(PYTHON) -m pytest -q -m "not slow" -x --durations=10 -n $(TEST_WORKERS) --dist loadfile

test-all: install lint label-studio-server
	ALPEFT_REQUIRE_ALL=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(PYTHON) benchmarks/encode_throughput.py
	$(PYTHON) benchmarks/selection.py
	$(PYTHON) benchmarks/input_pipeline.py

# On a machine with a GPU: the accelerator half of both benchmarks in one timed run (outputs in $(OUT)).
bench-gpu:  # no install: keep the machine's own CUDA builds of jax and torch
	PYTHONPATH=. OUT=$(or $(OUT),workdirs/gpu_check) bash benchmarks/gpu_check.sh
