"""State-dict key names of EAT checkpoints (reference §9): the one home of every key rule.

The official models keep the spectrogram encoder under data2vec 2.0's modality name ``IMAGE``, so its
weights are ``modality_encoders.IMAGE.*``; a fine-tuned model holds the whole pre-training model under
``model.``. Imports nothing from the plugin.
"""

from __future__ import annotations

from typing import Dict, Optional, TypeVar

MODALITY = "IMAGE"  # the official (data2vec) name of the spectrogram encoder; kept for checkpoint keys
ENCODER = f"modality_encoders.{MODALITY}."  # prefix of the spectrogram encoder's weights
POSITIONS = ENCODER + "fixed_positional_encoder.positions"  # the fixed sin-cos position table
LEGACY_POSITIONS = ENCODER + "positional_encoder.pos_embed"  # its pre-2024 name
LEGACY_ENCODER_MASK = ENCODER + "encoder_mask"  # a buffer of old checkpoints, read by nothing
PATCH_EMBEDDING = ENCODER + "local_encoder.proj.weight"  # present in every data2vec_multi state dict
SEMANTIC_HEADS = "semantic_heads."  # machine-sound heads (plugin only; a fine-tuned model: the transformation head)
FINETUNED_PREFIX = "model."  # the pre-training model inside a fine-tuned checkpoint

# Weights only pre-training has (teacher, decoder, projection heads): exact keys and key prefixes.
PRETRAINING_ONLY_KEYS = frozenset({"_ema", "center", LEGACY_ENCODER_MASK})
PRETRAINING_ONLY_PREFIXES = (ENCODER + "decoder.", "recon_proj.", "cls_proj.", SEMANTIC_HEADS)

T = TypeVar("T")


def pretraining_only_part(key: str) -> Optional[str]:
    """The pre-training-only key or prefix ``key`` belongs to (``None`` for an encoder / head weight)."""
    if key in PRETRAINING_ONLY_KEYS:
        return key
    return next((p for p in PRETRAINING_ONLY_PREFIXES if key.startswith(p)), None)


def upgrade_legacy_keys(state_dict: Dict[str, T], prefix: str = "") -> Dict[str, T]:
    """Rename the pre-2024 position table and drop the legacy mask buffer, in place; returns it."""
    if prefix + LEGACY_POSITIONS in state_dict:
        state_dict[prefix + POSITIONS] = state_dict.pop(prefix + LEGACY_POSITIONS)
    state_dict.pop(prefix + LEGACY_ENCODER_MASK, None)
    return state_dict

