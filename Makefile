# Two commands on a fresh clone:  make demo  |  make test
# Both create .venv if absent and install everything the project needs (torch pinned first: a
# CPU build; an unpinned torch would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.truncbridge-installed
TORCH_VERSION ?= 2.13.0
# transformers moves a layer's float32 rounding between releases (5.23 -> 5.24 moved calibrated
# ranges in their low bits): the versions measured in docs/ are the ones installed here
TRANSFORMERS_VERSION ?= 5.24.0
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: install demo lint test test-fast bench clean train-default-model

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==$(TORCH_VERSION)
	$(PIP) -e '.[test,mpc]' transformers==$(TRANSFORMERS_VERSION)
	# crypten 0.4.1 declares the dead `sklearn` package: install it without deps (its real needs
	# come from the `mpc` extra above); truncbridge.backends.crypten.compat makes it import on this torch.
	$(PIP) --no-deps crypten==0.4.1
	touch $(STAMP)

demo: install
	$(BIN)/truncbridge emulate

lint: install  # the linter and the import-layer contract (pyproject.toml: [tool.ruff], [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# two xdist workers on CI's two cores: the tests that time what they see run in order on one (tests/conftest.py,
# xdist_group "timed"); the others share both, filling the waits of the processes each test starts
test: lint  # the slowest tests listed at the end: where the suite's time goes
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=25

test-fast: lint  # the quick loop (under a minute): unit and property tests; no process, no whole default model
	$(BIN)/python -m pytest -n 2 -m "not slow"

# real pretrained checkpoints, outside `make test` (minutes on two cores): each one in the cache
# (python launch/fetch_checkpoint.py all-mpnet-base-v2; --list names them) emulates and compares within its
# bounds; one not fetched is skipped with the command that fetches it
test-real: install
	TRUNCBRIDGE_TEST_REAL=1 $(BIN)/python -m pytest tests/test_real_checkpoints.py -v -s -rs -p no:cacheprovider
.PHONY: test-real

bench: install
	$(BIN)/python launch/bench.py
	$(BIN)/python launch/bench_generation.py

bench-generate: install  # private generation only: 3PC + dealer on `mid`, per-token costs against vanilla and re-running the prefix
	$(BIN)/python launch/bench_generation.py
.PHONY: bench-generate

# issue 27's real-size matrix (GPT-2-small and a Llama of its shape; seq 32, 128; eager, optimal, vanilla; 2PC and
# 3PC + dealer; loopback, mid, lan): hours in full. A subset: make bench-scale ARGS='--models gpt2-small --seq-lens 32'
bench-scale: install  # ARGS='--dry-run' prints the mpirun commands; python launch/bench_scale.py --help for the options
	$(BIN)/python launch/bench_scale.py $(ARGS)
.PHONY: bench-scale

docs: install  # re-run the commands whose output README.md and docs/ show, and write it there
	$(BIN)/python launch/regen_docs.py
.PHONY: docs

train-default-model: install
	$(BIN)/python launch/train_default_model.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
