"""Checkpoint interchange with the official implementation, from the spec (eat_reference.md §2, §6, §9).

Fixtures are official-format checkpoints written by hand from the reference: every official config
field, the §9.1 / §9.2 key lists and shapes, an ``_ema`` dict, enums stored as plain strings, saved
with ``torch.save``. They use the official EAT-base / EAT-large structure (12 blocks + 6-layer 3x3
decoder / 24 blocks + 3-layer 5x5 decoder) at a small width. Conversely, a checkpoint written the way
``fairseq-hydra-train`` writes it must use only official key and field names.
"""

import warnings
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils, tasks, utils
from fairseq.dataclass.initialize import add_defaults, hydra_init
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import REPO
from eat_plugin.models.data2vec_multi import Data2VecMultiModel
from eat_plugin.models.mae_image_classification import MaeImageClassificationConfig, MaeImageClassificationModel
from eat_plugin.models.pretraining_config import config_from_dict

D, HEADS, DECODER_DIM, GROUPS, TARGET_LENGTH, MAX_LENGTH, CLASSES = 64, 4, 64, 16, 128, 64, 527
STRUCTURES = {"base": (12, 6, 3), "large": (24, 3, 5)}  # depth, decoder layers, decoder kernel (§6.1 / §6.2)
ENC = "modality_encoders.IMAGE."
BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")

# ------------------------------------------------------------------ official field names (§2.1-2.7)
MODEL_FIELDS = """loss_beta loss_scale depth start_drop_path_rate end_drop_path_rate num_heads norm_eps norm_affine
encoder_dropout post_mlp_drop attention_dropout activation_dropout dropout_input layerdrop embed_dim mlp_ratio
layer_norm_first average_top_k_layers end_of_block_targets clone_batch layer_norm_target_layer batch_norm_target_layer
instance_norm_target_layer instance_norm_targets layer_norm_targets ema_decay ema_same_dtype log_norms ema_end_decay
ema_anneal_end_step ema_encoder_only max_update modalities shared_decoder min_target_var min_pred_var
supported_modality mae_init seed skip_ema cls_loss recon_loss d2v_loss decoder_group utterance_level
init_center_token_zero center_exp softmax_temperature_student softmax_temperature_teacher""".split()
IMAGE_FIELDS = """type prenet_depth prenet_layerdrop prenet_dropout start_drop_path_rate end_drop_path_rate
num_extra_tokens init_extra_token_zero mask_noise_std mask_prob_min mask_prob inverse_mask mask_prob_adjust
keep_masked_pct mask_length add_masks remove_masks mask_dropout encoder_zero_mask mask_channel_prob
mask_channel_length ema_local_encoder local_grad_mult use_alibi_encoder alibi_scale learned_alibi alibi_max_pos
learned_alibi_scale learned_alibi_scale_per_head learned_alibi_scale_per_layer num_alibi_heads model_depth decoder
input_size in_chans patch_size embed_dim alibi_dims alibi_distance fixed_positions transformer_decoder
enc_dec_transformer target_length max_length""".split()
DECODER_FIELDS = """decoder_dim decoder_groups decoder_kernel decoder_layers input_dropout add_positions_masked
add_positions_all decoder_residual projection_layers projection_ratio""".split()
CLASSIFIER_FIELDS = """model_path no_pretrained_weights linear_classifier num_classes mixup cutmix label_smoothing
drop_path_rate layer_decay mixup_prob mixup_switch_prob mixup_mode pretrained_model_args data norm_eps remove_alibi
encoder_dropout post_mlp_drop attention_dropout activation_dropout dropout_input layerdrop prenet_layerdrop
prenet_dropout use_fc_norm prediction_mode no_decay_blocks audio_mae esc50_eval spcv2_eval target_length specaug
freqm timem mask_ratio""".split()
PRETRAIN_TASK_FIELDS = """data multi_data input_size local_cache_path key beit_transforms target_transform no_transform
rebuild_batches precompute_mask_config subsample seed dataset_type audio_mae h5_format downsr_16hz target_length
flexible_mask esc50_eval spcv2_eval AS2M_finetune spcv1_finetune roll_aug noise weights_file num_samples
is_finetuning""".split()
CLASSIFICATION_TASK_FIELDS = PRETRAIN_TASK_FIELDS + ["label_descriptors", "labels"]
OUR_TASK_ADDITIONS = {"min_sample_size", "norm_mean", "norm_std", "skip_bad_clips"}  # documented eat_plugin additions
OUR_CLASSIFICATION_TASK_ADDITIONS = {"label_type"}
OUR_CLASSIFIER_ADDITIONS = {"multi_label", "mixup_pairs"}
OUR_MODEL_ADDITIONS = {"cls_loss_scale"}


