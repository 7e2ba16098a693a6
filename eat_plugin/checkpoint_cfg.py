"""Checkpoints keep the official config layout: plugin-only task fields are stored beside ``task``.

The official code rebuilds the pre-training task of a checkpoint with ``tasks.setup_task(cfg.task)``
(its fine-tuning model does so from ``model.pretrained_model_args.task``), and fairseq refuses a key
the official task dataclass does not declare. So a checkpoint written here carries, in every ``cfg``
it holds (its own, and the pre-training one stored in ``pretrained_model_args``), only official task
fields under ``task``; the plugin's own task fields (``official_fields.PLUGIN_TASK_FIELDS``: custom
normalisation statistics, ``min_sample_size``, ...) go under the sibling key ``eat_plugin_task``,
which the official code never reads. Reading a checkpoint here puts them back.

``to_official_layout`` runs on every checkpoint fairseq saves (``checkpoint_safety`` wraps
``torch_persistent_save``) and on converted ones; ``from_official_layout`` on every load
(``load_checkpoint_to_cpu`` and ``eat_plugin.checkpoint.load_checkpoint``). Both accept plain dicts and
OmegaConf configs, and leave a checkpoint of the other layout (official, older plugin versions) as it is.
"""

from __future__ import annotations

import copy
from typing import Any, MutableMapping

from omegaconf import DictConfig, open_dict

from eat_plugin.official_fields import PLUGIN_TASK_FIELDS

PLUGIN_TASK_KEY = "eat_plugin_task"


def to_official_layout(state: Any) -> Any:
    """A copy of checkpoint ``state`` whose configs hold official task fields only (``state`` untouched)."""
    if not isinstance(state, dict) or not _is_mapping(state.get("cfg")):
        return state
    state = dict(state)
    state["cfg"] = copy.deepcopy(state["cfg"])
    _move_out(state["cfg"])
    return state


def from_official_layout(state: Any) -> Any:
    """Put the plugin task fields of checkpoint ``state`` back into its configs (in place); returns it."""
    if isinstance(state, dict) and _is_mapping(state.get("cfg")):
        _move_in(state["cfg"])
    return state


def _configs(cfg: MutableMapping) -> list:
    """``cfg`` and the pre-training run config stored in its model section, if any."""
    found = [cfg]
    model = cfg.get("model")
    nested = model.get("pretrained_model_args") if _is_mapping(model) else None
    if _is_mapping(nested):
        found.extend(_configs(nested))
    return found


def _move_out(cfg: MutableMapping) -> None:
    for run in _configs(cfg):
        task = run.get("task")
        if not _is_mapping(task):
            continue
        plugin = {key: task[key] for key in PLUGIN_TASK_FIELDS if key in task}
        if plugin:
            with _writable(task), _writable(run):
                for key in plugin:
                    del task[key]
                run[PLUGIN_TASK_KEY] = plugin


def _move_in(cfg: MutableMapping) -> None:
    for run in _configs(cfg):
        plugin, task = run.get(PLUGIN_TASK_KEY), run.get("task")
        if not (_is_mapping(plugin) and _is_mapping(task)):
            continue
        with _writable(task), _writable(run):
            for key in PLUGIN_TASK_FIELDS:
                if key in plugin:
                    task[key] = plugin[key]
            del run[PLUGIN_TASK_KEY]


def _is_mapping(value: Any) -> bool:
    return isinstance(value, (dict, DictConfig))


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _writable(node: Any):
    return open_dict(node) if isinstance(node, DictConfig) else _Nothing()
