# Rosetta: everything a new machine needs, in two commands (see README.md):
#   make demo   set up (Python env with libtorch, model zoo, release build) and run the main job
#   make test   set up and run the whole test suite (Python + Rust)
# Every step is idempotent: a second run skips what is already done.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export ROSETTA_HOME ?= $(HOME)/.cache/rosetta
export ROSETTA_MODELS ?= $(ROSETTA_HOME)/models
VENV := $(ROSETTA_HOME)/venv
PY := $(VENV)/bin/python
CARGO ?= cargo
# Zoo models fetched by default (`make models ZOO="smollm2-135m-instruct"` for fewer).
ZOO ?= smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct
# Models whose HF reference outputs the parity tests read.
REFERENCE_MODELS ?= $(ZOO)

.PHONY: demo test setup models references build downstream fanout-check lint fmt clean-build help

help:
	@echo "make demo    set up everything and run the demo"
	@echo "make test    set up everything and run all tests"
	@echo "make models  fetch, verify and convert the model zoo ($(ROSETTA_MODELS))"
	@echo "make lint    cargo fmt --check and clippy -D warnings"

setup:
	@./scripts/setup-python.sh

models: setup
	@echo "[models] zoo: $(ZOO)"
	@$(PY) scripts/zoo.py fetch $(ZOO)

references: models
	@for m in $(REFERENCE_MODELS); do \
	  $(PY) scripts/hf_reference.py --model "$(ROSETTA_MODELS)/$$m" \
	    --out "$(ROSETTA_HOME)/reference/$$m.safetensors" --skip-if-current; \
	done

build: setup
	@echo "[build] cargo build --release (the first build compiles libtorch bindings: several minutes)"
	@$(CARGO) build --release --workspace --all-targets

# The main job: the set-up report, then a short refusal transfer (Qwen2.5-Coder 0.5B -> 1.5B, small prompt
# sets) into $(DEMO_OUT); a second run reuses its store, maps, vectors and completions. The full-size run and
# its figures: docs/RESULTS.md.
DEMO_OUT ?= runs/demo
DEMO_ARGS ?= --source-layer 16 --target-layer 19 --maps ridge --map-docs 80 --vector-prompts 40 \
  --selection-prompts 10 --test-prompts 12 --max-new-tokens 12 --completions 4 --kl-docs 2
demo: models build
	@$(CARGO) run --release --quiet --example demo -- --inventory-only
	@$(CARGO) run --release --quiet --example refusal_transfer -- --out $(DEMO_OUT) $(DEMO_ARGS)

# A crate outside the workspace that depends on Rosetta by path (tests/downstream), built from outside the
# repository so that .cargo/config.toml does not apply: it gets only what the README asks of a user (LIBTORCH,
# and its own build.rs for the rpath), and runs without LD_LIBRARY_PATH. The shared target dir and
# LIBTORCH_CXX11_ABI=1 (the value .cargo/config.toml sets) let it reuse the workspace's compiled libtorch bindings.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
downstream: build
	@echo "[test] downstream crate (tests/downstream depends on rosetta by path)"
	@cd / && LIBTORCH=$(CURDIR)/.libtorch LIBTORCH_CXX11_ABI=1 $(CARGO) build --release --locked --quiet \
	  --manifest-path $(CURDIR)/tests/downstream/Cargo.toml --target-dir $(TARGET_DIR)
	@cd / && env -u LD_LIBRARY_PATH $(TARGET_DIR)/release/rosetta-downstream-check $(ROSETTA_MODELS)/smollm2-135m-instruct

# The fanned-out collection of deploy/ (Slurm array, Kubernetes Indexed Job) run locally with 3 workers and
# checked against one worker over the whole corpus.
fanout-check: models build
	@echo "[test] fanned-out collection: 3 workers + merge == 1 worker"
	@CARGO_TARGET_DIR=$(TARGET_DIR) ./scripts/fanout-check.sh 3 45

test: references build
	@echo "[test] python tests"
	@$(PY) -m unittest discover -s tests/python -v
	@echo "[test] rust tests"
	@$(CARGO) test --release --workspace --all-targets
	@$(CARGO) test --release --workspace --doc
	@$(MAKE) --no-print-directory downstream
	@$(MAKE) --no-print-directory fanout-check

lint: setup
	@$(CARGO) fmt --all -- --check
	@$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	@$(CARGO) fmt --all