# ------------------------------------------------------------------ official key names and shapes (§9.1 / §9.2)
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
    keys = [ENC + k for k in ("extra_tokens", "local_encoder.proj.weight", "local_encoder.proj.bias",
                              "fixed_positional_encoder.positions", "context_encoder.norm.weight",
                              "context_encoder.norm.bias")]
    keys += [f"{ENC}decoder.blocks.{i}.0.{w}" for i in range(decoder_layers) for w in ("weight", "bias")]
    keys += [ENC + "decoder.proj.weight", ENC + "decoder.proj.bias"]
    keys += [f"blocks.{i}.{name}.{w}" for i in range(depth) for name in BLOCK for w in ("weight", "bias")]
    return keys + ["_ema"]


def official_finetuned_keys(depth):
    backbone = [k for k in official_pretraining_keys(depth, 0) if "decoder" not in k and k != "_ema"]
    return ["model." + k for k in backbone] + ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]


# ------------------------------------------------------------------ official configs (§2 defaults, §6 recipes)
def official_model_cfg(structure):
    depth, layers, kernel = STRUCTURES[structure]
    large = structure == "large"
    decoder = dict(decoder_dim=DECODER_DIM, decoder_groups=GROUPS, decoder_kernel=kernel, decoder_layers=layers,
                   input_dropout=0.0, add_positions_masked=False, add_positions_all=False, decoder_residual=True,
                   projection_layers=1, projection_ratio=2.0)
    image = dict(type="IMAGE", prenet_depth=0, prenet_layerdrop=0.0, prenet_dropout=0.0, start_drop_path_rate=0.0,
                 end_drop_path_rate=0.0, num_extra_tokens=1, init_extra_token_zero=False, mask_noise_std=0.01,
                 mask_prob_min=None, mask_prob=0.75 if large else 0.8, inverse_mask=True,
                 mask_prob_adjust=0.1 if large else 0.07, keep_masked_pct=0.0, mask_length=5, add_masks=False,
                 remove_masks=False, mask_dropout=0.0, encoder_zero_mask=True, mask_channel_prob=0.0,
                 mask_channel_length=64, ema_local_encoder=True, local_grad_mult=1.0, use_alibi_encoder=False,
                 alibi_scale=1.0, learned_alibi=False, alibi_max_pos=None, learned_alibi_scale=False,
                 learned_alibi_scale_per_head=False, learned_alibi_scale_per_layer=False, num_alibi_heads=HEADS,
                 model_depth=depth, decoder=decoder, input_size=224, in_chans=1, patch_size=16, embed_dim=D,
                 alibi_dims=2, alibi_distance="manhattan", fixed_positions=True, transformer_decoder=False,
                 enc_dec_transformer=False, target_length=TARGET_LENGTH, max_length=MAX_LENGTH)
    return dict(_name="data2vec_multi", loss_beta=0.0, loss_scale=None, depth=depth, start_drop_path_rate=0.0,
                end_drop_path_rate=0.0, num_heads=HEADS, norm_eps=1e-6, norm_affine=True, encoder_dropout=0.0,
                post_mlp_drop=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, layerdrop=0.0,
                embed_dim=D, mlp_ratio=4.0, layer_norm_first=False, average_top_k_layers=depth,
                end_of_block_targets=False, clone_batch=16, layer_norm_target_layer=False,
                batch_norm_target_layer=False, instance_norm_target_layer=True, instance_norm_targets=False,
                layer_norm_targets=True, ema_decay=0.9998, ema_same_dtype=True, log_norms=True, ema_end_decay=0.99999,
                ema_anneal_end_step=150000 if large else 100000, ema_encoder_only=False, max_update=400000,
                modalities={"_name": None, "image": image}, shared_decoder=None, min_target_var=0.0,
                min_pred_var=0.0, supported_modality="IMAGE", mae_init=False, seed=1, skip_ema=False, cls_loss=1.0,
                recon_loss=0.0, d2v_loss=1.0, decoder_group=False, utterance_level=False,
                init_center_token_zero=False, center_exp=0.9, softmax_temperature_student=0.1,
                softmax_temperature_teacher=0.05)


