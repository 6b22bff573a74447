# The two set-up commands: `make demo` and `make test`. Each installs what it needs
# into .venv first (Keras 3 + TensorFlow, CPU-only; no CUDA packages are installed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test test-slow lint bench bench-peers bench-serve bench-serve-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelkeep demo --dir demo-output

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/pytest -q --durations=30

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# checkpoint stall against Orbax, Keras and TF (the peers get a venv of their own, made once)
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/peers_env.py
	$(BIN)/python benchmarks/ckpt_bench.py

# Serving against MLServer, BentoML, FastAPI and the echo floors (wrk: apt-get install -y wrk).
# The peers' venvs are made on first use (bench-serve-peers makes them alone); ~7 min on 2 cores.
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py

bench-serve-peers: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py --make-peers

clean:
	rm -rf $(VENV) demo-output
