"""EAT networks from stored checkpoints: the one path from ``{cfg, model}`` to a model with its weights.

Every caller that turns a checkpoint into a network without fairseq's task machinery (the Python API,
the scripts through it, the HF conversion) goes through here, so the rules live once: the model is
chosen by ``cfg.model._name``, its config is typed from the stored values (unknown keys dropped, as
fairseq does), weights load strictly through the models' own ``load_state_dict`` (legacy key names
renamed, one ``CheckpointMismatchError`` for another kind or size), and a pre-trained model comes back
as its student encoder (no teacher, no decoder).
"""

from __future__ import annotations

from typing import Any, Mapping, Tuple

from omegaconf import DictConfig, OmegaConf
from torch import nn

from eat_plugin.models.data2vec_multi import student_encoder
from eat_plugin.models.mae_image_classification import MaeImageClassificationModel, classifier_config
from eat_plugin.models.pretraining_config import config_from_dict

MODEL_NAMES = ("data2vec_multi", "mae_image_classification")


def stored_model_cfg(state: Mapping[str, Any], source: Any) -> dict:
    """``state["cfg"]["model"]`` as a plain dict (interpolations kept); ``ValueError`` naming ``source``."""
    cfg = state.get("cfg") if isinstance(state, Mapping) else None
    if cfg is None or "model" not in cfg:
        raise ValueError(f"{source}: not a fairseq EAT checkpoint (no cfg.model)")
    model = cfg["model"]
    model = OmegaConf.to_container(model if isinstance(model, DictConfig) else OmegaConf.create(model), resolve=False)
    if model.get("_name") not in MODEL_NAMES:
        raise ValueError(f"{source}: model {model.get('_name')!r} is not an EAT model ({' / '.join(MODEL_NAMES)})")
    return model


def network_from_checkpoint(state: Mapping[str, Any], source: Any,
                            keep_semantic_heads: bool = False) -> Tuple[nn.Module, int]:
    """``(network, training length in frames)`` of a loaded checkpoint dict, weights loaded strictly.

    Pre-trained: the student encoder (``Data2VecMultiModel`` without teacher and decoder; its machine-sound
    heads with ``keep_semantic_heads``). Fine-tuned: the ``MaeImageClassificationModel``, rebuilt from
    ``pretrained_model_args`` alone.
    """
    model_cfg = {**stored_model_cfg(state, source), "torch_compile": False}  # a training choice: eager here
    if model_cfg["_name"] == "data2vec_multi":
        network = student_encoder(config_from_dict(model_cfg), state["model"], keep_semantic_heads)
        return network, network.cfg.modalities.image.target_length
    network = MaeImageClassificationModel(classifier_config(model_cfg))
    network.load_state_dict(dict(state["model"]), strict=True)
    return network, network.cfg.target_length
