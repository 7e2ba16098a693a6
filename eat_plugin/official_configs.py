"""The official EAT recipes as complete fairseq cfgs, for checkpoints rebuilt from the HF layout.

An HF ``config.json`` (EATConfig, reference §9.3) carries only the model's structure; a fairseq
checkpoint stores the complete cfg of its run (§9.1 / §9.2: ``cfg``, and a fine-tuned model's
``cfg.model.pretrained_model_args``). This module rebuilds the complete official fairseq cfg of the
released checkpoints' recipes: EAT-base pre-training (§6.1), EAT-large (§6.2) and AS-2M fine-tuning
(§6.3), with the defaults of the registered model / task dataclasses (§2) filled in, as
``fairseq-hydra-train`` does. A template cfg (e.g. another checkpoint's) can replace recipe values.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Tuple

from fairseq.dataclass.configs import FairseqConfig
from fairseq.dataclass.initialize import add_defaults
from omegaconf import OmegaConf

from eat_plugin.layout import PATCH_FRAMES
from eat_plugin.models.mae_image_classification import MaeImageClassificationConfig
from eat_plugin.models.pretraining_config import Data2VecMultiConfig
from eat_plugin.tasks.classification import MaeImageClassificationConfig as ClassificationTaskConfig
from eat_plugin.tasks.pretraining import MaeImagePretrainingConfig


def checkpoint_cfg(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A fairseq checkpoint's ``cfg`` as a plain, resolved dict (enums as names)."""
    cfg = state.get("cfg")
    if cfg is None:
        raise ValueError("the checkpoint has no 'cfg' (a legacy 'args' checkpoint?); expected a fairseq "
                         "checkpoint of data2vec_multi or mae_image_classification")
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, enum_to_str=True)


_OPTIMIZER = {"_name": "composite", "dynamic_groups": True, "groups": {"default": {
    "lr_float": 0.0005, "optimizer": {"_name": "adam", "adam_betas": [0.9, 0.95], "weight_decay": 0.05},
    "lr_scheduler": {"_name": "cosine", "warmup_updates": 53333}}}}


def official_pretraining_sections(large: bool = False) -> Dict[str, Any]:
    """The official EAT-base pre-training recipe (§6.1), or EAT-large's (§6.2), as cfg sections."""
    lr = 0.0004 if large else 0.0005
    optimizer = copy.deepcopy(_OPTIMIZER)
    optimizer["groups"]["default"]["lr_float"] = lr
    decoder = {"decoder_dim": 1024 if large else 768, "decoder_groups": 16, "decoder_kernel": 5 if large else 3,
               "decoder_layers": 3 if large else 6, "input_dropout": 0.0}
    image = {"in_chans": 1, "inverse_mask": True, "mask_prob": 0.75 if large else 0.8,
             "mask_prob_adjust": 0.1 if large else 0.07, "mask_length": 5, "mask_noise_std": 0.01, "prenet_depth": 0,
             "ema_local_encoder": True, "num_extra_tokens": 1, "init_extra_token_zero": False,
             "use_alibi_encoder": False, "decoder": decoder}
    model = {"_name": "data2vec_multi", "ema_decay": 0.9998, "ema_end_decay": 0.99999,
             "ema_anneal_end_step": 150000 if large else 100000, "instance_norm_target_layer": True,
             "layer_norm_target_layer": False, "layer_norm_targets": True, "end_of_block_targets": False,
             "depth": 24 if large else 12, "average_top_k_layers": 24 if large else 12, "clone_batch": 16,
             "norm_eps": 1e-6, "min_target_var": 0.0, "min_pred_var": 0.0, "encoder_dropout": 0.0,
             "post_mlp_drop": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "supported_modality": "IMAGE",
             "cls_loss": 1.0, "ema_encoder_only": False, "modalities": {"image": image}}
    return {
        "common": {"fp16": True, "log_format": "json", "log_interval": 200, "min_loss_scale": 1e-6,
                   "fp16_no_flatten_grads": True, "seed": 1},
        "checkpoint": {"save_interval": 1, "save_interval_updates": 10000, "keep_interval_updates": 1,
                       "no_epoch_checkpoints": True},
        "task": {"_name": "mae_image_pretraining", "data": "data", "rebuild_batches": True, "key": "source",
                 "precompute_mask_config": {}, "downsr_16hz": True, "audio_mae": True, "h5_format": False,
                 "target_length": 1024, "flexible_mask": False},
        "dataset": {"num_workers": 10, "batch_size": 12, "skip_invalid_size_inputs_valid_test": True,
                    "required_batch_size_multiple": 1, "disable_validation": True},
        "distributed_training": {"distributed_world_size": 4, "ddp_backend": "c10d"},
        "criterion": {"_name": "model", "log_keys": ["ema_decay", "target_var", "pred_var", "model_norm", "ema_norm",
                                                     "masked_pct"]},
        "optimization": {"max_update": 400000, "lr": [lr], "debug_param_names": True, "clip_norm": 4.0},
        "optimizer": optimizer,
        "lr_scheduler": {"_name": "pass_through"},
        "model": model,
    }


