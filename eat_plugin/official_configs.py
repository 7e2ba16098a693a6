"""The official EAT recipes as complete fairseq cfgs, for checkpoints rebuilt from the HF layout.

An HF ``config.json`` (EATConfig, reference §9.3) carries only the model's structure; a fairseq
checkpoint stores the complete cfg of its run (§9.1 / §9.2: ``cfg``, and a fine-tuned model's
``cfg.model.pretrained_model_args``). This module rebuilds the complete official fairseq cfg of the
released checkpoints' recipes: EAT-base pre-training (§6.1), EAT-large (§6.2) and AS-2M fine-tuning
(§6.3), with the defaults of the registered model / task dataclasses (§2) filled in, as
``fairseq-hydra-train`` does. A template cfg (e.g. another checkpoint's) can replace recipe values.
The recipes are read from their one copy, the YAML files under ``config/`` (setup.py installs them with
the package as ``eat_plugin/recipes``). The model and task dataclasses are looked up in fairseq's
registries by name (importing ``eat_plugin`` registers them), so this module imports neither layer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from fairseq.dataclass.configs import FairseqConfig
from fairseq.dataclass.initialize import add_defaults
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.tasks import TASK_DATACLASS_REGISTRY
from omegaconf import DictConfig, OmegaConf

from eat_plugin.layout import PATCH_FRAMES


def checkpoint_cfg(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A fairseq checkpoint's ``cfg`` as a plain, resolved dict (enums as names)."""
    cfg = state.get("cfg")
    if cfg is None:
        raise ValueError("the checkpoint has no 'cfg' (a legacy 'args' checkpoint?); expected a fairseq "
                         "checkpoint of data2vec_multi or mae_image_classification")
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, enum_to_str=True)


def recipes_dir() -> Path:
    """The recipe folder: ``config/`` of the checkout, or the copy an installed package carries."""
    for candidate in (Path(__file__).resolve().parent.parent / "config", Path(__file__).resolve().parent / "recipes"):
        if (candidate / "pretraining" / "base.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"the official recipe files (config/pretraining/base.yaml, ...) are not next to "
                            f"{Path(__file__).resolve().parent}; reinstall eat-fairseq, or pass a template cfg")


def recipe_sections(kind: str, name: str) -> Dict[str, Any]:
    """``config/<kind>/<name>.yaml`` as plain cfg sections: a section given by name (``lr_scheduler:
    pass_through``) becomes ``{"_name": ...}``, mandatory values (``???``: paths) are left out."""
    path = recipes_dir() / kind / f"{name}.yaml"
    recipe = OmegaConf.load(path)
    sections = {}
    for section in recipe:
        value = recipe[section]
        if isinstance(value, str):
            sections[section] = {"_name": value}
        elif isinstance(value, DictConfig):
            sections[section] = {k: OmegaConf.to_container(value, resolve=False)[k] for k in value
                                 if not OmegaConf.is_missing(value, k)}
        else:
            sections[section] = value
    return sections


def official_pretraining_sections(large: bool = False) -> Dict[str, Any]:
    """The official EAT-base pre-training recipe (§6.1), or EAT-large's (§6.2): ``config/pretraining/``
    ``base.yaml`` / ``large.yaml``, the one copy of them."""
    sections = recipe_sections("pretraining", "large" if large else "base")
    sections["task"]["data"] = "data"
    return sections


def official_finetuning_sections() -> Dict[str, Any]:
    """The official AS-2M fine-tuning recipe (§6.3 + finetuning_AS2M.sh; ``config/finetuning/as2m.yaml``)
    without its data options (HDF5 rows, weighted sampling: the data of a converted checkpoint is the
    user's); ``model.pretrained_model_args`` is filled in later."""
    sections = recipe_sections("finetuning", "as2m")
    sections["task"].update(data="data", h5_format=False, weights_file="", AS2M_finetune=False)
    sections["model"]["model_path"] = ""
    return sections


_REGISTRIES = {"model": MODEL_DATACLASS_REGISTRY, "task": TASK_DATACLASS_REGISTRY}


def _over(sections: Dict[str, Any], template: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``template``'s sections over ``sections``: model and task merged key by key and restricted to the
    fields of the recipe's registered dataclass, the others replaced; ``None`` sections are skipped."""
    for name, value in (template or {}).items():
        if value is None or name not in FairseqConfig.__dataclass_fields__:
            continue
        if name in _REGISTRIES and isinstance(value, Mapping):
            fields = _REGISTRIES[name][sections[name]["_name"]].__dataclass_fields__
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
    sections = _over(sections, template)
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
    sections = _over(official_finetuning_sections(), template)
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
