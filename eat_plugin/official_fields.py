"""The one table of official config fields this implementation does not implement.

Every field of the official dataclasses exists here with its official name, type and default (released
checkpoints store them, and checkpoints written here must load in the official code). A field is
either implemented, or listed below as

* ``REFUSED``: it changes the official computation and is not implemented here; only the listed
  values are accepted (the default, or the value every EAT recipe sets), anything else stops the run
  at build time with one message naming every such field;
* ``INERT``: the official code never reads it on EAT's path either (a square-image size, options of
  features that are refused), so any value is accepted; the reason says why it has no effect.

Keys are ``section:path``; section ``model:<registry name>`` or ``task`` (both tasks share the
pre-training task's fields), path as written in a recipe (``modalities.image.decoder.decoder_dim``).
This module imports nothing from the plugin: models and tasks both read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple


@dataclass(frozen=True)
class Refused:
    accepted: Tuple[Any, ...]
    what: str  # the feature the field switches on


PRETRAINING = "model:data2vec_multi"
FINETUNING = "model:mae_image_classification"
TASK = "task"

_IMAGE = f"{PRETRAINING}.modalities.image"
_NOT_AUDIO = "the square-image input size; the spectrogram input is (target_length, 128)"
_ALIBI_ONLY = "read only by ALiBi attention biases, which are refused (use_alibi_encoder)"

REFUSED: Dict[str, Refused] = {
    f"{PRETRAINING}.layer_norm_first": Refused((False,), "pre-LN blocks (EAT uses post-LN)"),
    f"{PRETRAINING}.ema_encoder_only": Refused(
        (False,), "a teacher over the blocks only (EAT recipes set ema_encoder_only: false)"),
    f"{PRETRAINING}.ema_same_dtype": Refused(
        (True,), "a teacher kept in fp32 under fp16/bf16 training (the teacher runs in the student's dtype)"),
    f"{PRETRAINING}.shared_decoder": Refused((None,), "a decoder shared across modalities"),
    f"{PRETRAINING}.supported_modality": Refused((None, "IMAGE"), "modalities other than the spectrogram ('IMAGE') one"),
    f"{PRETRAINING}.decoder_group": Refused((False,), "grouped decoders"),
    f"{_IMAGE}.type": Refused(("IMAGE",), "modalities other than the spectrogram ('IMAGE') encoder"),
    f"{_IMAGE}.in_chans": Refused((1,), "multi-channel input: the input is a (B, 1, T, 128) fbank"),
    f"{_IMAGE}.ema_local_encoder": Refused(
        (True,), "a teacher without its own EMA patch embedding (EAT recipes set ema_local_encoder: true)"),
    f"{_IMAGE}.patch_size": Refused((16,), "patch sizes other than 16 (the 16x16 patch grid)"),
    f"{_IMAGE}.fixed_positions": Refused((True,), "learned positions (EAT uses the fixed sin-cos table)"),
    f"{_IMAGE}.transformer_decoder": Refused((False,), "the transformer decoder (EAT uses the CNN decoder)"),
    f"{_IMAGE}.enc_dec_transformer": Refused((False,), "the encoder-decoder transformer"),
    f"{_IMAGE}.use_alibi_encoder": Refused((False,), "ALiBi attention biases"),
    f"{_IMAGE}.learned_alibi": Refused((False,), "learned ALiBi"),
    f"{_IMAGE}.learned_alibi_scale": Refused((False,), "learned ALiBi scales"),
    f"{_IMAGE}.learned_alibi_scale_per_head": Refused((False,), "learned ALiBi scales"),
    f"{_IMAGE}.learned_alibi_scale_per_layer": Refused((False,), "learned ALiBi scales"),
    f"{_IMAGE}.mask_prob_min": Refused((None,), "random mask ratios"),
    f"{_IMAGE}.keep_masked_pct": Refused((0,), "keeping masked tokens in the encoder"),
    f"{_IMAGE}.add_masks": Refused((False,), "add_masks"),
    f"{_IMAGE}.remove_masks": Refused((False,), "remove_masks"),
    f"{_IMAGE}.mask_dropout": Refused((0,), "mask dropout"),
    f"{_IMAGE}.mask_channel_prob": Refused((0,), "channel masking"),
    f"{_IMAGE}.decoder.add_positions_masked": Refused((False,), "re-adding positions in the decoder"),
    f"{_IMAGE}.decoder.add_positions_all": Refused((False,), "re-adding positions in the decoder"),
    f"{TASK}.audio_mae": Refused((True,), "the official image-folder pipeline (every EAT recipe sets audio_mae: true)"),
    f"{TASK}.multi_data": Refused((None,), "several data directories (concatenate the manifests)"),
    f"{TASK}.local_cache_path": Refused((None,), "the local data cache"),
    f"{TASK}.beit_transforms": Refused((False,), "BEiT image transforms (image-only)"),
    f"{TASK}.target_transform": Refused((False,), "image target transforms (image-only)"),
    f"{TASK}.subsample": Refused((1,), "subsampling the data set (write a smaller manifest)"),
    f"{TASK}.flexible_mask": Refused((False,), "flexible mask block sizes"),
    f"{TASK}.dataset_type": Refused(("imagefolder",), "data set types other than the audio manifest one"),
    f"{TASK}.precompute_mask_config.expand_adjacent": Refused((False,), "expand_adjacent masking"),
    f"{TASK}.precompute_mask_config.non_overlapping": Refused((False,), "non-overlapping masking"),
    f"{TASK}.precompute_mask_config.mask_dropout": Refused((0,), "mask dropout (EAT uses 0)"),
}

INERT: Dict[str, str] = {
    f"{_IMAGE}.input_size": _NOT_AUDIO,
    f"{TASK}.input_size": _NOT_AUDIO,
    f"{TASK}.no_transform": "image transforms only; audio has none",
    f"{TASK}.is_finetuning": "deprecated in the official code, read nowhere",
    f"{TASK}.rebuild_batches": "declared by the official tasks, read nowhere (fairseq rebuilds batches itself)",
    f"{PRETRAINING}.max_update": "declared, read nowhere by the official model (the EMA ramp reads ema_anneal_end_step)",
    f"{_IMAGE}.decoder.projection_layers": "read only by the 1-D decoder; EAT's CNN decoder ends in one Linear",
    f"{_IMAGE}.decoder.projection_ratio": "read only by the 1-D decoder; EAT's CNN decoder ends in one Linear",
    f"{_IMAGE}.mask_channel_length": "read only with channel masking (mask_channel_prob), which is refused",
    f"{_IMAGE}.alibi_dims": _ALIBI_ONLY,
    f"{_IMAGE}.alibi_distance": _ALIBI_ONLY,
    f"{_IMAGE}.alibi_max_pos": _ALIBI_ONLY,
    f"{_IMAGE}.num_alibi_heads": _ALIBI_ONLY,
    f"{_IMAGE}.model_depth": _ALIBI_ONLY + " (the per-layer scale count)",
}


# Task fields this plugin adds to the official task configs. The official code builds the pre-training task
# of a checkpoint with fairseq's setup_task WITHOUT dropping unknown keys (the fine-tuning model does, from
# ``pretrained_model_args.task``), so saved checkpoints keep them beside the task config, not inside it
# (``eat_plugin.checkpoint_cfg``).
PLUGIN_TASK_FIELDS = ("min_sample_size", "norm_mean", "norm_std", "skip_bad_clips", "label_type",
                      "clip_cache_mb")


def _value(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return getattr(cfg, "name", cfg)  # enums compare by name ("IMAGE")


def check_refused(section: str, cfg: Any, prefix: str) -> None:
    """Raise ``ValueError`` naming every ``REFUSED`` field of ``section`` that ``cfg`` sets to another value.

    ``prefix`` is how the user writes the section (``model`` / ``task``) in overrides.
    """
    problems = []
    for key, rule in REFUSED.items():
        key_section, path = key.split(".", 1)
        if key_section != section:
            continue
        try:
            value = _value(cfg, path)
        except AttributeError:  # an optional sub-config that is unset (precompute_mask_config: null)
            continue
        if value not in rule.accepted:
            accepted = ", ".join(map(repr, rule.accepted))
            problems.append(f"{prefix}.{path}={value!r} is not supported: {rule.what} is not implemented "
                            f"(accepted: {accepted})")
    if problems:
        raise ValueError("unsupported configuration:\n  " + "\n  ".join(problems))
