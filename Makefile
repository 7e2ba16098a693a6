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
	$(PY) scripts/make_demo_data.py --layout folders --out $(DEMO_DIR)/sounds --clips-per-class-per-fold 8
	$(PY) scripts/prepare_custom.py --folders $(DEMO_DIR)/sounds --out $(DEMO_DIR)/data
	rm -rf $(DEMO_DIR)/pretrain $(DEMO_DIR)/finetune $(DEMO_DIR)/eval
	$(TRAIN) --config-dir config/pretraining --config-name tiny $(USER_DIR) task.data=$(CURDIR)/$(DEMO_DIR)/data \
	  checkpoint.save_dir=$(CURDIR)/$(DEMO_DIR)/pretrain hydra.run.dir=$(CURDIR)/$(DEMO_DIR)/pretrain \
	  criterion._name=eat_pretraining optimization.max_update=300
	$(TRAIN) --config-dir config/finetuning --config-name custom_tiny $(USER_DIR) task.data=$(CURDIR)/$(DEMO_DIR)/data \
	  model.model_path=$(CURDIR)/$(DEMO_DIR)/pretrain/checkpoint_last.pt \
	  checkpoint.save_dir=$(CURDIR)/$(DEMO_DIR)/finetune hydra.run.dir=$(CURDIR)/$(DEMO_DIR)/finetune \
	  $$(cat $(DEMO_DIR)/data/overrides.txt)
	$(PY) scripts/evaluate.py $(DEMO_DIR)/finetune/checkpoint_best.pt --data $(DEMO_DIR)/data --split test \
	  --out $(DEMO_DIR)/eval/confusion.tsv
	$(PY) scripts/plot_training.py $(DEMO_DIR)/pretrain --out $(DEMO_DIR)/pretrain/plots
	$(PY) scripts/plot_training.py $(DEMO_DIR)/finetune --out $(DEMO_DIR)/finetune/plots
	@echo "demo: pre-trained $(DEMO_DIR)/pretrain/checkpoint_last.pt, fine-tuned $(DEMO_DIR)/finetune/checkpoint_best.pt"
	@echo "demo: curves in $(DEMO_DIR)/pretrain/plots and $(DEMO_DIR)/finetune/plots, evaluation in $(DEMO_DIR)/eval"
	@echo "demo: TensorBoard: .venv/bin/tensorboard --logdir $(DEMO_DIR)"

test: venv
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
