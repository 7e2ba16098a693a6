"""The official implementation as the tests know it, from independent sources only.

* ``tests/data/official_config_fields.tsv``: every field of the four registered official dataclasses,
  declared type and default (a copy of reference §12). :func:`official_fields` reads it; field-name sets
  and defaults for the tests come from here, never from lists typed into a test.
* ``tests/data/official_recipes.yaml``: the official config files and script overrides (reference §6, §7).
* Official-format checkpoints written by hand from the spec (reference §2, §6, §9): every official config
  field (the table's defaults plus the official recipe's values), the §9.1 / §9.2 key lists and shapes,
  an ``_ema`` dict, enums stored as plain strings. EAT-base / EAT-large structure (12 blocks + 6-layer 3x3
  decoder / 24 blocks + 3-layer 5x5 decoder) at a small width.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

DATA = Path(__file__).resolve().parents[1] / "data"
FIELDS_TABLE = DATA / "official_config_fields.tsv"
RECIPES_TABLE = DATA / "official_recipes.yaml"

PRETRAINING_MODEL = "model:data2vec_multi"
CLASSIFIER_MODEL = "model:mae_image_classification"
PRETRAINING_TASK = "task:mae_image_pretraining"
CLASSIFICATION_TASK = "task:mae_image_classification"

# Our additions to the official dataclasses (not in the official code; its loaders drop unknown model keys,
# and the task keys are stored beside the official task section, see eat_plugin.checkpoint_cfg).
SEMANTIC_HEAD_FIELDS = ("num_machine_ids", "lambda_machine_id", "lambda_transform", "semantic_start_update",
                        "semantic_head_dropout", "semantic_label_smoothing", "semantic_lr_scale",
                        "transform_head_per_patch", "semantic_focal_gamma", "semantic_weighting")  # the machine-sound heads (design note 003)
CLASSIFIER_TRANSFORM_HEAD_FIELDS = ("lambda_transform", "transform_head_per_patch", "semantic_head_dropout",
                                    "semantic_label_smoothing", "semantic_lr_scale", "semantic_focal_gamma")
PLUGIN_FIELDS = {
    f"{PRETRAINING_MODEL}.cls_loss_scale", *(f"{PRETRAINING_MODEL}.{name}" for name in SEMANTIC_HEAD_FIELDS),
    f"{PRETRAINING_MODEL}.checkpoint_activations", f"{CLASSIFIER_MODEL}.checkpoint_activations",
    f"{PRETRAINING_MODEL}.torch_compile", f"{CLASSIFIER_MODEL}.torch_compile",
    f"{CLASSIFIER_MODEL}.multi_label", f"{CLASSIFIER_MODEL}.mixup_pairs", f"{CLASSIFIER_MODEL}.focal_gamma",
    f"{CLASSIFIER_MODEL}.focal_alpha", f"{CLASSIFIER_MODEL}.class_weights",
    *(f"{CLASSIFIER_MODEL}.{name}" for name in CLASSIFIER_TRANSFORM_HEAD_FIELDS),
    f"{PRETRAINING_TASK}.min_sample_size", f"{PRETRAINING_TASK}.norm_mean",
    f"{PRETRAINING_TASK}.norm_std", f"{PRETRAINING_TASK}.skip_bad_clips",
    f"{CLASSIFICATION_TASK}.min_sample_size", f"{CLASSIFICATION_TASK}.norm_mean",
    f"{CLASSIFICATION_TASK}.norm_std", f"{CLASSIFICATION_TASK}.skip_bad_clips",
    f"{CLASSIFICATION_TASK}.label_type",
    f"{PRETRAINING_TASK}.clip_cache_mb", f"{CLASSIFICATION_TASK}.clip_cache_mb",
}


def official_fields() -> Dict[str, Tuple[str, str]]:
    """``{"model:data2vec_multi.depth": ("int", "12"), ...}``: declared type and default, as written in the table."""
    rows = {}
    for line in FIELDS_TABLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, declared, default = line.split("\t")
            rows[key] = (declared, default)
    return rows


def official_default(text: str):
    """A default as the table writes it -> its value (enum members stay text: ``<Modality.IMAGE: 2>``)."""
    return ast.literal_eval(text) if not text.startswith("<") else text


def _children(keys, section: str, prefix: str) -> set:
    start = f"{section}.{prefix + '.' if prefix else ''}"
    return {key[len(start):].split(".")[0] for key in keys if key.startswith(start)}


def official_names(section: str, prefix: str = "") -> set:
    """The official field names directly under ``prefix`` of ``section`` (``"model:data2vec_multi"``,
    ``"modalities.image"``): a nested dataclass counts as one name at its own level."""
    return _children(official_fields(), section, prefix)


def plugin_names(section: str, prefix: str = "") -> set:
    """Our additions directly under ``prefix`` of ``section`` (see :data:`PLUGIN_FIELDS`)."""
    return _children(PLUGIN_FIELDS, section, prefix)


def official_defaults(section: str) -> dict:
    """``section``'s fields as a nested dict of the official defaults, as a checkpoint stores them (a float
    field's ``0`` as ``0.0``, as OmegaConf converts it); interpolations and enums as the table writes them."""
    tree: dict = {}
    for key, (declared, default) in official_fields().items():
        if key.startswith(section + "."):
            *parents, name = key[len(section) + 1:].split(".")
            node = tree
            for parent in parents:
                node = node.setdefault(parent, {})
            value = official_default(default)
            if declared in ("float", "Optional[float]") and type(value) is int:
                value = float(value)
            node[name] = value
    return tree


