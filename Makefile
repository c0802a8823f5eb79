# The two quick-start commands (README):  `make demo`  and  `make test`.
# Both create the pinned virtual environment and install the FID Inception weights when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha1sum requirements/main.txt | cut -c1-12)

.PHONY: demo test test-fast env weights xla-env clean-venv

demo: env weights            ## train the embedded default (configs/demo.yaml) on CPU, ~10 min
	$(PY) train.py --config configs/demo.yaml

test: env weights            ## the full suite, as CI runs it (slow, XLA-on-CPU and DDP tests included)
	$(PY) -m pytest -q --durations=15

test-fast: env               ## the quick tests only
	$(PY) -m pytest -q -m "not slow and not xla and not ddp"

env: $(STAMP)

$(STAMP): requirements/main.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/main.txt
	rm -f $(VENV)/.installed-* && touch $@

weights: env                 ## FID Inception weights into the torch hub cache (offline afterwards)
	$(PY) -m biggan.fid install-weights

xla-env:                     ## the cached torch-xla (CPU/TPU) environment used by tests/test_xla.py
	bash scripts/xla_env.sh

clean-venv:
	rm -rf $(VENV)