def official_finetuning_sections() -> Dict[str, Any]:
    """The official AS-2M fine-tuning recipe (§6.3 + finetuning_AS2M.sh, without its HDF5 / weighted
    sampling data options) as cfg sections; ``model.pretrained_model_args`` is filled in later."""
    optimizer = copy.deepcopy(_OPTIMIZER)
    optimizer["groups"]["default"].update(lr_float=0.00005, lr_scheduler={
        "_name": "cosine", "warmup_updates": 30000, "min_lr": 1e-6})
    return {
        "common": {"fp16": True, "log_format": "json", "log_interval": 200, "fp16_no_flatten_grads": True},
        "checkpoint": {"save_interval": 1, "save_interval_updates": 10000, "keep_interval_updates": 1,
                       "no_epoch_checkpoints": True, "best_checkpoint_metric": "mAP",
                       "maximize_best_checkpoint_metric": True},
        "task": {"_name": "mae_image_classification", "data": "data", "downsr_16hz": True, "audio_mae": True,
                 "target_length": 1024, "roll_aug": True, "noise": False, "h5_format": False, "weights_file": "",
                 "num_samples": 200000, "AS2M_finetune": False, "spcv1_finetune": False, "spcv2_eval": False,
                 "esc50_eval": False},
        "dataset": {"num_workers": 6, "batch_size": 96, "skip_invalid_size_inputs_valid_test": True,
                    "required_batch_size_multiple": 2, "train_subset": "train", "valid_subset": "eval"},
        "distributed_training": {"distributed_world_size": 1, "ddp_backend": "c10d"},
        "criterion": {"_name": "model", "log_keys": ["_predictions", "_targets"]},
        "optimization": {"max_update": 300000, "lr": [0.00005]},
        "optimizer": optimizer,
        "lr_scheduler": {"_name": "pass_through"},
        "model": {"_name": "mae_image_classification", "model_path": "", "mixup": 0.8, "mixup_prob": 0.9,
                  "audio_mae": True, "num_classes": 527, "specaug": True, "mask_ratio": 0.2,
                  "prediction_mode": "CLS_TOKEN", "spcv2_eval": False, "esc50_eval": False, "target_length": 1024,
                  "label_smoothing": 0.0, "freqm": 25, "timem": 200},
    }


def _over(sections: Dict[str, Any], template: Optional[Mapping[str, Any]], typed: Mapping[str, type]) -> Dict[str, Any]:
    """``template``'s sections over ``sections``: ``typed`` ones (model, task) merged key by key and
    restricted to their dataclass's fields, the others replaced; ``None`` sections are skipped."""
    for name, value in (template or {}).items():
        if value is None or name not in FairseqConfig.__dataclass_fields__:
            continue
        if name in typed and isinstance(value, Mapping):
            fields = typed[name].__dataclass_fields__
            value = {k: v for k, v in value.items() if k in fields}
            value = OmegaConf.to_container(OmegaConf.merge(sections.get(name) or {}, value))
        sections[name] = copy.deepcopy(value)
    return sections


