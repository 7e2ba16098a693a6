# eat-fairseq: `make demo` runs the main job on the built-in demo data, `make test` runs the tests.
# Both create the pinned virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.eat-installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): requirements.lock setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-input --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --no-input --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: venv
	$(PY) scripts/make_demo_data.py --out $(DEMO_DIR)/ESC-50-demo
	$(PY) scripts/prepare_esc50.py --esc50-root $(DEMO_DIR)/ESC-50-demo --out $(DEMO_DIR)/manifests
	rm -rf $(DEMO_DIR)/pretrain
	$(VENV)/bin/fairseq-hydra-train --config-dir config/pretraining --config-name tiny \
	  common.user_dir=$(CURDIR)/eat_plugin task.data=$(CURDIR)/$(DEMO_DIR)/manifests/fold1 \
	  checkpoint.save_dir=$(CURDIR)/$(DEMO_DIR)/pretrain hydra.run.dir=$(CURDIR)/$(DEMO_DIR)/pretrain/hydra \
	  criterion._name=eat_pretraining optimization.max_update=100
	@echo "demo: pre-trained checkpoint at $(DEMO_DIR)/pretrain/checkpoint_last.pt"

test: venv
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
