"""The official fine-tuned checkpoint loads through fairseq's loader (no pre-training file needed)
and reproduces the official eval-mode logits, backbone features and losses."""

import pytest
import torch

from helpers import load_with_fairseq


def load(golden_dir, data_dir, **overrides):
    model, _, task = load_with_fairseq(golden_dir / "finetune" / "checkpoint_last.pt", data=str(data_dir), **overrides)
    return model, task


@pytest.fixture
def golden(golden_dir):
    return torch.load(golden_dir / "model_ref.pt", map_location="cpu", weights_only=False)["finetune"]


def test_official_finetuned_checkpoint_eval_outputs(golden_dir, golden_data, golden):
    model, task = load(golden_dir, golden_data)
    assert type(model).__name__ == "MaeImageClassificationModel"
    assert type(task).__name__ == "MaeImageClassificationTask"
    assert not (golden_data.parent / "pretrain").exists()  # model_path points nowhere: cfg only
    tol = golden["tolerances"]
    imgs, label = golden["input"]["imgs"], golden["input"]["label"]
    model.eval()
    torch.testing.assert_close(model(imgs), golden["logits"], atol=tol["logits"]["atol"], rtol=tol["logits"]["rtol"])
    features = model.model.extract_features(imgs, padding_mask=None, mask=False, remove_extra_tokens=False)["x"]
    torch.testing.assert_close(features, golden["backbone_x"], atol=tol["backbone_x"]["atol"], rtol=tol["backbone_x"]["rtol"])
    result = model(imgs=imgs, label=label)
    expected = golden["eval_forward"]
    torch.testing.assert_close(result["losses"]["regression"], expected["losses"]["regression"], atol=1e-5, rtol=1e-5)
    assert result["sample_size"] == expected["sample_size"] and int(result["correct"]) == int(expected["correct"]) == 2


def test_official_finetuned_checkpoint_train_loss(golden_dir, golden_data, golden):
    expected = golden["train_forward"]
    model, _ = load(golden_dir, golden_data, **expected["arg_overrides"])  # no drop path / SpecAugment / mixup
    model.train()
    result = model(imgs=golden["input"]["imgs"], label=golden["input"]["label"])
    torch.testing.assert_close(result["losses"]["regression"], expected["losses"]["regression"], atol=1e-5, rtol=1e-5)
    assert result["sample_size"] == expected["sample_size"]


def test_official_batch_from_the_task(golden_dir, golden_data, golden):
    _, task = load(golden_dir, golden_data)
    task.load_dataset("eval")
    dataset = task.dataset("eval")
    batch = dataset.collater([dataset[i] for i in range(4)])
    assert torch.equal(batch["net_input"]["label"], golden["input"]["label"])
    torch.testing.assert_close(batch["net_input"]["imgs"], golden["input"]["imgs"], atol=7e-3, rtol=0)