def official_recipes() -> dict:
    """tests/data/official_recipes.yaml: ``{"finetuning.yaml": {...}, "finetuning_ESC50.sh": {...}, ...}``."""
    return OmegaConf.to_container(OmegaConf.load(RECIPES_TABLE))


def deep_update(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in, nested dicts key by key (a new dict; the inputs are not modified)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ------------------------------------------------------------------ official-format checkpoints (spec)
D, HEADS, DECODER_DIM, GROUPS, TARGET_LENGTH, MAX_LENGTH, CLASSES = 64, 4, 64, 16, 128, 64, 527
STRUCTURES = {"base": (12, 6, 3), "large": (24, 3, 5)}  # depth, decoder layers, decoder kernel (§6.1 / §6.2)
ENC = "modality_encoders.IMAGE."
BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def official_pretraining_shapes(depth, decoder_layers, kernel):
    """§9.1, in its order: key -> shape (``_ema`` excluded)."""
    shapes = {ENC + "extra_tokens": (1, 1, D), ENC + "local_encoder.proj.weight": (D, 1, 16, 16),
              ENC + "local_encoder.proj.bias": (D,), ENC + "fixed_positional_encoder.positions": (1, MAX_LENGTH * 8, D),
              ENC + "context_encoder.norm.weight": (D,), ENC + "context_encoder.norm.bias": (D,)}
    for i in range(decoder_layers):  # grouped conv: in / groups channels per filter
        shapes[f"{ENC}decoder.blocks.{i}.0.weight"] = (DECODER_DIM, DECODER_DIM // GROUPS, kernel, kernel)
        shapes[f"{ENC}decoder.blocks.{i}.0.bias"] = (DECODER_DIM,)
    shapes[ENC + "decoder.proj.weight"], shapes[ENC + "decoder.proj.bias"] = (D, DECODER_DIM), (D,)
    block = {"attn.qkv": (3 * D, D), "attn.proj": (D, D), "mlp.fc1": (4 * D, D), "mlp.fc2": (D, 4 * D)}
    for i in range(depth):
        for name in BLOCK:
            shapes[f"blocks.{i}.{name}.weight"] = block.get(name, (D,))
            shapes[f"blocks.{i}.{name}.bias"] = (block[name][0],) if name in block else (D,)
    return shapes


def official_pretraining_keys(depth, decoder_layers):
    """§9.1 key list, written out on its own (not from :func:`official_pretraining_shapes`)."""
    keys = [ENC + k for k in ("extra_tokens", "local_encoder.proj.weight", "local_encoder.proj.bias",
                              "fixed_positional_encoder.positions", "context_encoder.norm.weight",
                              "context_encoder.norm.bias")]
    keys += [f"{ENC}decoder.blocks.{i}.0.{w}" for i in range(decoder_layers) for w in ("weight", "bias")]
    keys += [ENC + "decoder.proj.weight", ENC + "decoder.proj.bias"]
    keys += [f"blocks.{i}.{name}.{w}" for i in range(depth) for name in BLOCK for w in ("weight", "bias")]
    return keys + ["_ema"]


def official_finetuned_keys(depth):
    """§9.2: the backbone without decoder and teacher under ``model.``, then the head."""
    backbone = [k for k in official_pretraining_keys(depth, 0) if "decoder" not in k and k != "_ema"]
    return ["model." + k for k in backbone] + ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]


def official_model_cfg(structure):
    """The stored ``cfg.model`` of an official EAT-base / EAT-large pre-training run at width D: every field
    of the official table, its default unless the official recipe (§6.1 / §6.2) sets it, resolved."""
    depth, layers, kernel = STRUCTURES[structure]
    large = structure == "large"
    recipe = {  # §6.1 (§6.2 for large) at test width; interpolated defaults resolved as the trainer stores them
        "_name": "data2vec_multi", "depth": depth, "num_heads": HEADS, "embed_dim": D, "average_top_k_layers": depth,
        "clone_batch": 16, "ema_decay": 0.9998, "ema_end_decay": 0.99999,
        "ema_anneal_end_step": 150000 if large else 100000, "max_update": 400000, "seed": 1,
        "instance_norm_target_layer": True, "layer_norm_targets": True, "min_target_var": 0.0, "min_pred_var": 0.0,
        "encoder_dropout": 0.0, "post_mlp_drop": 0.0, "attention_dropout": 0.0, "supported_modality": "IMAGE",
        "cls_loss": 1.0, "ema_encoder_only": False,
        "modalities": {"image": {
            "type": "IMAGE", "in_chans": 1, "embed_dim": D, "target_length": TARGET_LENGTH, "max_length": MAX_LENGTH,
            "inverse_mask": True, "mask_prob": 0.75 if large else 0.8, "mask_prob_adjust": 0.1 if large else 0.07,
            "prenet_depth": 0, "ema_local_encoder": True, "num_extra_tokens": 1, "init_extra_token_zero": False,
            "num_alibi_heads": HEADS, "model_depth": depth,
            "decoder": {"decoder_dim": DECODER_DIM, "decoder_groups": GROUPS, "decoder_kernel": kernel,
                        "decoder_layers": layers, "input_dropout": 0.0},
        }},
    }
    return deep_update(official_defaults(PRETRAINING_MODEL), recipe)


def official_task_cfg(finetuning):
    """The stored ``cfg.task``: every official task field, its default unless the recipe sets it."""
    mask = None if finetuning else dict(patch_size=16, mask_prob=0.8, mask_prob_adjust=0.07, mask_length=5,
                                         inverse_mask=True, mask_dropout=0.0, clone_batch=16, expand_adjacent=False,
                                         non_overlapping=False)
    section = CLASSIFICATION_TASK if finetuning else PRETRAINING_TASK
    recipe = dict(_name=section.split(":")[1], data="data", key="imgs" if finetuning else "source",
                  precompute_mask_config=mask, seed=1, audio_mae=True, downsr_16hz=True, target_length=TARGET_LENGTH)
    return deep_update(official_defaults(section), recipe)


def official_pretraining_cfg(structure):
    lr = 0.0004 if structure == "large" else 0.0005
    return {
        "_name": None,
        "common": {"fp16": True, "log_format": "json", "log_interval": 200, "tensorboard_logdir": "tb",
                   "min_loss_scale": 1e-6, "fp16_no_flatten_grads": True, "user_dir": "EAT", "seed": 1},
        "checkpoint": {"save_dir": "checkpoints", "save_interval": 1, "save_interval_updates": 10000,
                       "keep_interval_updates": 1, "no_epoch_checkpoints": True},
        "dataset": {"num_workers": 10, "batch_size": 12, "skip_invalid_size_inputs_valid_test": True,
                    "required_batch_size_multiple": 1, "disable_validation": True},
        "distributed_training": {"distributed_world_size": 4, "ddp_backend": "c10d"},
        "criterion": {"_name": "model", "loss_weights": {}, "can_sum": True,
                      "log_keys": ["ema_decay", "target_var", "pred_var", "model_norm", "ema_norm", "masked_pct"]},
        "optimization": {"max_update": 400000, "lr": [lr], "debug_param_names": True, "clip_norm": 4.0},
        "optimizer": {"_name": "composite", "dynamic_groups": True, "groups": {"default": {
            "lr_float": lr, "optimizer": {"_name": "adam", "adam_betas": [0.9, 0.95], "weight_decay": 0.05},
            "lr_scheduler": {"_name": "cosine", "warmup_updates": 53333}}}},
        "lr_scheduler": {"_name": "pass_through"},
        "model": official_model_cfg(structure),
        "task": official_task_cfg(finetuning=False),
    }


def official_finetuned_cfg(structure):
    pretrained = official_pretraining_cfg(structure)
    pretrained.update(criterion=None, lr_scheduler=None)  # the official loader nulls these (§4.1)
    pretrained["model"]["drop_path_rate"] = 0.1  # ... and adds this
    recipe = dict(_name="mae_image_classification", model_path="pretrain/checkpoint_last.pt", num_classes=CLASSES,
                  mixup=0.7, mixup_prob=0.9, pretrained_model_args=pretrained, data="data",
                  prediction_mode="CLS_TOKEN", audio_mae=True, target_length=TARGET_LENGTH, specaug=True,
                  mask_ratio=0.2)  # §6.3
    cfg = official_pretraining_cfg(structure)
    cfg.update(model=deep_update(official_defaults(CLASSIFIER_MODEL), recipe), task=official_task_cfg(finetuning=True),
               criterion={"_name": "model", "loss_weights": {}, "log_keys": ["_predictions", "_targets"],
                          "can_sum": True},
               optimization={"max_update": 300000, "lr": [0.00005]})
    return cfg


def random_weights(shapes, seed):
    """Arbitrary values (norm weights around 1) so that a wrong key or transposition shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator) * (0.5 if "extra_tokens" in key or "positions" in key else 0.05)
        weights[key] = value + 1 if "norm" in key and key.endswith("weight") else value
    return weights


def official_checkpoint(structure, finetuned=False, seed=0):
    """An official-format checkpoint dict, as the official trainer saves it (minus optimizer state)."""
    depth, layers, kernel = STRUCTURES[structure]
    shapes = official_pretraining_shapes(depth, layers, kernel)
    if finetuned:
        shapes = {"model." + k: v for k, v in shapes.items() if "decoder" not in k}
        shapes.update({"fc_norm.weight": (D,), "fc_norm.bias": (D,), "head.weight": (CLASSES, D),
                       "head.bias": (CLASSES,)})
    weights = random_weights(shapes, seed)
    if not finetuned:  # teacher: the same keys without the decoder, different (EMA) values
        teacher = random_weights({k: v for k, v in shapes.items() if "decoder" not in k}, seed + 1)
        weights["_ema"] = teacher
    cfg = official_finetuned_cfg(structure) if finetuned else official_pretraining_cfg(structure)
    return {"args": None, "cfg": cfg, "model": weights, "criterion": None,
            "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqCompositeOptimizer",
                                   "lr_scheduler_state": {"default": {"best": None}}, "num_updates": 1000}],
            "task_state": {}, "extra_state": {"previous_training_time": 1.0}}


def reference_features(w, x, num_heads=HEADS, eps=1e-6, prefix=""):
    """An independent forward from raw weights (§3.2, §3.11, §9.3): patch conv -> + positions ->
    [CLS; patches] -> LayerNorm -> post-LN blocks. ``x`` (B, 1, T, 128) -> (B, 1 + N, D)."""
    p = lambda key: w[prefix + key]  # noqa: E731
    patches = F.conv2d(x, p(ENC + "local_encoder.proj.weight"), p(ENC + "local_encoder.proj.bias"), stride=16)
    patches = patches.flatten(2).transpose(1, 2)  # (B, N, D), time-major
    patches = patches + p(ENC + "fixed_positional_encoder.positions")[:, :patches.size(1)]
    h = torch.cat([p(ENC + "extra_tokens").expand(x.size(0), -1, -1), patches], dim=1)  # (B, 1 + N, D)
    dim = h.size(-1)
    h = F.layer_norm(h, (dim,), p(ENC + "context_encoder.norm.weight"), p(ENC + "context_encoder.norm.bias"), eps)
    i = 0
    while f"{prefix}blocks.{i}.norm1.weight" in w:
        b = lambda name: (p(f"blocks.{i}.{name}.weight"), p(f"blocks.{i}.{name}.bias"))  # noqa: E731
        B, N, _ = h.shape
        q, k, v = F.linear(h, *b("attn.qkv")).view(B, N, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) * (dim // num_heads) ** -0.5, dim=-1) @ v  # (B, H, N, Dh)
        attn = F.linear(attn.transpose(1, 2).reshape(B, N, dim), *b("attn.proj"))  # (B, N, D)
        h = F.layer_norm(h + attn, (dim,), *b("norm1"), eps)
        ffn = F.linear(F.gelu(F.linear(h, *b("mlp.fc1"))), *b("mlp.fc2"))
        h = F.layer_norm(h + ffn, (dim,), *b("norm2"), eps)
        i += 1
    return h


def write_class_table(directory: Path, num_classes=CLASSES) -> Path:
    """``directory/label_descriptors.csv`` in AudioSet's layout (with its header): ids ``/m/c{i}``."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = "".join(f'{i},/m/c{i},"class {i}"\n' for i in range(num_classes))
    (directory / "label_descriptors.csv").write_text("index,mid,display_name\n" + rows)
    return directory


def clips(n=2, seed=0, target_length=TARGET_LENGTH):
    """``(n, 1, target_length, 128)`` random spectrograms."""
    return torch.randn(n, 1, target_length, 128, generator=torch.Generator().manual_seed(seed))