def official_task_cfg(finetuning):
    mask = None if finetuning else dict(patch_size=16, mask_prob=0.8, mask_prob_adjust=0.07, mask_length=5,
                                         inverse_mask=True, mask_dropout=0.0, clone_batch=16, expand_adjacent=False,
                                         non_overlapping=False)
    task = dict(_name="mae_image_classification" if finetuning else "mae_image_pretraining", data="data",
                multi_data=None, input_size=224, local_cache_path=None, key="imgs" if finetuning else "source",
                beit_transforms=False, target_transform=False, no_transform=False, rebuild_batches=True,
                precompute_mask_config=mask, subsample=1.0, seed=1, dataset_type="imagefolder", audio_mae=True,
                h5_format=False, downsr_16hz=True, target_length=TARGET_LENGTH, flexible_mask=False, esc50_eval=False,
                spcv2_eval=False, AS2M_finetune=False, spcv1_finetune=False, roll_aug=False, noise=False,
                weights_file="", num_samples=200000, is_finetuning=False)
    if finetuning:
        task.update(label_descriptors="label_descriptors.csv", labels="lbl")
    return task


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
    model = dict(_name="mae_image_classification", model_path="pretrain/checkpoint_last.pt",
                 no_pretrained_weights=False, linear_classifier=False, num_classes=CLASSES, mixup=0.7, cutmix=0.0,
                 label_smoothing=0.0, drop_path_rate=0.1, layer_decay=0.65, mixup_prob=0.9, mixup_switch_prob=0.0,
                 mixup_mode="batch", pretrained_model_args=pretrained, data="data", norm_eps=None, remove_alibi=False,
                 encoder_dropout=0.0, post_mlp_drop=0.0, attention_dropout=0.0, activation_dropout=0.0,
                 dropout_input=0.0, layerdrop=0.0, prenet_layerdrop=0.0, prenet_dropout=0.0, use_fc_norm=True,
                 prediction_mode="CLS_TOKEN", no_decay_blocks=True, audio_mae=True, esc50_eval=False,
                 spcv2_eval=False, target_length=TARGET_LENGTH, specaug=True, freqm=25, timem=200, mask_ratio=0.2)
    cfg = official_pretraining_cfg(structure)
    cfg.update(model=model, task=official_task_cfg(finetuning=True),
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


# ------------------------------------------------------------------ an independent forward (§3.2, §3.11, §9.3)
def reference_features(w, x, num_heads=HEADS, eps=1e-6, prefix=""):
    """Patch conv -> + positions -> [CLS; patches] -> LayerNorm -> post-LN blocks, from raw weights.

    ``x`` (B, 1, T, 128) -> (B, 1 + N, D).
    """
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


def load_with_fairseq(path, **overrides):
    utils.import_user_module(Namespace(user_dir=str(REPO / "eat_plugin")))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides or None)
    return models[0].eval(), cfg, task


def write_label_descriptors(directory, num_classes=CLASSES):
    directory.mkdir(parents=True, exist_ok=True)
    rows = "".join(f'{i},/m/c{i},"class {i}"\n' for i in range(num_classes))
    (directory / "label_descriptors.csv").write_text("index,mid,display_name\n" + rows)
    return directory


