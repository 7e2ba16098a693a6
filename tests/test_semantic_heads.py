"""Machine-sound semantic heads (design note 003): heads, loss terms, phases, transformations, logging."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eat_plugin.criterions.pretraining import EATPretrainingCriterion
from eat_plugin.data.augment import apply_transform, draw_transform
from eat_plugin.modules.semantic_heads import SemanticHeads
from eat_plugin.semantic_tasks import NUM_TRANSFORMS, SEMANTIC_TRANSFORMS
from helpers.tiny import tiny_pretraining_model

SEMANTIC = {"num_machine_ids": 7, "lambda_machine_id": 1.0, "lambda_transform": 0.5}


def batch(seed=0, clips=3):
    torch.manual_seed(seed)
    return torch.randn(clips, 1, 128, 128), torch.tensor([0, 2, 6])[:clips], torch.tensor([1, 0, 5])[:clips]


def test_heads_are_the_notes_two_layer_mlps():
    heads = SemanticHeads(32, 7, NUM_TRANSFORMS, dropout=0.4)
    for head, classes in ((heads.machine_id, 7), (heads.transform, 6)):
        assert [type(m) for m in head] == [nn.Linear, nn.SiLU, nn.Dropout, nn.Linear]
        assert (head[0].in_features, head[0].out_features, head[2].p, head[3].out_features) == (32, 128, 0.4, classes)
    patches = torch.randn(2, 5, 32)  # (B, N, D)
    heads.eval()
    torch.testing.assert_close(heads.machine_logits(patches), heads.machine_id(patches.mean(1)))
    per_patch = heads.transform_logits(patches, per_patch=True)
    assert per_patch.shape == (10, 6)
    torch.testing.assert_close(per_patch[5:], heads.transform(patches[1]))  # clip 1's patches are rows 5..9
    assert SemanticHeads(32, 0, 0, 0.1).machine_id is None


def test_semantic_terms_are_exactly_zero_before_the_start_update_then_lambda_times_ce():
    model = tiny_pretraining_model(semantic_start_update=3, **SEMANTIC).train()
    source, machine_id, transform = batch()
    captured = {}
    model.blocks[-1].register_forward_hook(lambda m, args, out: captured.__setitem__("student", out[0]))
    model.num_updates = 2
    early = model(source, id=[0, 1, 2], machine_id=machine_id, transformation_id=transform)
    assert early["losses"]["machine_id"].item() == 0.0 and early["losses"]["transform"].item() == 0.0
    assert early["machine_id_ce"] > 0  # still computed and logged
    model.num_updates = 3
    model.eval()  # no dropout: the hand computation below sees the same network
    out = model(source, id=[0, 1, 2], machine_id=machine_id, transformation_id=transform)
    visible = captured["student"][:, 1:]  # (R, N_keep, D): the student's patch latents, CLS dropped
    clip_means = visible.reshape(3, -1, visible.size(-1)).mean(1)  # (B, D): both clones' visible patches
    expected_ce = F.cross_entropy(model.semantic_heads.machine_id(clip_means), machine_id)
    torch.testing.assert_close(out["machine_id_ce"], expected_ce)
    torch.testing.assert_close(out["losses"]["machine_id"], expected_ce * out["sample_size"])
    transform_ce = F.cross_entropy(model.semantic_heads.transform(clip_means), transform)
    torch.testing.assert_close(out["losses"]["transform"], 0.5 * transform_ce * out["sample_size"])
    assert out["_machine_id_count"] == 3


def test_per_patch_transform_labels_cover_every_visible_patch_of_every_clone():
    model = tiny_pretraining_model(transform_head_per_patch=True, **SEMANTIC).train()
    source, machine_id, transform = batch()
    out = model(source, id=[0, 1, 2], machine_id=machine_id, transformation_id=transform)
    visible = int(64 * 0.2)  # 8 x 8 patches, mask_prob 0.8 with inverse masking: 12 visible per clone
    assert out["_transform_count"] == 3 * 2 * visible  # B * clones * N_keep predictions


def test_missing_labels_and_invalid_fields_are_clear_errors():
    model = tiny_pretraining_model(**SEMANTIC).train()
    source, _, transform = batch()
    with pytest.raises(ValueError, match="lambda_machine_id > 0 needs the clips' machine_id labels"):
        model(source, transformation_id=transform)
    with pytest.raises(ValueError, match="model.num_machine_ids=0: expected at least 1 with lambda_machine_id > 0"):
        tiny_pretraining_model(lambda_machine_id=1.0)
    with pytest.raises(ValueError, match="model.semantic_head_dropout=1.0"):
        tiny_pretraining_model(semantic_head_dropout=1.0, **SEMANTIC)


def test_head_learning_rate_scale_reaches_the_composite_optimizer_overrides():
    model = tiny_pretraining_model(semantic_lr_scale=0.25, **SEMANTIC)
    for name, param in model.semantic_heads.named_parameters():
        assert param.optim_overrides["optimizer"]["lr_scale"] == 0.25, name
    bias = model.semantic_heads.machine_id[0].bias
    assert bias.optim_overrides["optimizer"]["weight_decay_scale"] == 0  # and biases keep no weight decay
    assert not hasattr(model.blocks[0].attn.qkv.weight, "optim_overrides")


def test_the_teacher_holds_no_head_and_student_encoder_drops_them():
    from eat_plugin.models.data2vec_multi import student_encoder
    from helpers.tiny import tiny_pretraining_config

    model = tiny_pretraining_model(**SEMANTIC)
    assert not any("semantic" in name for name in model.teacher.fp32_params)
    weights = model.state_dict()
    assert student_encoder(tiny_pretraining_config(**SEMANTIC), weights).semantic_heads is None
    kept = student_encoder(tiny_pretraining_config(**SEMANTIC), weights, keep_semantic_heads=True)
    torch.testing.assert_close(kept.semantic_heads.machine_id[3].weight, model.semantic_heads.machine_id[3].weight)


def test_a_plain_eat_checkpoint_starts_the_heads_fresh_and_a_partial_one_is_refused():
    from eat_plugin.models.state_check import CheckpointMismatchError

    plain = tiny_pretraining_model(seed=1).state_dict()  # a released-style checkpoint: no semantic_heads.*
    model = tiny_pretraining_model(seed=2, **SEMANTIC)
    fresh = {k: v.clone() for k, v in model.semantic_heads.state_dict().items()}
    model.load_state_dict(dict(plain), strict=True)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, plain["blocks.0.attn.qkv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.teacher.fp32_params["blocks.0.mlp.fc1.weight"], plain["_ema"]["blocks.0.mlp.fc1.weight"])
    for key, value in model.semantic_heads.state_dict().items():
        torch.testing.assert_close(value, fresh[key], rtol=0, atol=0)
    partial = dict(tiny_pretraining_model(seed=3, **SEMANTIC).state_dict())
    del partial["semantic_heads.transform.3.weight"]
    with pytest.raises(CheckpointMismatchError, match="missing"):
        tiny_pretraining_model(seed=2, **SEMANTIC).load_state_dict(partial, strict=True)


# ------------------------------------------------------------------------------- transformations


def sine(freq=440.0, seconds=1.0, rate=16000):
    t = torch.arange(int(seconds * rate)) / rate
    return torch.sin(2 * torch.pi * freq * t)


def peak_frequency(wave, rate=16000):
    spectrum = torch.fft.rfft(wave).abs()
    return float(spectrum.argmax()) * rate / wave.numel()


def test_each_transformation_does_what_its_name_says():
    wave = sine()
    for seed in range(5):
        rng = lambda: np.random.default_rng(seed)  # noqa: E731
        assert torch.equal(apply_transform(wave, 0, rng()), wave)
        assert torch.equal(apply_transform(wave, 1, rng()), wave.flip(0))
        ratio = peak_frequency(apply_transform(wave, 2, rng())) / 440.0  # resampled by 5/4 or 4/5
        assert min(abs(ratio - 1.25), abs(ratio - 0.8)) < 0.01, ratio
        gain_db = 20 * np.log10(float(apply_transform(wave, 3, rng()).abs().max()) / float(wave.abs().max()))
        assert -20.0 <= gain_db <= -10.0
        shifted = apply_transform(wave, 4, rng())
        delay = int((shifted != 0).nonzero()[0]) - 1  # sin(0) = 0: the first non-zero sample is delay + 1
        assert 0.2 * 16000 <= delay <= 0.5 * 16000 and torch.equal(shifted[delay:], wave[:16000 - delay])
        assert shifted[:delay].abs().max() == 0
        noisy = apply_transform(wave, 5, rng())
        snr = 10 * np.log10(float(wave.pow(2).mean()) / float((noisy - wave).pow(2).mean()))
        assert 5.0 - 0.3 <= snr <= 15.0 + 0.3
        assert apply_transform(wave, 2, rng()).shape == wave.shape
    assert SEMANTIC_TRANSFORMS[0] == "identity" and NUM_TRANSFORMS == 6


def test_transformation_ids_are_uniform_over_the_six():
    ids = [draw_transform(np.random.default_rng([1, 1, i])) for i in range(6000)]
    counts = np.bincount(ids, minlength=6)
    assert counts.min() > 900 and counts.max() < 1100  # 1000 each, 3 sigma ~ 90


# ------------------------------------------------------------------------------------- criterion


class _Task:
    pass


def test_criterion_logs_ssl_loss_selected_loss_and_head_accuracies():
    from fairseq import metrics

    model = tiny_pretraining_model(**SEMANTIC).train()
    source, machine_id, transform = batch()
    sample = {"id": torch.arange(3), "net_input": {"source": source, "id": [0, 1, 2], "machine_id": machine_id,
                                                   "transformation_id": transform}}
    criterion = EATPretrainingCriterion(_Task(), selection_losses=["IMAGE_regression", "cls"])
    torch.manual_seed(0)
    loss, sample_size, log = criterion(model, sample)
    terms = {k[5:]: v for k, v in log.items() if k.startswith("loss_")}
    assert set(terms) == {"IMAGE_regression", "cls", "machine_id", "transform"}
    assert log["_selected_loss"] == pytest.approx(terms["IMAGE_regression"] + terms["cls"], rel=1e-6)
    assert log["_ssl_loss"] == log["_selected_loss"]
    assert loss.item() == pytest.approx(sum(terms.values()), rel=1e-5)
    with metrics.aggregate() as agg:
        EATPretrainingCriterion.reduce_metrics([log])
    values = agg.get_smoothed_values()
    assert values["selected_loss"] == pytest.approx(round(log["_selected_loss"] / sample_size, 3), abs=1e-3)
    assert values["machine_id_accuracy"] == pytest.approx(100.0 * log["_machine_id_correct"] / 3, abs=0.01)
    assert 0.0 <= values["transform_accuracy"] <= 100.0
    with pytest.raises(ValueError, match=r"selection_losses names \['recon'\]"):
        EATPretrainingCriterion(_Task(), selection_losses=["recon"])(model, sample)


def test_uncertainty_weighting_learns_one_log_variance_per_head():
    model = tiny_pretraining_model(semantic_weighting="uncertainty", **SEMANTIC).eval()
    weighting = model.semantic_heads.weighting
    assert weighting.names == ("machine_id", "transform")
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.5, -0.25]))
    source, machine_id, transform = batch()
    out = model(source, id=[0, 1, 2], machine_id=machine_id, transformation_id=transform)
    for name, s in (("machine_id", 0.5), ("transform", -0.25)):  # exp(-s) CE + s, times the sample size
        expected = (np.exp(-s) * float(out[f"{name}_ce"]) + s) * out["sample_size"]
        assert float(out["losses"][name]) == pytest.approx(expected, rel=1e-5)
        assert float(out[f"{name}_weight"]) == pytest.approx(np.exp(-s), rel=1e-6)
    out["losses"]["machine_id"].backward()  # d/ds (exp(-s) L + s) = 1 - exp(-s) L, per sample-size unit
    grad = float(weighting.log_vars.grad[0]) / out["sample_size"]
    assert grad == pytest.approx(1 - np.exp(-0.5) * float(out["machine_id_ce"]), rel=1e-4)
    with pytest.raises(ValueError, match="model.semantic_weighting='learned'"):
        tiny_pretraining_model(semantic_weighting="learned", **SEMANTIC)


@pytest.mark.parametrize("name", ["machine_sounds", "machine_sounds_tiny"])
def test_machine_sound_recipes_compose_into_valid_configs(name):
    """Both recipes as fairseq-hydra-train composes them: the machine_sounds task, semantic heads on,
    validation on and the checkpoint chosen by the SSL validation losses."""
    from eat_plugin.models.pretraining_config import check_supported, config_from_dict
    from eat_plugin.tasks.machine_sounds import MachineSoundsConfig
    from helpers.runs import compose_recipe
    from omegaconf import OmegaConf

    cfg = compose_recipe("pretraining", name, ["task.data=/data", "checkpoint.save_dir=/run", "common.user_dir=/x"])
    model = config_from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    check_supported(model)  # every value in range (the machine-id head size comes from the data)
    assert model.lambda_machine_id > 0 and model.lambda_transform > 0
    assert model.modalities.image.target_length == cfg.task.target_length
    OmegaConf.merge(OmegaConf.structured(MachineSoundsConfig), cfg.task)  # every task key is declared
    assert cfg.task._name == "machine_sounds" and not cfg.dataset.disable_validation
    assert cfg.checkpoint.best_checkpoint_metric == "selected_loss" and not cfg.checkpoint.maximize_best_checkpoint_metric
    assert list(cfg.criterion.selection_losses) == ["IMAGE_regression", "cls"]