def complete_cfg(sections: Mapping[str, Any]) -> Dict[str, Any]:
    """Sections -> the full fairseq cfg the trainer saves: every section, each registered dataclass's
    defaults filled in (as ``fairseq-hydra-train`` does), interpolations resolved, enums as names."""
    cfg = OmegaConf.merge(OmegaConf.structured(FairseqConfig), dict(sections))
    add_defaults(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def pretraining_cfg(config: Mapping[str, Any], template: Optional[Mapping[str, Any]] = None,
                    data: Optional[str] = None) -> Dict[str, Any]:
    """Full resolved cfg of a ``data2vec_multi`` run with the structure of the EATConfig ``config``.

    Widths, depth, heads, lengths and norm eps come from ``config``; every other value from ``template``
    (a pre-training cfg) over the official recipe: EAT-large for a 1024-wide, 24-deep model, else EAT-base
    (the decoder then as wide as the encoder).
    """
    d, depth, heads = config["embed_dim"], config["depth"], config["num_heads"]
    sections = official_pretraining_sections(large=(d, depth) == (1024, 24))
    sections["model"]["modalities"]["image"]["decoder"]["decoder_dim"] = d
    sections = _over(sections, template, {"model": Data2VecMultiConfig, "task": MaeImagePretrainingConfig})
    model, task = sections["model"], sections["task"]
    model.update(_name="data2vec_multi", embed_dim=d, depth=depth, num_heads=heads, mlp_ratio=config["mlp_ratio"],
                 norm_eps=config["norm_eps"], norm_affine=True, layer_norm_first=False, supported_modality="IMAGE",
                 ema_encoder_only=False, average_top_k_layers=min(model.get("average_top_k_layers", depth), depth))
    model.setdefault("modalities", {}).setdefault("image", {}).update(
        type="IMAGE", in_chans=1, patch_size=PATCH_FRAMES, embed_dim=d, max_length=config["max_length"],
        target_length=config["img_size"][0], num_extra_tokens=1, prenet_depth=0, fixed_positions=True,
        num_alibi_heads=heads, model_depth=depth)
    task.update(_name="mae_image_pretraining", target_length=config["img_size"][0])
    if data is not None or template is None:
        task["data"] = data or "data"
    return complete_cfg(sections)


def finetuning_cfg(config: Mapping[str, Any], pretraining: Mapping[str, Any],
                   template: Optional[Mapping[str, Any]] = None, data: Optional[str] = None) -> Dict[str, Any]:
    """Full resolved cfg of a ``mae_image_classification`` run; ``pretraining`` goes to
    ``model.pretrained_model_args`` (criterion and lr_scheduler nulled, as the official loader stores it)."""
    sections = _over(official_finetuning_sections(), template,
                     {"model": MaeImageClassificationConfig, "task": ClassificationTaskConfig})
    model, task = sections["model"], sections["task"]
    if data is not None or template is None:
        task["data"] = data or "data"
    args = {**copy.deepcopy(dict(pretraining)), "criterion": None, "lr_scheduler": None}
    args["task"]["data"] = task["data"]
    model.pop("data", None)  # II("task.data")
    model.update(_name="mae_image_classification", num_classes=config["num_classes"], use_fc_norm=True,
                 target_length=config["img_size"][0], prediction_mode="CLS_TOKEN", pretrained_model_args=args)
    if model.get("norm_eps") is not None:
        model["norm_eps"] = config["norm_eps"]
    task.update(_name="mae_image_classification", target_length=config["img_size"][0])
    return complete_cfg(sections)


def split_template(template_cfg: Any) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """A template cfg -> ``(pre-training cfg, fine-tuning cfg)``; a fine-tuned one gives both."""
    if template_cfg is None:
        return None, None
    template = checkpoint_cfg({"cfg": template_cfg})
    name = (template.get("model") or {}).get("_name")
    if name == "data2vec_multi":
        return template, None
    if name == "mae_image_classification":
        return template["model"].get("pretrained_model_args"), template
    raise ValueError(f"template cfg.model._name={name!r}: expected 'data2vec_multi' or 'mae_image_classification'")