def clips(n=2, seed=0):
    return torch.randn(n, 1, TARGET_LENGTH, 128, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_fixture_and_our_models_have_the_spec_keys(structure):
    depth, layers, _ = STRUCTURES[structure]
    state = official_checkpoint(structure)
    expected = official_pretraining_keys(depth, layers)
    assert list(state["model"]) == expected
    assert list(state["model"]["_ema"]) == [k for k in expected if "decoder" not in k and k != "_ema"]
    ours = Data2VecMultiModel(config_from_dict(state["cfg"]["model"])).state_dict()
    assert set(ours) == set(expected) and set(ours["_ema"]) == set(state["model"]["_ema"])
    assert {k: tuple(v.shape) for k, v in ours.items() if k != "_ema"} == {
        k: tuple(v.shape) for k, v in state["model"].items() if k != "_ema"}
    finetuned = official_checkpoint(structure, finetuned=True)
    assert list(finetuned["model"]) == official_finetuned_keys(depth)


def test_fixture_configs_have_every_official_field():
    cfg = official_finetuned_cfg("base")
    pre = cfg["model"]["pretrained_model_args"]
    assert set(pre["model"]) == set(MODEL_FIELDS) | {"_name", "drop_path_rate"}
    assert set(pre["model"]["modalities"]["image"]) == set(IMAGE_FIELDS)
    assert set(pre["model"]["modalities"]["image"]["decoder"]) == set(DECODER_FIELDS)
    assert set(pre["task"]) == set(PRETRAIN_TASK_FIELDS) | {"_name"}
    assert set(cfg["model"]) == set(CLASSIFIER_FIELDS) | {"_name"}
    assert set(cfg["task"]) == set(CLASSIFICATION_TASK_FIELDS) | {"_name"}


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_official_pretraining_checkpoint_loads_through_fairseq(tmp_path, structure):
    state = official_checkpoint(structure, seed=3)
    torch.save(state, tmp_path / "checkpoint_last.pt")
    model, cfg, task = load_with_fairseq(tmp_path / "checkpoint_last.pt", data=str(tmp_path))
    assert type(model).__name__ == "Data2VecMultiModel" and type(task).__name__ == "MaeImagePretrainingTask"
    loaded = model.state_dict()
    for key, value in state["model"].items():
        if key != "_ema":
            assert torch.equal(loaded[key], value), key
    for key, value in state["model"]["_ema"].items():
        assert torch.equal(loaded["_ema"][key], value), key  # the teacher is restored from _ema

    in_memory = Data2VecMultiModel(config_from_dict(state["cfg"]["model"]))
    in_memory.load_state_dict(state["model"], strict=True)
    x = clips()
    with torch.no_grad():
        features = model.extract_features(x, remove_extra_tokens=False)["x"]  # (2, 65, 64)
        assert torch.equal(features, in_memory.eval().extract_features(x, remove_extra_tokens=False)["x"])
        torch.testing.assert_close(features, reference_features(state["model"], x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_official_finetuned_checkpoint_loads_through_fairseq(tmp_path, structure):
    state = official_checkpoint(structure, finetuned=True, seed=5)
    torch.save(state, tmp_path / "checkpoint_best.pt")
    data = write_label_descriptors(tmp_path / "data")
    model, cfg, task = load_with_fairseq(tmp_path / "checkpoint_best.pt", data=str(data))
    assert type(model).__name__ == "MaeImageClassificationModel" and task.num_classes == CLASSES
    assert set(model.state_dict()) == set(state["model"])

    in_memory = MaeImageClassificationModel(OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig),
                                                            state["cfg"]["model"]))
    in_memory.load_state_dict(state["model"], strict=True)
    x = clips(seed=1)
    w = state["model"]
    with torch.no_grad():
        logits = model(x)  # (2, 527)
        assert torch.equal(logits, in_memory.eval()(x))
        cls = reference_features(w, x, prefix="model.")[:, 0]  # (2, D)
        expected = F.linear(F.layer_norm(cls, (D,), w["fc_norm.weight"], w["fc_norm.bias"], 1e-6), w["head.weight"],
                            w["head.bias"])
        torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)


