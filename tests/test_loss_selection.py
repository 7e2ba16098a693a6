"""The loss toolbox inside training: focal loss / class weights in the fine-tuning model, the focal option of
the semantic heads, and the first-update sanity checks of the tasks (note 002)."""

import logging
import math

import pytest
import torch
from torch import nn

from eat_plugin.losses import cross_entropy, focal_loss
from eat_plugin.models.mae_image_classification import MaeImageClassificationModel
from eat_plugin.tasks.pretraining import first_update_report
from helpers.tiny import NUM_CLASSES, finetune_config, save_pretrained, tiny_pretraining_model

SINGLE = {"esc50_eval": True, "audio_mae": True, "prediction_mode": "MEAN_POOLING", "specaug": False}


@pytest.fixture
def pretrained(tmp_path):
    path = tmp_path / "pretrained.pt"
    save_pretrained(path)
    return path


def losses_of(model, imgs, labels):
    out = model.train()(imgs, label=labels)
    with torch.no_grad():
        logits = model.eval()(imgs)  # no dropout anywhere in the tiny config: the same logits as in training
    return out["losses"]["regression"], logits


def test_focal_gamma_switches_the_single_label_loss_to_focal(pretrained):
    model = MaeImageClassificationModel(finetune_config(pretrained, focal_gamma=2.0, focal_alpha=0.5, **SINGLE))
    imgs, labels = torch.randn(3, 1, 128, 128), torch.tensor([0, 3, 4])
    loss, logits = losses_of(model, imgs, labels)
    torch.testing.assert_close(loss, focal_loss(logits, labels, 2.0, 0.5), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(loss, cross_entropy(logits, labels))


def test_focal_gamma_switches_multi_label_bce_to_the_binary_focal_form(pretrained):
    from eat_plugin.losses import binary_focal_loss

    model = MaeImageClassificationModel(finetune_config(pretrained, focal_gamma=2.0, focal_alpha=0.25, audio_mae=True))
    imgs, labels = torch.randn(2, 1, 128, 128), torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    out = model.train()(imgs, label=labels)
    with torch.no_grad():
        logits = model.eval()(imgs)
    torch.testing.assert_close(out["losses"]["main"], binary_focal_loss(logits, labels, 2.0, 0.25), atol=1e-5, rtol=1e-4)
    assert out["sample_size"] == 3  # the positive label mass, as the official BCE


def test_class_weights_come_from_the_training_counts(tmp_path, pretrained):
    from eat_plugin.tasks.classification import MaeImageClassificationTask
    from helpers.tiny import CLIP_IDS, classification_task_cfg, make_labelled_data

    data = make_labelled_data(tmp_path / "data", [["dog"], ["dog"], ["dog"], ["rain"], ["siren"], ["siren"]])
    task = MaeImageClassificationTask(classification_task_cfg(data, esc50_eval=True, label_type="single"))
    weights = task.class_weights("inverse")  # counts 3, 1, 2, 0 -> 1/n over the present classes, mean 1
    inverse = torch.tensor([1 / 3, 1.0, 1 / 2, 0.0])
    torch.testing.assert_close(weights, inverse * 3 / inverse.sum())
    model = MaeImageClassificationModel(finetune_config(pretrained, num_classes=len(CLIP_IDS), class_weights="inverse",
                                                        **SINGLE))
    model.set_class_weights(weights)
    imgs, labels = torch.randn(3, 1, 128, 128), torch.tensor([0, 1, 2])
    loss, logits = losses_of(model, imgs, labels)
    torch.testing.assert_close(loss, weights[labels] * nn.functional.cross_entropy(logits, labels, reduction="none"),
                               atol=1e-5, rtol=1e-4)


def test_loss_options_that_have_no_single_meaning_are_refused(pretrained):
    with pytest.raises(ValueError, match="focal_gamma > 0 with mixup"):
        MaeImageClassificationModel(finetune_config(pretrained, focal_gamma=2.0, mixup=0.8, **SINGLE))
    with pytest.raises(ValueError, match="class_weights is for single-label data"):
        MaeImageClassificationModel(finetune_config(pretrained, class_weights="inverse", audio_mae=True))
    with pytest.raises(ValueError, match="model.class_weights='balanced'"):
        MaeImageClassificationModel(finetune_config(pretrained, class_weights="balanced", **SINGLE))
    with pytest.raises(ValueError, match="model.focal_gamma=-1"):
        MaeImageClassificationModel(finetune_config(pretrained, focal_gamma=-1.0, **SINGLE))


def test_semantic_focal_gamma_uses_the_focal_loss_for_the_heads():
    model = tiny_pretraining_model(num_machine_ids=7, lambda_machine_id=1.0, semantic_focal_gamma=2.0).eval()
    torch.manual_seed(0)
    source, machine_id = torch.randn(2, 1, 128, 128), torch.tensor([0, 6])
    out = model(source, id=[0, 1], machine_id=machine_id)
    ce = float(out["machine_id_ce"])  # the plain CE is still logged
    focal = float(out["losses"]["machine_id"]) / out["sample_size"]
    assert 0 < focal < ce  # (1 - p)^2 < 1 shrinks every term; near chance p ~ 1/7: focal ~ (6/7)^2 CE
    assert focal == pytest.approx(ce * (6 / 7) ** 2, rel=0.05)


# ---------------------------------------------------------------------------------- first update


def test_first_update_report_compares_each_head_with_chance_and_names_params_without_grad(pretrained, caplog):
    model = MaeImageClassificationModel(finetune_config(pretrained, **SINGLE)).train()
    model.unused = nn.Linear(2, 2)  # a branch the loss never reaches
    imgs, labels = torch.randn(4, 1, 128, 128), torch.tensor([0, 1, 2, 3])
    out = model(imgs, label=labels)
    loss = out["losses"]["regression"].sum()
    loss.backward()
    with caplog.at_level(logging.INFO, logger="eat_plugin.tasks.pretraining"):
        first_update_report(model, {"loss": float(loss)}, 4)
    text = caplog.text
    assert f"first update: loss {float(loss) / 4:.3f}, chance ln {NUM_CLASSES} = {math.log(NUM_CLASSES):.3f}" in text
    assert "2 trainable parameters got no gradient" in text and "unused.weight" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eat_plugin.tasks.pretraining"):
        first_update_report(model, {"loss": 40.0 * 4}, 4)  # a loss summed instead of averaged, say
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("first update: loss: initial loss 40.000 nats") for m in warnings), warnings


def test_first_update_report_expects_no_gradient_for_heads_in_phase_one(caplog):
    model = tiny_pretraining_model(num_machine_ids=7, lambda_machine_id=1.0, semantic_start_update=10).train()
    out = model(torch.randn(2, 1, 128, 128), id=[0, 1], machine_id=torch.tensor([0, 6]))
    sum(v.sum() for v in out["losses"].values()).backward()
    with caplog.at_level(logging.INFO, logger="eat_plugin.tasks.pretraining"):
        first_update_report(model, {"loss": 1.0, "machine_id_ce": float(out["machine_id_ce"])}, out["sample_size"])
    assert "machine_id_ce" in caplog.text and "chance ln 7" in caplog.text
    assert "got no gradient" not in caplog.text  # the heads' zero gradient is phase one, not a bug
