"""Shared test factories (plain functions; the pytest fixtures and hooks live in tests/conftest.py).

* :mod:`helpers.official`: the official implementation from independent sources (the config-field table,
  the official recipes, official-format checkpoints written from the spec);
* :mod:`helpers.tiny`: the one tiny model config and its checkpoints, test audio, a malicious pickle;
* :mod:`helpers.runs`: the scripts, the recipes as ``fairseq-hydra-train`` composes them, fairseq's loader.

Test modules import from here (``from helpers import ...``), never from one another.
"""

from helpers.official import (
    PLUGIN_FIELDS,
    official_checkpoint,
    official_defaults,
    official_fields,
    official_names,
    official_recipes,
    plugin_names,
    reference_features,
)
from helpers.runs import (REPO, SCRIPTS, compose_recipe, load_script, load_with_fairseq, read_split, recipe_strings,
                          run_config, skipped_reasons)
from helpers.tiny import (
    CLIP_IDS,
    LABEL_IDS,
    LABEL_NAMES,
    NUM_CLASSES,
    TARGET_LENGTH,
    RunsCode,
    build_checkpoints,
    classification_task_cfg,
    finetune_config,
    make_labelled_data,
    noise,
    samples_for,
    save_finetuned,
    save_pretrained,
    tiny_pretraining_config,
    tiny_pretraining_model,
)

__all__ = [
    "build_checkpoints",
    "classification_task_cfg",
    "CLIP_IDS",
    "compose_recipe",
    "finetune_config",
    "LABEL_IDS",
    "LABEL_NAMES",
    "load_script",
    "load_with_fairseq",
    "make_labelled_data",
    "noise",
    "NUM_CLASSES",
    "official_checkpoint",
    "official_defaults",
    "official_fields",
    "official_names",
    "official_recipes",
    "PLUGIN_FIELDS",
    "plugin_names",
    "read_split",
    "recipe_strings",
    "reference_features",
    "REPO",
    "run_config",
    "RunsCode",
    "SCRIPTS",
    "samples_for",
    "save_finetuned",
    "save_pretrained",
    "skipped_reasons",
    "TARGET_LENGTH",
    "tiny_pretraining_config",
    "tiny_pretraining_model",
]
