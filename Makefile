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
	@$(PYTHON) scripts/check_venv_space.py $(VENV)
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
	# machine sounds: generated fans -> EAT + semantic heads -> anomaly scores (AUC / pAUC per machine id)
	rm -rf $(DEMO_DIR)/machines
	$(PY) scripts/make_demo_data.py --layout mimii --out $(DEMO_DIR)/machines/sounds --normal-per-id 30 --anomalous-per-id 8
	$(PY) scripts/prepare_machine_sounds.py --root $(DEMO_DIR)/machines/sounds --out $(DEMO_DIR)/machines/data
	$(TRAIN) --config-dir config/pretraining --config-name machine_sounds_tiny $(USER_DIR) \
	  task.data=$(CURDIR)/$(DEMO_DIR)/machines/data checkpoint.save_dir=$(CURDIR)/$(DEMO_DIR)/machines/run \
	  hydra.run.dir=$(CURDIR)/$(DEMO_DIR)/machines/run
	$(PY) scripts/score_anomalies.py $(DEMO_DIR)/machines/run/checkpoint_last.pt --data $(DEMO_DIR)/machines/data \
	  --out $(DEMO_DIR)/machines/anomaly.tsv --scores $(DEMO_DIR)/machines/scores.tsv
	$(PY) scripts/plot_training.py $(DEMO_DIR)/machines/run --out $(DEMO_DIR)/machines/plots
	# phase 2 on a fine-tuned encoder: machine-id classifier + transformation head, scored the same way
	$(TRAIN) --config-dir config/finetuning --config-name machine_sounds_tiny $(USER_DIR) \
	  task.data=$(CURDIR)/$(DEMO_DIR)/machines/data model.model_path=$(CURDIR)/$(DEMO_DIR)/machines/run/checkpoint_last.pt \
	  checkpoint.save_dir=$(CURDIR)/$(DEMO_DIR)/machines/finetune hydra.run.dir=$(CURDIR)/$(DEMO_DIR)/machines/finetune
	$(PY) scripts/score_anomalies.py $(DEMO_DIR)/machines/finetune/checkpoint_last.pt --data $(DEMO_DIR)/machines/data \
	  --out $(DEMO_DIR)/machines/anomaly_finetuned.tsv
	@echo "demo: pre-trained $(DEMO_DIR)/pretrain/checkpoint_last.pt, fine-tuned $(DEMO_DIR)/finetune/checkpoint_best.pt"
	@echo "demo: curves in $(DEMO_DIR)/pretrain/plots and $(DEMO_DIR)/finetune/plots, evaluation in $(DEMO_DIR)/eval"
	@echo "demo: machine sounds: $(DEMO_DIR)/machines/anomaly.tsv (+ .png), curves in $(DEMO_DIR)/machines/plots;"
	@echo "demo:   fine-tuned (classifier + transformation head): $(DEMO_DIR)/machines/anomaly_finetuned.tsv (+ .png)"
	@echo "demo: TensorBoard: .venv/bin/tensorboard --logdir $(DEMO_DIR)"

test: venv
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
