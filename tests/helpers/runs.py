"""Running the project's code the way users do: the scripts, the recipes as ``fairseq-hydra-train`` composes
them, checkpoints through fairseq's own loader."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
CONFIG = REPO / "config"
USER_DIR = REPO / "eat_plugin"


@functools.lru_cache(maxsize=None)
def load_script(name: str):
    """``scripts/{name}.py`` as a module (scripts/ is not a package), once per session, under a name of its
    own: ``evaluate`` is also a PyPI package."""
    spec = importlib.util.spec_from_file_location(f"eat_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script executes
    spec.loader.exec_module(module)
    return module


def compose_recipe(directory: str, name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """What ``fairseq-hydra-train --config-dir config/DIRECTORY --config-name NAME OVERRIDES`` composes, with the
    task / model / criterion sections merged into their registered dataclasses (unresolved)."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import eat_plugin  # noqa: F401  (registers the models, tasks and criterions whose dataclasses add_defaults merges)

    hydra_init(name)  # fairseq's schema, registered under the recipe's name as fairseq_cli does
    GlobalHydra.instance().clear()
    with warnings.catch_warnings():  # hydra's deprecation notes about that (fairseq's) way of matching schemas
        warnings.filterwarnings("ignore", message=r"(?s).*(ConfigStore schema|version_base)", category=UserWarning)
        with initialize_config_dir(config_dir=str(CONFIG / directory), version_base="1.1"):
            cfg = compose(config_name=name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    add_defaults(cfg)
    return cfg


def run_config(directory: str, name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The run config fairseq_cli/hydra_train.py trains with: :func:`compose_recipe` with the plugin as user dir,
    resolved, enums as names, struct."""
    cfg = compose_recipe(directory, name, [f"common.user_dir={USER_DIR}", *overrides])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def load_with_fairseq(path, **overrides):
    """``checkpoint_utils.load_model_ensemble_and_task`` on ``path`` with the plugin as user dir: the model
    (eval mode), the run config and the task."""
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(Namespace(user_dir=str(USER_DIR)))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides or None)
    return models[0].eval(), cfg, task


def recipe_strings(node):
    """Every string value of a recipe as a nested container (``OmegaConf.to_container(cfg, resolve=False)``)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from recipe_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from recipe_strings(value)
    elif isinstance(node, str):
        yield node


# --------------------------------------------------------------------------------- prepared data


def read_split(data_dir: Path, split: str):
    """A prepared ``{split}.tsv`` / ``.lbl`` read back through ``eat_plugin.data.manifest``:
    ``{relpath: num_samples}``, ``{relpath: [label ids]}`` (manifest order)."""
    from eat_plugin.data.manifest import read_label_descriptors, read_labels, read_manifest

    manifest = read_manifest(data_dir / f"{split}.tsv")
    descriptors = read_label_descriptors(data_dir / "label_descriptors.csv")
    labels = read_labels(data_dir / f"{split}.lbl", descriptors, manifest)
    lengths = {row.relpath: row.num_samples for row in manifest.rows}
    ids = {row.relpath: [descriptors.ids[i] for i in row_labels] for row, row_labels in zip(manifest.rows, labels)}
    return lengths, ids


def skipped_reasons(summary_path: Path) -> dict:
    """``{file name or id: reason}`` over every split of a preparer's ``summary.json``."""
    summary = json.loads(summary_path.read_text())
    return {Path(k["path"]).name: k["reason"] for split in summary["skipped"].values() for k in split}
