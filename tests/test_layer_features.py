"""Per-layer features (``EATModel.embed(..., layers=...)``, ``extract_features.py --layers``) are the official
``layer_results``: checked against the golden fixture's outputs of the official implementation."""

import numpy as np
import pytest
import torch

from eat_plugin.api import load_model
from helpers import load_script

WAV = "clip_08.wav"  # shorter than 1.28 s: one window, zero-padded, exactly the golden input row 0


@pytest.fixture
def golden(golden_dir):
    return torch.load(golden_dir / "model_ref.pt", map_location="cpu", weights_only=False)["pretrain"]


@pytest.fixture
def model(golden_dir):
    return load_model(golden_dir / "pretrain" / "checkpoint_last.pt", target_length=128)


def test_every_layer_equals_the_official_layer_results(golden_dir, golden, model):
    assert golden["input"]["wavs"][0] == WAV
    features = model.embed(golden_dir / "data" / "wavs" / WAV, granularity="all", layers="all")  # (L, 1 + N, D)
    official = golden["student"]["layer_results"]  # L x (2, 65, 48), CLS first
    tokens = features.shape[1]  # 1 + the clip's real time patches x 8 (padding trimmed)
    assert features.shape[0] == len(official) == model.depth and tokens < official[0].shape[1]
    tol = golden["tolerances"]["layer_results"]
    for layer, expected in zip(features, official):
        torch.testing.assert_close(layer, expected[0, :tokens], atol=tol["atol"], rtol=tol["rtol"])


def test_layer_selection_granularities_and_the_default(golden_dir, model):
    wav = golden_dir / "data" / "wavs" / WAV
    every = model.embed(wav, granularity="all", layers="all")  # (3, 1 + N, D)
    picked = model.embed(wav, granularity="all", layers=[2, 0])
    torch.testing.assert_close(picked, every[[2, 0]])
    torch.testing.assert_close(model.embed(wav, granularity="all", layers=-1), every[[2]])
    torch.testing.assert_close(model.embed(wav, granularity="utterance", layers="all"), every[:, 0])  # CLS per layer
    frames = model.embed(wav, granularity="frame", layers=[1], reshape=True)  # (1, t, 8, D)
    torch.testing.assert_close(frames.flatten(1, 2), every[[1], 1:])
    default = model.embed(wav, granularity="all")  # unchanged: the last block's OUTPUT (after norm2), not a layer result
    assert default.shape == every.shape[1:] and not torch.allclose(default, every[-1])
    for bad in (3, -4, [], "last", [0.5], True):
        with pytest.raises(ValueError, match="layers="):
            model.embed(wav, layers=bad)


def test_extract_features_script_writes_the_chosen_layers(golden_dir, tmp_path, model):
    script = load_script("extract_features")
    wavs = golden_dir / "data" / "wavs"
    out = tmp_path / "feats"
    assert script.main([str(golden_dir / "pretrain" / "checkpoint_last.pt"), str(wavs / WAV), str(out),
                        "--granularity", "utterance", "--layers", "0,-1", "--target-length", "128"]) == 0
    saved = np.load(next(out.rglob("*.npy")))
    expected = model.embed(wavs / WAV, granularity="utterance", layers=[0, 2]).numpy()
    np.testing.assert_allclose(saved, expected, rtol=1e-6, atol=1e-6)
    assert script.main([str(golden_dir / "pretrain" / "checkpoint_last.pt"), str(wavs / WAV), str(tmp_path / "x"),
                        "--layers", "7"]) == 1  # a 3-block model: one clear error
