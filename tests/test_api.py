"""The Python API (eat_plugin.load_model) against direct computations with the front end and the network.

Tiny checkpoints in the fairseq layout: a pre-trained one, a single-label (ESC-50 style) and a
multi-label (AudioSet style) fine-tuned one, whose pre-training file is gone (they carry its config).
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import eat_plugin
from conftest import tone, write_wav
from eat_plugin.checkpoint import NotACheckpointError, UnsafeCheckpointError
from eat_plugin.data.fbank import NORM_STATS, FbankFrontEnd
from eat_plugin.data.manifest import write_label_descriptors
from helpers import (LABEL_IDS, LABEL_NAMES, NUM_CLASSES, TARGET_LENGTH, RunsCode, build_checkpoints, noise,
                     samples_for)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("api")
    ckpts = build_checkpoints(root)
    ckpts.clip = write_wav(root / "clip.wav", noise(16000, seed=3), 16000)  # 98 frames: 7 time patches
    return ckpts


def read(path: Path):
    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    return wave, rate


def direct_logits(model, fbank: torch.Tensor) -> torch.Tensor:
    """``(1, T, 128)`` -> logits ``(C,)`` straight from the network."""
    with torch.no_grad():
        return model.network(fbank.unsqueeze(0))[0]


def direct_tokens(model, fbank: torch.Tensor) -> torch.Tensor:
    """``(1, T, 128)`` -> the backbone's last-block output ``(1 + N, D)``, as the official feature script."""
    with torch.no_grad():
        return model.backbone.extract_features(fbank.unsqueeze(0), padding_mask=None, mask=False,
                                               remove_extra_tokens=False)["x"][0]


# -------------------------------------------------------------------------------------------- predict


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_predict_top_k_and_scores_equal_a_direct_forward(ckpts, kind):
    model = eat_plugin.load_model(getattr(ckpts, kind))
    assert model.network.single_label == (kind == "single")
    stats = NORM_STATS["esc50" if kind == "single" else "audioset"]  # the training run's statistics
    assert model.front_end.stats == stats and model.front_end.target_length == TARGET_LENGTH
    fbank = FbankFrontEnd(TARGET_LENGTH, stats)(*read(ckpts.clip))  # (1, T, 128)
    logits = direct_logits(model, fbank)
    probs = torch.softmax(logits, -1) if kind == "single" else torch.sigmoid(logits)

    top = model.predict(ckpts.clip, top_k=3)
    assert len(top) == 1 and len(top[0]) == 3
    order = probs.argsort(descending=True)
    assert [name for name, _ in top[0]] == [LABEL_NAMES[i] for i in order[:3]]
    torch.testing.assert_close(torch.tensor([s for _, s in top[0]]), probs[order[:3]])
    assert [s for _, s in top[0]] == sorted((s for _, s in top[0]), reverse=True)
    torch.testing.assert_close(model.scores(ckpts.clip)[0], probs)
    torch.testing.assert_close(model.logits(ckpts.clip)[0], logits)
    assert len(model.predict(ckpts.clip, top_k=50)[0]) == NUM_CLASSES  # k is capped at the class count
    if kind == "single":
        assert sum(s for _, s in model.predict(ckpts.clip, top_k=NUM_CLASSES)[0]) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------- embed


@pytest.mark.parametrize("which", ["pretrained", "single"])
def test_embed_granularities_equal_the_model_features(ckpts, which):
    model = eat_plugin.load_model(getattr(ckpts, which))
    stats = NORM_STATS["audioset" if which == "pretrained" else "esc50"]
    tokens = direct_tokens(model, FbankFrontEnd(TARGET_LENGTH, stats)(*read(ckpts.clip)))  # (1 + 64, D)
    dim = tokens.size(-1)
    time_patches = 7  # ceil(98 frames / 16): the padding's patches are trimmed

    utterance = model.embed(ckpts.clip, "utterance")
    frame = model.embed(ckpts.clip, "frame")
    reshaped = model.embed(ckpts.clip, "frame", reshape=True)
    everything = model.embed(ckpts.clip, "all")
    assert utterance.shape == (dim,)
    assert frame.shape == (time_patches * 8, dim)
    assert reshaped.shape == (time_patches, 8, dim)
    assert everything.shape == (1 + time_patches * 8, dim)
    torch.testing.assert_close(utterance, tokens[0])
    torch.testing.assert_close(frame, tokens[1:1 + time_patches * 8])
    torch.testing.assert_close(reshaped.reshape(-1, dim), frame)
    torch.testing.assert_close(everything, tokens[:1 + time_patches * 8])
    with pytest.raises(ValueError, match="granularity='frames'"):
        model.embed(ckpts.clip, "frames")


