# Set-up on a fresh machine: `make demo` and `make test` each create .venv and install everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist
# CPU machines here: these releases lie on local disk (other versions download gigabytes).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint data clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,vit,bench,detection]'
	touch $(STAMP)

# Fashion-MNIST ships as a Debian package; install it when the files are missing and apt is usable.
data:
	@if ls $(FASHION_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
		echo "fashion-mnist: found in $(FASHION_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
			|| echo "fashion-mnist: apt install failed; tests that need it will be skipped"; \
	else \
		echo "fashion-mnist: missing and apt is not usable; tests that need it will be skipped"; \
	fi

# Trains a small dynamic network on fashion-canvas (CPU, a few minutes); writes runs/demo/report.json and plots.
demo: $(STAMP) data
	$(VENV)/bin/laudnet demo -o runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) data lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 tests  # one worker per core (CI: 2)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
