# shoal: one entry point for people and CI. Each target creates or refreshes the local virtualenv it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
export AWS_ACCESS_KEY_ID ?= testing
export AWS_SECRET_ACCESS_KEY ?= testing
export AWS_DEFAULT_REGION ?= us-east-1
export AWS_EC2_METADATA_DISABLED = true

.PHONY: help venv test demo bench gpu proto clean

help:
	@echo "make demo   build a GloVe-50d collection and run example queries (embedded, then through shoal serve)"
	@echo "make test   run the whole test suite"
	@echo "make bench  run a benchmark: make bench BENCH=flat|ivfpq|tenants|filtered|grpc|serverless (data: bench/README.md)"
	@echo "make gpu    swap faiss-cpu for faiss-gpu-cu12 in the virtualenv"
	@echo "make proto  regenerate the gRPC code from server/proto"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# reinstall when the project's dependencies change
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$*]'
	@touch $@

venv: $(VENV)/.installed-dev

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

demo: $(VENV)/.installed-demo
	$(BIN)/shoal demo --data data/demo
	$(BIN)/shoal demo-grpc --data data/demo-grpc

# one benchmark per run: make bench BENCH=flat|ivfpq|tenants|filtered|grpc|serverless (see bench/README.md)
BENCH ?= flat
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.$(BENCH)

gpu: $(VENV)/.installed-dev
	$(BIN)/python -m pip uninstall -y faiss-cpu
	$(BIN)/python -m pip install faiss-gpu-cu12
	$(BIN)/python -c "import faiss; print('faiss', faiss.__version__, 'GPUs:', faiss.get_num_gpus())"

proto: $(VENV)/.installed-dev
	$(BIN)/python -m shoal.server.gen_proto

clean:
	rm -rf $(VENV) build *.egg-info
