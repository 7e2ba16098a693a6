# eat-fairseq: `make demo` runs the main job on the built-in demo data, `make test` runs the tests.
# Both create the pinned virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.eat-installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=
TRAIN = $(VENV)/bin/fairseq-hydra-train
USER_DIR = common.user_dir=$(CURDIR)/eat_plugin

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): requirements.lock setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-input --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --no-input --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: venv
	$(PY) scripts/make_demo_data.py --out $(DEMO_DIR)/ESC-50-demo --clips-per-class-per-fold 4
	$(PY) scripts/prepare_esc50.py --esc50-root $(DEMO_DIR)/ESC-50-demo --out $(DEMO_DIR)/manifests
	rm -rf $(DEMO_DIR)/pretrain $(DEMO_DIR)/finetune
	$(TRAIN) --config-dir config/pretraining --config-name tiny $(USER_DIR) task.data=$(CURDIR)/$(DEMO_DIR)/manifests/fold1 \
	  checkpoint.save_dir=$(CURDIR)/$(DEMO_DIR)/pretrain hydra.run.dir=$(CURDIR)/$(DEMO_DIR)/pretrain/hydra \
	  criterion._name=eat_pretraining optimization.max_update=300
	$(TRAIN) --config-dir config/finetuning --config-name tiny $(USER_DIR) task.data=$(CURDIR)/$(DEMO_DIR)/manifests/fold1 \
	  model.model_path=$(CURDIR)/$(DEMO_DIR)/pretrain/checkpoint_last.pt model.num_classes=6 \
	  checkpoint.save_dir=$(CURDIR)/$(DEMO_DIR)/finetune hydra.run.dir=$(CURDIR)/$(DEMO_DIR)/finetune/hydra
	@echo "demo: pre-trained $(DEMO_DIR)/pretrain/checkpoint_last.pt, fine-tuned $(DEMO_DIR)/finetune/checkpoint_best.pt"
	@grep -h '"eval_accuracy"' $(DEMO_DIR)/finetune/hydra/hydra_train.log | tail -1 | sed 's/.*"eval_accuracy": "\([0-9.]*\)".*"eval_best_accuracy": "\([0-9.]*\)".*/demo: fold-1 accuracy \1 %, best \2 % (6 classes, chance 16.7 %)/'

test: venv
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