def compose(recipe_dir: str, overrides):
    """What ``fairseq-hydra-train --config-dir config/RECIPE_DIR --config-name tiny OVERRIDES`` runs with:
    composed, task / model / criterion merged into their dataclasses, resolved, enums as names."""
    hydra_init("tiny")
    GlobalHydra.instance().clear()
    with warnings.catch_warnings():  # hydra's notes about fairseq's way of matching schemas
        warnings.filterwarnings("ignore", message=r"(?s).*(ConfigStore schema|version_base)", category=UserWarning)
        with initialize_config_dir(config_dir=str(REPO / "config" / recipe_dir), version_base="1.1"):
            cfg = hydra_compose(config_name="tiny", overrides=[f"common.user_dir={REPO / 'eat_plugin'}", *overrides])
    GlobalHydra.instance().clear()
    add_defaults(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def trainer_state(cfg, path):
    """Set up the task and model as fairseq_cli/train.py does; save in ``Trainer.state_dict()``'s layout."""
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    checkpoint_utils.torch_persistent_save({"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "model": model.state_dict(), "criterion": None,
                "optimizer_history": [{"criterion_name": "ModelCriterion", "lr_scheduler_state": {},
                                       "optimizer_name": "FairseqCompositeOptimizer", "num_updates": 0}],
                "task_state": task.state_dict(), "extra_state": {"previous_training_time": 0.0}}, str(path))
    return model


def trainer_style_finetuned_checkpoint(tmp_path):
    """Our tiny pre-training recipe, then our tiny fine-tuning recipe from it, both saved trainer-style."""
    data = write_label_descriptors(tmp_path / "data", num_classes=5)
    torch.manual_seed(0)
    trainer_state(compose("pretraining", [f"task.data={data}", f"checkpoint.save_dir={tmp_path}"]),
                  tmp_path / "pretrain.pt")
    cfg = compose("finetuning", [f"task.data={data}", f"checkpoint.save_dir={tmp_path}", "model.num_classes=5",
                                 f"model.model_path={tmp_path / 'pretrain.pt'}"])
    model = trainer_state(cfg, tmp_path / "finetuned.pt")
    return torch.load(tmp_path / "finetuned.pt", weights_only=True), model, data


def test_our_finetuned_checkpoint_uses_only_official_names(tmp_path):
    state, model, data = trainer_style_finetuned_checkpoint(tmp_path)
    assert set(state["model"]) == set(official_finetuned_keys(depth=2))
    cfg = state["cfg"]
    assert set(cfg["model"]) == set(CLASSIFIER_FIELDS) | OUR_CLASSIFIER_ADDITIONS | {"_name"}
    # the official code's setup_task refuses unknown task keys: ours are stored beside the task section
    assert set(cfg["task"]) == set(CLASSIFICATION_TASK_FIELDS) | {"_name"}
    assert set(cfg["eat_plugin_task"]) == OUR_TASK_ADDITIONS | OUR_CLASSIFICATION_TASK_ADDITIONS
    pre = cfg["model"]["pretrained_model_args"]
    assert set(pre["model"]) == set(MODEL_FIELDS) | OUR_MODEL_ADDITIONS | {"_name"}  # unknown model keys are dropped
    assert set(pre["model"]["modalities"]) <= {"_name", "image"}
    assert set(pre["model"]["modalities"]["image"]) == set(IMAGE_FIELDS)
    assert set(pre["model"]["modalities"]["image"]["decoder"]) == set(DECODER_FIELDS)
    assert set(pre["task"]) == set(PRETRAIN_TASK_FIELDS) | {"_name"}
    assert set(pre["eat_plugin_task"]) == OUR_TASK_ADDITIONS
    assert (cfg["model"]["prediction_mode"], pre["model"]["supported_modality"],
            pre["model"]["modalities"]["image"]["type"]) == ("CLS_TOKEN", "IMAGE", "IMAGE")  # enums as names
    assert state["task_state"] == {"labels": {f"/m/c{i}": str(i) for i in range(5)}}

    (tmp_path / "pretrain.pt").unlink()  # reloads from the stored pre-training config alone
    loaded, _, _ = load_with_fairseq(tmp_path / "finetuned.pt", data=str(data))
    x = clips(seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
