"""The official pre-training checkpoint loads through fairseq's own loader and reproduces every stored output."""

import pytest
import torch

from eat_plugin.modules.attention import fused_attention
from helpers import load_with_fairseq


@pytest.fixture
def golden(golden_dir):
    return torch.load(golden_dir / "model_ref.pt", map_location="cpu", weights_only=False)["pretrain"]


def load_official(golden_dir, data_dir):
    model, _, task = load_with_fairseq(golden_dir / "pretrain" / "checkpoint_last.pt", data=str(data_dir),
                                       mask_noise_std=0.0)
    return model, task


def close(actual, expected, tol):
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"])


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "eager"])
def test_official_pretraining_checkpoint_reproduces_outputs(golden_dir, golden_data, golden, fused):
    model, task = load_official(golden_dir, golden_data)
    assert type(model).__name__ == "Data2VecMultiModel" and type(task).__name__ == "MaeImagePretrainingTask"
    tol = golden["tolerances"]
    fbank = torch.load(golden_dir / "fbank_ref.pt", map_location="cpu", weights_only=False)["fbank"]
    source = torch.stack([fbank[w] for w in golden["input"]["wavs"]])  # (2, 1, 128, 128)
    with fused_attention(fused):
        model.eval()
        out = model.extract_features(source, padding_mask=None, mask=False, remove_extra_tokens=False)
        close(out["x"], golden["student"]["x"], tol["x"])
        for actual, expected in zip(out["layer_results"], golden["student"]["layer_results"], strict=True):
            close(actual, expected, tol["layer_results"])
        teacher_layers = model.teacher.model(source)
        for actual, expected in zip(teacher_layers, golden["teacher"]["layer_results"], strict=True):
            close(actual[:, 1:], expected, tol["teacher_layer_results"])
        close(model._teacher_targets(source), golden["teacher"]["targets"], tol["teacher_targets"])

        model.train()
        result = model(source=source, precomputed_mask=golden["train_forward"]["precomputed_mask"])
    expected = golden["train_forward"]
    assert result["sample_size"] == expected["sample_size"] == 312
    for key in ("IMAGE_regression", "cls"):
        close(result["losses"][key], expected["losses"][key], tol[key])
        assert result["losses"][key].sum().item() == pytest.approx(expected["loss_sums"][key], rel=1e-4)
    for key in ("masked_pct", "pred_var", "target_var", "ema_decay"):
        assert float(result[key]) == pytest.approx(expected[key], rel=1e-4)
