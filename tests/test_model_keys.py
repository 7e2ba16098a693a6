"""Checkpoint key rules (``eat_plugin.models.keys``) against what the models really hold."""

import torch

from eat_plugin.models.data2vec_multi import student_encoder
from eat_plugin.models.keys import (ENCODER, LEGACY_ENCODER_MASK, LEGACY_POSITIONS, POSITIONS, pretraining_only_part,
                                    upgrade_legacy_keys)
from helpers.tiny import tiny_pretraining_config, tiny_pretraining_model


def test_pretraining_only_keys_are_exactly_what_the_student_encoder_drops():
    """Every pre-training part on (teacher, decoder, reconstruction and CLS projections, centre)."""
    parts = {"recon_loss": 1.0, "utterance_level": True}
    full = tiny_pretraining_model(**parts).state_dict()
    encoder = student_encoder(tiny_pretraining_config(**parts)).state_dict()
    assert set(encoder) < set(full)
    dropped = set(full) - set(encoder)
    assert {k for k in full if pretraining_only_part(k) is not None} == dropped
    assert {pretraining_only_part(k) for k in dropped} == {"_ema", "center", ENCODER + "decoder.", "recon_proj.",
                                                           "cls_proj."}


def test_a_legacy_state_dict_loads_with_its_positions_under_the_new_name():
    model = tiny_pretraining_model(seed=3)
    weights = model.state_dict()
    legacy = {LEGACY_POSITIONS if k == POSITIONS else k: v for k, v in weights.items()}
    legacy[LEGACY_ENCODER_MASK] = torch.ones(1)  # a buffer of old checkpoints, read by nothing
    assert POSITIONS not in legacy
    upgraded = upgrade_legacy_keys(dict(legacy))
    assert set(upgraded) == set(weights) and torch.equal(upgraded[POSITIONS], weights[POSITIONS])
    fresh = student_encoder(tiny_pretraining_config(), legacy)  # through the models' own strict load
    assert torch.equal(fresh.state_dict()[POSITIONS], weights[POSITIONS])
    prefixed = upgrade_legacy_keys({"model." + LEGACY_POSITIONS: 1}, "model.")
    assert prefixed == {"model." + POSITIONS: 1}
