# crossmodal_jax: `make demo` trains the embedded default end to end; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/vqdit_img
CONFIG ?= configs/vqdit_img.py

.PHONY: demo test lint format install install-system-deps clean device-check

# Virtual environments, redone when pyproject.toml changes: the core package alone for the demo;
# for the tests also the test extras, the bench extra (torch CPU, diffusers, transformers and
# vector-quantize-pytorch, for the peer-equality tests), the tfds extra (tensorflow, for the TFDS audio/video
# source tests) and the video extra (PyAV, .mp4 inputs).
$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench,tfds,video]"
	# The taming-transformers VQGAN, the peer of the taming-layout test: its modules need only
	# torch and einops, but its declared dependencies (pytorch-lightning, torchvision) would
	# replace the CPU torch with a CUDA build.
	$(PY) -m pip install --quiet --no-deps "taming-transformers-rom1504==0.0.6"
	touch $@ $(VENV)/.core

install: $(VENV)/.installed

# espeak-ng synthesizes the embedded spoken_digits dataset (speech→text); chromium and its driver run
# the web demo's browser test (tests/cli/test_serve.py). Debian/Ubuntu: each installed with apt-get
# when missing (sudo when not root); elsewhere: install them yourself (macOS: brew install
# espeak-ng; without chromium the browser test is skipped).
install-system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng >/dev/null; \
	  else \
	    echo "espeak-ng not found and no apt-get: install it (macOS: brew install espeak-ng)" >&2; \
	    exit 1; \
	  fi; }
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium not found and no apt-get: the web demo's browser test will be skipped" >&2; \
	  fi; }

demo: $(VENV)/.core
	$(PY) -m crossmodal_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)
	@echo "Artifacts in $(WORKDIR): report.html, samples.png, metrics.json, tokenizer/ and generator/ (docs: README 'What the demo leaves')"

# Two pytest workers (pytest-xdist), whole files per worker: the suite is mostly XLA compilation,
# which runs on one core, so two workers keep both CI cores busy. tests/conftest.py hands out the
# end-to-end files first and keeps files that share a trained smoke workdir on one worker.
TEST_WORKERS ?= 2
test: $(VENV)/.installed install-system-deps
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

# What this machine's accelerator does with our DiT (benchmarks/device_check.py): DiT-XL/2 bf16
# training images/s and MFU at the largest batch that fits, planned vs measured memory, compile
# cold vs warm, every attention kernel, the sampler. On a CPU: a tiny DiT, in well under 2 minutes.
device-check: $(VENV)/.installed
	$(PY) benchmarks/device_check.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check crossmodal_jax configs tests benchmarks
	$(VENV)/bin/ruff format --check crossmodal_jax configs tests benchmarks

format: $(VENV)/.installed
	$(VENV)/bin/ruff format crossmodal_jax configs tests benchmarks
	$(VENV)/bin/ruff check --fix crossmodal_jax configs tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