def test_long_clip_is_cut_into_windows(ckpts, tmp_path):
    frames = 3 * TARGET_LENGTH - 20  # 364 frames -> 3 windows, the last one padded
    path = write_wav(tmp_path / "long.wav", noise(samples_for(frames), seed=5), 16000)
    model = eat_plugin.load_model(ckpts.single)
    clip = model.clips(path)[0]
    assert clip.windows.shape == (3, 1, TARGET_LENGTH, 128) and clip.n_frames == frames

    fbank = FbankFrontEnd(3 * TARGET_LENGTH, NORM_STATS["esc50"])(*read(path))  # (1, 384, 128), zero-padded
    windows = fbank.view(3, 1, TARGET_LENGTH, 128)
    with torch.no_grad():
        per_window = model.network(windows)  # (3, C)
        tokens = model.backbone.extract_features(windows, mask=False, remove_extra_tokens=False)["x"]  # (3, 65, D)
    torch.testing.assert_close(model.logits(path)[0], per_window.mean(0))
    time_patches = -(-frames // 16)  # 23 of the 24
    expected = torch.cat(list(tokens[:, 1:]))[: time_patches * 8]  # windows concatenated in time
    torch.testing.assert_close(model.embed(path, "frame"), expected)
    torch.testing.assert_close(model.embed(path, "utterance"), tokens[:, 0].mean(0))
    torch.testing.assert_close(model.embed(path, "all"), torch.cat([tokens[:, 0].mean(0, keepdim=True), expected]))


def test_any_rate_and_channel_count_equals_its_mono_16k_version(ckpts, tmp_path):
    rate = 44100
    left, right = noise(int(1.2 * rate), rate, seed=7), tone(1000, 1.2, rate, 0.4)
    stereo = np.stack([left, right], axis=1)  # (S, 2)
    path = write_wav(tmp_path / "stereo_44k.wav", stereo, rate, subtype="FLOAT")
    mono_16k = torchaudio.functional.resample(torch.from_numpy(stereo.mean(axis=1)), rate, 16000)  # down-mix first
    front_end = FbankFrontEnd(TARGET_LENGTH, NORM_STATS["audioset"])
    model = eat_plugin.load_model(ckpts.multi)
    expected = direct_logits(model, front_end(mono_16k, 16000))
    torch.testing.assert_close(model.logits(path)[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.logits((stereo, rate))[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.logits((mono_16k, 16000))[0], expected)
    torch.testing.assert_close(model.logits(stereo, sample_rate=rate)[0], expected, rtol=1e-4, atol=1e-5)
    tokens = direct_tokens(model, front_end(mono_16k, 16000))
    torch.testing.assert_close(model.embed((stereo, rate), "all"), tokens[: 1 + 8 * 8], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="sample rate"):
        model.logits([stereo])


def test_batched_lists_equal_one_by_one(ckpts, tmp_path):
    paths = [write_wav(tmp_path / "a.wav", noise(8000, seed=11), 16000),
             write_wav(tmp_path / "b.wav", noise(samples_for(300), seed=12), 16000),  # 3 windows
             write_wav(tmp_path / "c.wav", noise(28665, 22050, seed=13), 22050)]
    model = eat_plugin.load_model(ckpts.multi, batch_size=2)  # windows split across forward passes
    one_by_one = torch.stack([model.logits(p)[0] for p in paths])
    torch.testing.assert_close(model.logits(paths), one_by_one)
    assert model.predict(paths, top_k=2) == [model.predict(p, top_k=2)[0] for p in paths]
    for granularity in ("utterance", "frame", "all"):
        batched = model.embed(paths, granularity)
        assert isinstance(batched, list) and len(batched) == 3
        for features, path in zip(batched, paths):
            torch.testing.assert_close(features, model.embed(path, granularity))


# ---------------------------------------------------------------------------------------------- labels


def test_label_names_from_csv_data_dir_or_stored_ids(ckpts, tmp_path):
    assert eat_plugin.load_model(ckpts.single).label_names == LABEL_NAMES  # the fine-tuning data's table
    other = tmp_path / "names.csv"
    write_label_descriptors(other, LABEL_IDS, [f"class {i}" for i in range(NUM_CLASSES)])
    model = eat_plugin.load_model(ckpts.single, labels=other)
    assert model.label_names == [f"class {i}" for i in range(NUM_CLASSES)]
    assert {name for name, _ in model.predict(ckpts.clip, top_k=NUM_CLASSES)[0]} == set(model.label_names)

    moved = tmp_path / "moved"  # the training data is gone: the ids stored in task_state
    moved.mkdir()
    state = torch.load(ckpts.single, weights_only=False)
    state["cfg"]["task"]["data"] = str(moved)
    torch.save(state, tmp_path / "moved.pt")
    assert eat_plugin.load_model(tmp_path / "moved.pt").label_names == LABEL_IDS
    state["task_state"] = {}
    torch.save(state, tmp_path / "bare.pt")
    bare = eat_plugin.load_model(tmp_path / "bare.pt")
    assert bare.label_names is None
    assert all(name.startswith("class_") for name, _ in bare.predict(ckpts.clip)[0])


def test_class_table_with_another_class_count(ckpts, tmp_path, caplog):
    short = tmp_path / "short.csv"
    write_label_descriptors(short, LABEL_IDS[:-1])
    with pytest.raises(ValueError, match=rf"short\.csv: lists {NUM_CLASSES - 1} classes but the model has {NUM_CLASSES}"):
        eat_plugin.load_model(ckpts.single, labels=short)

    changed = tmp_path / "changed"  # the training data's table grew since fine-tuning: the stored ids win
    changed.mkdir()
    write_label_descriptors(changed / "label_descriptors.csv", [*LABEL_IDS, "/m/new"])
    state = torch.load(ckpts.single, weights_only=False)
    state["cfg"]["task"]["data"] = str(changed)
    torch.save(state, tmp_path / "changed.pt")
    with caplog.at_level("WARNING"):
        assert eat_plugin.load_model(tmp_path / "changed.pt").label_names == LABEL_IDS
    assert f"lists {NUM_CLASSES + 1} classes but the model has {NUM_CLASSES}" in caplog.text


# -------------------------------------------------------------------------------------------- loading


def test_pretrained_checkpoint_embeds_but_cannot_predict(ckpts):
    model = eat_plugin.load_model(ckpts.pretrained)
    assert not model.is_classifier and model.label_names is None
    assert model.embed(ckpts.clip, "utterance").shape == (32,)
    with pytest.raises(ValueError, match="pre-trained checkpoint without a classifier head"):
        model.predict(ckpts.clip)


def test_malicious_checkpoint_is_refused_and_nothing_runs(ckpts, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(ckpts.single, weights_only=False)
    state["extra_state"]["payload"] = RunsCode(marker)
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="evil.pt: refused to load"):
        eat_plugin.load_model(tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint not found"):
        eat_plugin.load_model(tmp_path / "nope.pt")


def test_files_that_are_not_checkpoints_say_so(ckpts, tmp_path):
    (tmp_path / "text.pt").write_text("model weights go here\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(ckpts.single.read_bytes()[:4096])  # a zip without its directory
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for name, message in [("text.pt", r"not a torch checkpoint \(a file starting with b'mode'\)"),
                          ("empty.pt", r"not a torch checkpoint \(an empty file\)"),
                          ("cut.pt", r"not a torch checkpoint|corrupt or truncated torch checkpoint"),
                          ("tensor.pt", r"holds a Tensor, not a checkpoint dict")]:
        with pytest.raises(NotACheckpointError, match=rf"{name}: {message}"):
            eat_plugin.load_model(tmp_path / name)
