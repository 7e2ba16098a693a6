"""Conversion between fairseq EAT checkpoints and the Hugging Face layout of the released models.

A Hugging Face model folder (reference §9.3; that remote code is not in the official repository, so
the layout is unverified) holds ``config.json`` (``EATConfig`` fields, ``model_type: "eat"``) and
``model.safetensors`` (or ``pytorch_model.bin``) with the state dict of ``EATModel``, which keeps
``self.model = EAT(config)``. Key for key:

    HF                                            fairseq (reference §9.1 / §9.2)
    model.extra_tokens                            modality_encoders.IMAGE.extra_tokens
    model.local_encoder.proj.{weight,bias}        modality_encoders.IMAGE.local_encoder.proj.*
    model.fixed_positional_encoder.positions      modality_encoders.IMAGE.fixed_positional_encoder.positions
    model.pre_norm.{weight,bias}                  modality_encoders.IMAGE.context_encoder.norm.*
    model.blocks.{i}.<same names>                 blocks.{i}.*        (fine-tuned: model.blocks.{i}.*)
    model.fc_norm.*, model.head.*  (fine-tuned)   fc_norm.*, head.*

``fc_norm`` and ``head`` are attributes of ``EAT`` in §9.3, so they are written under ``model.``;
top-level ``fc_norm.*`` / ``head.*`` are accepted on input. The fine-tuned HF model pools the CLS token
(``head(fc_norm(x[:, 0]))``); its ``fc_norm`` eps (1e-5 in the third-party copy) is not in the config,
fairseq's is 1e-6.

Decisions:

* fairseq -> HF keeps the student encoder (what official feature extraction uses) and drops the
  pre-training parts: CNN decoder, EMA teacher (``_ema``), ``recon_proj`` / ``cls_proj`` / ``center``.
* HF -> fairseq, pre-trained: ``data2vec_multi`` loads strictly, with its decoder and ``_ema``
  teacher, which an HF model does not have. The result is a complete pre-training checkpoint whose
  decoder is freshly initialised (seeded) and whose teacher is a copy of the student; this is logged.
  It is what fine-tuning needs (``model.model_path``; decoder and teacher are discarded there) and
  can resume pre-training (the decoder then starts from scratch).
* HF -> fairseq, fine-tuned: a ``mae_image_classification`` checkpoint whose
  ``cfg.model.pretrained_model_args`` holds the pre-training cfg, so it loads without a pre-training
  file. The classification task reads ``{data}/label_descriptors.csv`` (num_classes rows): load with
  ``checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": <dir>})``.
* Config values the HF config does not carry come from ``template_cfg`` (a fairseq cfg) or the
  official recipes: EAT-base (§6.1, §6.3), EAT-large (§6.2) for a 1024-wide, 24-deep model
  (``eat_plugin.official_configs``).

Weights files use the safetensors format (``eat_plugin.safetensors_io``, no extra dependency).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from eat_plugin.checkpoint_cfg import to_official_layout
from eat_plugin.checkpoint import load_checkpoint
from eat_plugin.layout import NUM_MEL_BINS, PATCH_FRAMES, check_target_length
from eat_plugin.data.manifest import read_label_descriptors, write_label_descriptors
from eat_plugin.models.data2vec_multi import Data2VecMultiModel
from eat_plugin.models.keys import ENCODER, FINETUNED_PREFIX, POSITIONS, pretraining_only_part, upgrade_legacy_keys
from eat_plugin.models.mae_image_classification import backbone_config, classifier_config
from eat_plugin.models.pretraining_config import check_supported, config_from_dict
from eat_plugin.official_fields import PRETRAINING, REFUSED
from eat_plugin.official_configs import checkpoint_cfg, finetuning_cfg, pretraining_cfg, split_template
from eat_plugin.safetensors_io import load_safetensors, save_safetensors

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# ---------------------------------------------------------------------------------------------------
# key names and shapes

_ENCODER_KEYS = {  # fairseq backbone key -> HF key, in the official checkpoint order
    ENCODER + "extra_tokens": "model.extra_tokens",
    ENCODER + "local_encoder.proj.weight": "model.local_encoder.proj.weight",
    ENCODER + "local_encoder.proj.bias": "model.local_encoder.proj.bias",
    POSITIONS: "model.fixed_positional_encoder.positions",
    ENCODER + "context_encoder.norm.weight": "model.pre_norm.weight",
    ENCODER + "context_encoder.norm.bias": "model.pre_norm.bias",
}
BLOCK_PARAMS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                "mlp.fc2.weight", "mlp.fc2.bias")
HEAD_PARAMS = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")


def key_map(depth: int, finetuned: bool) -> Dict[str, str]:
    """fairseq state-dict key -> HF key, for every weight the HF model has."""
    names = dict(_ENCODER_KEYS)
    names.update({f"blocks.{i}.{p}": f"model.blocks.{i}.{p}" for i in range(depth) for p in BLOCK_PARAMS})
    if not finetuned:
        return names
    names = {FINETUNED_PREFIX + k: v for k, v in names.items()}  # the classifier holds the backbone at `model`
    names.update({p: f"model.{p}" for p in HEAD_PARAMS})
    return names


def hf_shapes(config: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
    """HF key -> shape for a (checked) EATConfig dict. D width, P = max_length * 8 position rows."""
    d, patch = config["embed_dim"], config["patch_size"]
    hidden = int(d * config["mlp_ratio"])
    shapes = {
        "model.extra_tokens": (1, 1, d),
        "model.local_encoder.proj.weight": (d, config["in_chans"], patch, patch),
        "model.local_encoder.proj.bias": (d,),
        "model.fixed_positional_encoder.positions": (1, config["max_length"] * (config["mel_bins"] // patch), d),
        "model.pre_norm.weight": (d,),
        "model.pre_norm.bias": (d,),
    }
    block = {"attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d),
             "mlp.fc1.weight": (hidden, d), "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (d, hidden)}
    for i in range(config["depth"]):
        shapes.update({f"model.blocks.{i}.{p}": block.get(p, (d,)) for p in BLOCK_PARAMS})
    if config["model_variant"] == "finetune":
        c = config["num_classes"]
        shapes.update({"model.fc_norm.weight": (d,), "model.fc_norm.bias": (d,), "model.head.weight": (c, d),
                       "model.head.bias": (c,)})
    return shapes


def check_weights(weights: Mapping[str, Any], expected: Mapping[str, Tuple[int, ...]], source: str) -> None:
    """Raise ``ValueError`` listing missing keys, unexpected keys and wrong shapes of ``weights``."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k}: {tuple(weights[k].shape)}, expected {expected[k]}" for k in expected
              if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(expected[k])]
    problems = [f"{what} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else "")
                for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", shapes)) if items]
    if problems:
        raise ValueError(f"{source} does not match the EAT layout:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------------------
# EATConfig (config.json)

EAT_CONFIG_DEFAULTS: Dict[str, Any] = {  # EATConfig defaults (reference §9.3)
    "model_type": "eat", "embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, "stride": 16,
    "in_chans": 1, "mel_bins": 128, "max_length": 768, "num_classes": 527, "model_variant": "pretrain",
    "mlp_ratio": 4.0, "qkv_bias": True, "drop_rate": 0.0, "attn_drop_rate": 0.0, "activation_dropout": 0.0,
    "post_mlp_drop": 0.0, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "layer_norm_first": False,
    "norm_eps": 1e-6, "norm_affine": True, "fixed_positions": True, "img_size": [1024, 128],
}


def _only_value(path: str) -> Any:
    """The one value ``official_fields.REFUSED`` accepts for the pre-training model field ``path``."""
    (value,) = REFUSED[f"{PRETRAINING}.{path}"].accepted
    return value


# The only values EAT (and this implementation) has: the ones that are fairseq fields come from the table of
# refused fields; stride, mel bins, qkv bias and affine norms are HF-only options of the remote code.
_FIXED = {"model_type": "eat", "patch_size": _only_value("modalities.image.patch_size"), "stride": PATCH_FRAMES,
          "in_chans": _only_value("modalities.image.in_chans"), "mel_bins": NUM_MEL_BINS, "qkv_bias": True,
          "layer_norm_first": _only_value("layer_norm_first"), "norm_affine": True,
          "fixed_positions": _only_value("modalities.image.fixed_positions")}
_REMOTE_CODE = {"architectures": ["EATModel"],  # class names of the HF repos' remote code (§9.3)
                "auto_map": {"AutoConfig": "configuration_eat.EATConfig", "AutoModel": "modeling_eat.EATModel"}}
VARIANTS = ("pretrain", "finetune")


def eat_config(values: Mapping[str, Any]) -> Dict[str, Any]:
    """A complete EATConfig dict: ``values`` over the defaults, checked; other keys are kept as they are."""
    config = {**EAT_CONFIG_DEFAULTS, **values}
    problems = [f"{k}={config[k]!r} (supported: {v!r})" for k, v in _FIXED.items() if config[k] != v]
    if config["model_variant"] not in VARIANTS:
        problems.append(f"model_variant={config['model_variant']!r} (expected one of {VARIANTS})")
    img_size = list(config["img_size"]) if isinstance(config["img_size"], (list, tuple)) else []
    if len(img_size) != 2 or img_size[1] != NUM_MEL_BINS:
        problems.append(f"img_size={config['img_size']!r} (expected [target_length, {NUM_MEL_BINS}])")
    else:
        try:
            check_target_length(img_size[0], "img_size[0]")
        except ValueError as err:
            problems.append(str(err))
    for key in ("embed_dim", "depth", "num_heads", "max_length", "num_classes"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] <= 0:
            problems.append(f"{key}={config[key]!r} (expected a positive integer)")
    if not problems and (config["embed_dim"] % config["num_heads"] or config["embed_dim"] % 4):
        problems.append(f"embed_dim={config['embed_dim']} must be divisible by num_heads={config['num_heads']} and 4")
    if problems:
        raise ValueError("unsupported EAT config (config.json):\n  " + "\n  ".join(problems))
    return {**config, "img_size": [int(n) for n in img_size]}


# ---------------------------------------------------------------------------------------------------
# fairseq -> HF

def _source_backbone(cfg: Mapping[str, Any]) -> Tuple[bool, Any]:
    """``(finetuned, backbone Data2VecMultiConfig)`` of a checkpoint cfg; refuses what HF cannot express."""
    model = cfg.get("model") or {}
    name = model.get("_name")
    if name == "data2vec_multi":
        finetuned, backbone = False, config_from_dict(model)
    elif name == "mae_image_classification":
        classifier = classifier_config(model)
        if classifier.pretrained_model_args is None:
            raise ValueError("the fine-tuned checkpoint has no cfg.model.pretrained_model_args "
                             "(the pre-training config)")
        problems = [] if classifier.use_fc_norm else ["model.use_fc_norm=false (the HF model always has fc_norm)"]
        if classifier.prediction_mode.name != "CLS_TOKEN":
            mode = classifier.prediction_mode.name
            problems.append(f"model.prediction_mode={mode} (the HF model pools the CLS token)")
        if problems:
            raise ValueError("this fine-tuned model cannot be expressed in the HF layout:\n  " + "\n  ".join(problems))
        finetuned, backbone = True, backbone_config(classifier, classifier.pretrained_model_args)
    else:
        raise ValueError(f"cfg.model._name={name!r}: expected 'data2vec_multi' or 'mae_image_classification'")
    check_supported(backbone)
    image = backbone.modalities.image
    problems = [f"model.modalities.image.{k}={v!r} (HF EAT has {want!r})" for k, v, want in (
        ("num_extra_tokens", image.num_extra_tokens, 1), ("prenet_depth", image.prenet_depth, 0)) if v != want]
    if not backbone.norm_affine:
        problems.append("model.norm_affine=false (HF EAT has affine LayerNorms)")
    if problems:
        raise ValueError("this model cannot be expressed in the HF layout:\n  " + "\n  ".join(problems))
    return finetuned, backbone


def _without_pretraining_parts(weights: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """Drop decoder / teacher / pre-training heads (logged); rename the legacy positions key."""
    kept, dropped = {}, {}
    for key, value in weights.items():
        part = pretraining_only_part(key[len(prefix):] if key.startswith(prefix) else key)
        if part is None:
            kept[key] = value
        else:
            dropped[part] = dropped.get(part, 0) + 1
    upgrade_legacy_keys(kept, prefix)
    if dropped:
        parts = ", ".join(f"{part.rstrip('.')}{'*' if part.endswith('.') else ''} ({n} tensors)" if n > 1 else part
                          for part, n in dropped.items())
        logger.info(f"dropped, not in the HF model (training-only parts): {parts}")
    return kept


def fairseq_to_hf(state: Mapping[str, Any]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """fairseq checkpoint dict -> ``(HF state dict, EATConfig dict)``.

    Pre-trained (``data2vec_multi``): the student encoder (decoder, ``_ema`` dropped). Fine-tuned
    (``mae_image_classification``): backbone + ``fc_norm`` + ``head``. Tensors are not copied.
    """
    finetuned, backbone = _source_backbone(checkpoint_cfg(state))
    weights = _without_pretraining_parts(state["model"], FINETUNED_PREFIX if finetuned else "")
    head = weights.get("head.weight")
    num_classes = int(head.shape[0]) if finetuned and head is not None else EAT_CONFIG_DEFAULTS["num_classes"]
    image = backbone.modalities.image
    config = eat_config({
        "embed_dim": backbone.embed_dim, "depth": backbone.depth, "num_heads": backbone.num_heads,
        "max_length": image.max_length, "num_classes": num_classes, "model_variant": VARIANTS[finetuned],
        "mlp_ratio": float(backbone.mlp_ratio), "norm_eps": float(backbone.norm_eps),
        "img_size": [image.target_length, NUM_MEL_BINS],
    })
    mapping = key_map(backbone.depth, finetuned)
    shapes = hf_shapes(config)
    check_weights(weights, {k: shapes[v] for k, v in mapping.items()}, "the fairseq checkpoint")
    dtype = weights[next(iter(mapping))].dtype
    config = {**_REMOTE_CODE, **config, "torch_dtype": str(dtype).replace("torch.", "")}
    return {hf: weights[fs] for fs, hf in mapping.items()}, config

# ---------------------------------------------------------------------------------------------------
# HF -> fairseq: checkpoints


def _hf_aliases(hf_state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Accept ``fc_norm.*`` / ``head.*`` at the top level as well as under ``model.``."""
    return {f"model.{k}" if k in HEAD_PARAMS else k: v for k, v in hf_state.items()}


def _checkpoint(cfg: Dict[str, Any], weights: Dict[str, Any], task_state: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint dict in the layout fairseq's trainer writes (no optimizer state, update 0), with the
    official config layout (``checkpoint_cfg``: plugin task fields beside the task config)."""
    return to_official_layout({
        "args": None, "cfg": cfg, "model": weights, "criterion": None,
        "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqCompositeOptimizer",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "task_state": task_state, "extra_state": {}})


def _pretraining_checkpoint(student: Dict[str, Tensor], cfg: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """Student weights + a fresh decoder (seeded) + teacher = student, checked by a strict load."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Data2VecMultiModel(config_from_dict(cfg["model"]))
    fresh = model.state_dict()
    weights = {k: student.get(k, v) for k, v in fresh.items() if k != "_ema"}
    weights["_ema"] = {k: student[k].detach().float().clone() for k in fresh["_ema"]}
    model.load_state_dict(weights, strict=True)
    logger.warning(f"the HF model has no decoder and no EMA teacher: the CNN decoder is freshly initialised "
                   f"(seed {seed}) and the teacher (_ema) is a copy of the student weights")
    return _checkpoint(cfg, weights, {})


def hf_to_fairseq(hf_state: Mapping[str, Tensor], hf_config: Mapping[str, Any], template_cfg: Any = None, *,
                  data: Optional[str] = None, label_ids: Optional[Sequence[str]] = None,
                  seed: int = 1) -> Dict[str, Any]:
    """HF state dict + EATConfig -> fairseq checkpoint dict (``torch.save`` it).

    Args:
        template_cfg: a fairseq cfg (dict / DictConfig) giving the values the EATConfig does not carry;
            default: the official recipes (module docstring).
        data: ``task.data`` to store (default: the template's, else the placeholder ``"data"``).
        label_ids: fine-tuned only: label id of each class, stored as the task state (official layout).
        seed: initialisation seed of a pre-trained model's fresh decoder.
    """
    config = eat_config(hf_config)
    finetuned = config["model_variant"] == "finetune"
    weights = _hf_aliases(hf_state)
    check_weights(weights, hf_shapes(config), "the Hugging Face state dict")
    fairseq_weights = {fs: weights[hf] for fs, hf in key_map(config["depth"], finetuned).items()}
    pre_template, ft_template = split_template(template_cfg)
    pretraining = pretraining_cfg(config, pre_template, data)
    if not finetuned:
        if label_ids is not None:
            raise ValueError("labels apply to fine-tuned models only (this config.json has model_variant 'pretrain')")
        return _pretraining_checkpoint(fairseq_weights, pretraining, seed)
    task_state = {}
    if label_ids is not None:
        if len(label_ids) != config["num_classes"]:
            raise ValueError(f"{len(label_ids)} labels given but the model has {config['num_classes']} classes")
        task_state = {"labels": {label: str(i) for i, label in enumerate(label_ids)}}
    return _checkpoint(finetuning_cfg(config, pretraining, ft_template, data), fairseq_weights, task_state)


# ---------------------------------------------------------------------------------------------------
# files


def save_hf(directory: PathLike, hf_state: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (metadata ``format: pt``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(hf_state, directory / "model.safetensors", {"format": "pt"})
    (directory / "config.json").write_text(json.dumps(dict(hf_config), indent=2, sort_keys=True) + "\n")
    return directory


def load_hf(directory: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Read an HF model folder: ``config.json`` + ``model.safetensors`` (or its sharded index, or
    ``pytorch_model.bin``, loaded with ``weights_only``)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json; expected a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    if (directory / "model.safetensors").is_file():
        return load_safetensors(directory / "model.safetensors"), config
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weights = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            weights.update(load_safetensors(directory / shard))
        return weights, config
    if (directory / "pytorch_model.bin").is_file():
        weights = load_checkpoint(directory / "pytorch_model.bin")
        bad = [k for k, v in weights.items() if not isinstance(v, Tensor)]
        if bad:
            raise ValueError(f"{directory / 'pytorch_model.bin'}: not a state dict (non-tensor entries {bad[:5]})")
        return weights, config
    raise FileNotFoundError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def install_class_table(labels_csv: PathLike, directory: PathLike, num_classes: int) -> Tuple[Path, List[str]]:
    """Check a class table (``index,id,name``, e.g. AudioSet's ``class_labels_indices.csv`` with its header
    row) against the model and write it as ``directory/label_descriptors.csv`` in the one format
    (``data.manifest.write_label_descriptors``); returns the path and the label ids."""
    descriptors = read_label_descriptors(labels_csv)
    if len(descriptors.ids) != num_classes:
        raise ValueError(f"{labels_csv}: {len(descriptors.ids)} classes, but the model has {num_classes} outputs")
    path = Path(directory) / "label_descriptors.csv"
    write_label_descriptors(path, descriptors.ids, descriptors.names)
    return path, list(descriptors.ids)
