"""ONNX export (``eat_plugin.onnx_export``, ``scripts/export_onnx.py``) and the runtime-only client
(``scripts/run_onnx.py``): ONNX Runtime equals PyTorch on several shapes, a shape outside the exported range
is one clear error, and the client's front end is the plugin's."""

import json

import numpy as np
import pytest
import torch

from eat_plugin.api import load_model
from eat_plugin.onnx_export import OnnxSession, export_onnx
from helpers import load_script

TOLERANCE = 1e-4  # float32 kernels of two runtimes; measured ~1e-7


@pytest.fixture(scope="module")
def golden_models():
    from conftest import GOLDEN

    return (load_model(GOLDEN / "finetune" / "checkpoint_last.pt", target_length=128),
            load_model(GOLDEN / "pretrain" / "checkpoint_last.pt", target_length=128), GOLDEN)


def test_classifier_export_matches_pytorch_on_several_shapes_and_refuses_others(golden_models, tmp_path):
    classifier, _, _ = golden_models
    spec = export_onnx(classifier, tmp_path / "model.onnx", "classifier", max_frames=256)
    assert spec.outputs == ["logits"] and (spec.min_frames, spec.max_frames, spec.frame_step) == (16, 256, 16)
    assert max(spec.verified.values()) < TOLERANCE
    session = OnnxSession(tmp_path / "model.onnx")  # spec read back from model.json
    for batch, frames in ((1, 16), (4, 128), (2, 240), (5, 256)):
        fbank = torch.randn(batch, 1, frames, 128)
        with torch.no_grad():
            expected = classifier.network.eval()(fbank).numpy()
        np.testing.assert_allclose(session.run(fbank.numpy())[0], expected, atol=TOLERANCE, rtol=0)
    for shape, message in (((1, 1, 130, 128), "130 frames: this export takes multiples of 16 from 16 to 256"),
                           ((1, 1, 272, 128), "272 frames"), ((1, 1, 128, 64), "expected \\(batch, 1, frames, 128\\)")):
        with pytest.raises(ValueError, match=message):
            session.run(np.zeros(shape, dtype=np.float32))
    with pytest.raises(ValueError, match="max_frames=1040"):
        export_onnx(classifier, tmp_path / "too_long.onnx", max_frames=1040)  # the position table ends at 1024


def test_encoder_export_with_every_layer(golden_models, tmp_path):
    _, encoder, _ = golden_models
    with pytest.raises(ValueError, match="no classifier head"):
        export_onnx(encoder, tmp_path / "x.onnx", "classifier")
    spec = export_onnx(encoder, tmp_path / "encoder.onnx", "encoder", all_layers=True)
    assert spec.outputs == ["tokens", "layer_results"] and spec.max_frames == 128
    fbank = torch.randn(3, 1, 64, 128)
    tokens, layers = OnnxSession(tmp_path / "encoder.onnx").run(fbank.numpy())
    with torch.no_grad():
        out = encoder.backbone.extract_features(fbank, mask=False, remove_extra_tokens=False)
    np.testing.assert_allclose(tokens, out["x"].numpy(), atol=TOLERANCE, rtol=0)
    assert layers.shape == (3, encoder.depth, 1 + 4 * 8, out["x"].shape[-1])
    for i, expected in enumerate(out["layer_results"]):
        np.testing.assert_allclose(layers[:, i], expected.numpy(), atol=TOLERANCE, rtol=0)


def test_runtime_only_client_front_end_and_outputs_equal_the_plugins(golden_models, tmp_path):
    classifier, _, golden = golden_models
    script = load_script("export_onnx")
    assert script.main([str(golden / "finetune" / "checkpoint_last.pt"), str(tmp_path / "model.onnx"),
                        "--target-length", "128"]) == 0
    spec = json.loads((tmp_path / "model.json").read_text())
    assert spec["kind"] == "classifier" and spec["front_end"]["mean"] == classifier.front_end.stats.mean
    client = load_script("run_onnx")
    wavs = [golden / "data" / "wavs" / name for name in ("clip_00.wav", "clip_05.wav", "mono_44k1.wav")]
    for wav in wavs:  # the 44.1 kHz clip: resampled the same way
        import soundfile as sf

        wave, rate = sf.read(wav, dtype="float32", always_2d=True)
        expected, _ = classifier.front_end.windows(wave, rate)
        np.testing.assert_allclose(client.fbank_windows(wav, spec), expected.numpy(), atol=1e-5, rtol=0)
    logits = client.run_model(tmp_path / "model.onnx", wavs)
    np.testing.assert_allclose(np.stack(logits), classifier.logits(wavs).numpy(), atol=TOLERANCE, rtol=0)
