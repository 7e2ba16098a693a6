"""The one tiny EAT model of the unit tests, and checkpoints of it in the layout fairseq writes.

dim 32, 2 heads, depth 2, 128 frames (8 x 8 patches), 2 clones, a 2-layer 3x3 decoder: the recipes'
structure (config/pretraining/base.yaml) at test size.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

TARGET_LENGTH = 128  # frames: the tiny model's 8 x 8 patch grid
EMBED_DIM = 32
NUM_CLASSES = 5
LABEL_IDS = [f"/m/id{i}" for i in range(NUM_CLASSES)]
LABEL_NAMES = ["Dog", "Rain", "Siren", "Speech", "Music"]

TINY_PRETRAINING = {
    "embed_dim": EMBED_DIM, "num_heads": 2, "depth": 2, "average_top_k_layers": 2, "clone_batch": 2,
    "ema_decay": 0.9, "ema_end_decay": 0.99, "ema_anneal_end_step": 10, "max_update": 10, "seed": 1,
    "instance_norm_target_layer": True, "layer_norm_targets": True, "cls_loss": 1.0,
    "encoder_dropout": 0.0, "post_mlp_drop": 0.0, "attention_dropout": 0.0, "ema_encoder_only": False,
    "supported_modality": "IMAGE",
    "modalities": {"image": {
        "in_chans": 1, "embed_dim": EMBED_DIM, "target_length": TARGET_LENGTH, "max_length": 64, "inverse_mask": True,
        "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 5, "mask_noise_std": 0.01,
        "prenet_depth": 0, "ema_local_encoder": True, "num_extra_tokens": 1, "init_extra_token_zero": False,
        "num_alibi_heads": 2, "model_depth": 2,
        "decoder": {"decoder_dim": EMBED_DIM, "decoder_groups": 8, "decoder_kernel": 3, "decoder_layers": 2,
                    "input_dropout": 0.0},
    }},
}
HISTORY = [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqCompositeOptimizer",
            "lr_scheduler_state": {}, "num_updates": 0}]  # fairseq's loader reads the last entry


def tiny_pretraining_config(**overrides) -> DictConfig:
    """The tiny ``data2vec_multi`` config; ``overrides`` by field name or dotted path
    (``recon_loss=1.0``, ``**{"modalities.image.mask_noise_std": 0.0}``), nested dicts merge."""
    from eat_plugin.models.pretraining_config import Data2VecMultiConfig

    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecMultiConfig), TINY_PRETRAINING)
    for path, value in overrides.items():
        OmegaConf.update(cfg, path, value, merge=True)
    return cfg


def tiny_pretraining_model(seed: int = 0, **overrides):
    """A ``Data2VecMultiModel`` of :func:`tiny_pretraining_config`, initialised after ``manual_seed(seed)``."""
    from eat_plugin.models.data2vec_multi import Data2VecMultiModel

    torch.manual_seed(seed)
    return Data2VecMultiModel(tiny_pretraining_config(**overrides))


def save_pretrained(path: Path, seed: int = 0, **overrides):
    """A fairseq-format pre-training checkpoint of the tiny model (``overrides`` as in
    :func:`tiny_pretraining_config`): ``{cfg, model (+ _ema), ...}``; the model."""
    model_cfg = tiny_pretraining_config(**overrides)
    model = tiny_pretraining_model(seed, **overrides)
    cfg = {"model": {**OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True), "_name": "data2vec_multi"},
           "task": {"_name": "mae_image_pretraining", "audio_mae": True}, "criterion": {"_name": "model"},
           "lr_scheduler": {"_name": "pass_through"}}
    torch.save({"cfg": cfg, "model": model.state_dict(), "optimizer_history": HISTORY, "extra_state": {},
                "args": None}, path)
    return model


def finetune_config(model_path, **overrides) -> DictConfig:
    """A ``mae_image_classification`` model config over the pre-training checkpoint at ``model_path``."""
    from eat_plugin.models.mae_image_classification import MaeImageClassificationConfig

    base = {"model_path": str(model_path), "num_classes": NUM_CLASSES, "data": "unused",
            "target_length": TARGET_LENGTH, "drop_path_rate": 0.0}
    return OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig), base, overrides)


def save_finetuned(path: Path, pretrained: Path, label_ids: Sequence[str] = LABEL_IDS, data="",
                   single_label: bool = False, task_state: bool = True, seed: int = 0):
    """A fine-tuned checkpoint as fairseq writes it (cfg, model, task_state, optimizer_history, ...): single-label
    (ESC-50 style, mean pooling) or multi-label (AudioSet style, CLS token); the head's logits spread out."""
    from eat_plugin.models.mae_image_classification import MaeImageClassificationModel

    torch.manual_seed(seed)
    flags = {"esc50_eval": True, "audio_mae": True} if single_label else {"audio_mae": True}
    cfg = finetune_config(pretrained, num_classes=len(label_ids), data=str(data),
                          prediction_mode="MEAN_POOLING" if single_label else "CLS_TOKEN", **flags)
    model = MaeImageClassificationModel(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # spread the scores: top-k orders are meaningful
    torch.nn.init.normal_(model.head.bias, std=0.5)
    task = {"_name": "mae_image_classification", "data": str(data), "target_length": TARGET_LENGTH,
            "label_descriptors": "label_descriptors.csv", "labels": "lbl", **flags}
    torch.save({
        "cfg": {"model": {**OmegaConf.to_container(cfg, enum_to_str=True), "_name": "mae_image_classification"},
                "task": task, "criterion": {"_name": "model"}},
        "model": model.state_dict(),
        "task_state": {"labels": {label_id: str(i) for i, label_id in enumerate(label_ids)}} if task_state else {},
        "optimizer_history": [{**HISTORY[0], "num_updates": 3}],
        "extra_state": {"epoch": 1}, "args": None,
    }, path)
    return model


def build_checkpoints(root: Path) -> SimpleNamespace:
    """Pre-trained, single-label and multi-label checkpoints, and the fine-tuning data dir's class table
    (:data:`LABEL_IDS` / :data:`LABEL_NAMES`). The fine-tuned ones outlive their pre-training file."""
    from eat_plugin.data.manifest import write_label_descriptors

    data = root / "data"
    write_label_descriptors(data / "label_descriptors.csv", LABEL_IDS, LABEL_NAMES)
    save_pretrained(root / "pretrain.pt")
    shutil.copy(root / "pretrain.pt", root / "pretrain_gone.pt")
    single, multi = root / "esc50.pt", root / "audioset.pt"
    save_finetuned(single, root / "pretrain_gone.pt", data=data, single_label=True, seed=1)
    save_finetuned(multi, root / "pretrain_gone.pt", data=data, single_label=False, seed=2)
    (root / "pretrain_gone.pt").unlink()  # fine-tuned checkpoints carry the pre-training config
    return SimpleNamespace(root=root, data=data, pretrained=root / "pretrain.pt", single=single, multi=multi)


# ------------------------------------------------------------------------------------------- audio


def samples_for(frames: int) -> int:
    """16 kHz samples giving exactly ``frames`` fbank frames."""
    return 400 + (frames - 1) * 160


def noise(num_samples: int, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """``(S,)`` float32 noise + two tones, exactly ``num_samples`` long (energy in every mel band)."""
    t = np.arange(num_samples) / sample_rate
    rng = np.random.default_rng(seed)
    wave = 0.1 * rng.standard_normal(num_samples) + 0.3 * np.sin(2 * np.pi * 440 * t)
    wave += 0.2 * np.sin(2 * np.pi * 3000 * t)
    return wave.astype(np.float32)


class RunsCode:
    """Unpickling this calls os.system: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))



# ---------------------------------------------------------------------------------- labelled data

CLIP_IDS = ["dog", "rain", "siren", "bell"]  # the class table of make_labelled_data
CLIP_SECONDS = 0.7  # 11200 samples: above min_sample_size 10000


def make_labelled_data(root: Path, labels: Sequence[Sequence[str]], split: str = "train",
                       ids: Sequence[str] = CLIP_IDS) -> Path:
    """``{split}.tsv`` / ``.lbl`` over generated clips with the given label ids, plus the class table."""
    from conftest import broadband, write_wav
    from eat_plugin.data.manifest import Clip, write_label_descriptors, write_split

    clips = []
    for i, clip_labels in enumerate(labels):
        write_wav(root / "audio" / f"{split}{i}.wav", broadband(CLIP_SECONDS, seed=i), 16000)
        clips.append(Clip(f"{split}{i}.wav", int(CLIP_SECONDS * 16000), tuple(clip_labels)))
    write_split(root, split, root / "audio", clips)
    write_label_descriptors(root / "label_descriptors.csv", list(ids), [i.title() for i in ids])
    return root


def classification_task_cfg(data: Path, **overrides) -> DictConfig:
    """A ``mae_image_classification`` task config on ``data`` with the recipes' flags, 64 frames."""
    from eat_plugin.tasks.classification import MaeImageClassificationConfig

    values = dict(data=str(data), seed=1, target_length=64, audio_mae=True, downsr_16hz=True)  # as the recipes
    values.update(overrides)
    return OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig), values)
