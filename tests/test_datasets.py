"""Datasets: batches, skipping, label alignment, weighted sampling, augmentation, bad clips in training."""

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask

from conftest import broadband, write_wav
from eat_plugin.data.augment import noise_and_time_roll, roll_and_gain
from eat_plugin.data.datasets import (BlockMaskSpec, ClipCache, FbankDataset, LabelledFbankDataset,
                                      MachineSoundDataset)
from eat_plugin.data.fbank import AudioError, FbankFrontEnd
from eat_plugin.data.manifest import Clip, ManifestError, read_label_descriptors, write_label_descriptors, write_split

SECONDS = [0.7, 0.3, 1.0, 0.45]  # at 16 kHz: 11200, 4800, 16000, 7200 samples
LABELS = [("dog",), ("cat",), ("dog", "bird"), ("bird",)]


def make_data(tmp_path: Path, seconds=SECONDS, labels=LABELS) -> Path:
    clips = []
    for i, (sec, lab) in enumerate(zip(seconds, labels)):
        write_wav(tmp_path / "audio" / f"c{i}.wav", broadband(sec, seed=i), 16000)
        clips.append(Clip(f"c{i}.wav", int(sec * 16000), lab))
    write_split(tmp_path, "train", tmp_path / "audio", clips)
    write_label_descriptors(tmp_path / "label_descriptors.csv", ["dog", "cat", "bird"])
    return tmp_path


def labelled(data: Path, **kwargs) -> LabelledFbankDataset:
    descriptors = read_label_descriptors(data / "label_descriptors.csv")
    kwargs.setdefault("target_length", 64)
    return LabelledFbankDataset(data / "train.tsv", data / "train.lbl", descriptors, **kwargs)


def test_pretraining_batch(tmp_path):
    data = make_data(tmp_path)
    dataset = FbankDataset(data / "train.tsv", target_length=64)
    assert len(dataset) == 4 and dataset.size(0) == dataset.num_tokens(3) == 1
    batch = dataset.collater([dataset[i] for i in (2, 0)])
    assert batch["id"].tolist() == [2, 0]
    assert list(batch["net_input"]) == ["source", "id"] and batch["net_input"]["id"] == [2, 0]
    assert batch["net_input"]["source"].shape == (2, 1, 64, 128)
    expected = FbankFrontEnd(64, "audioset").from_file(data / "audio" / "c2.wav")
    torch.testing.assert_close(batch["net_input"]["source"][0], expected, rtol=0, atol=0)


def test_labelled_batch_is_multi_hot(tmp_path):
    dataset = labelled(make_data(tmp_path))
    batch = dataset.collater([dataset[i] for i in range(4)])
    assert set(batch["net_input"]) == {"imgs", "id", "label"}
    assert batch["net_input"]["imgs"].shape == (4, 1, 64, 128)
    assert batch["net_input"]["label"].tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]]


def test_short_clips_are_skipped_logged_and_labels_stay_aligned(tmp_path, caplog):
    data = make_data(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = labelled(data, min_sample_size=10000)
    assert len(dataset) == 2  # c1 (4800) and c3 (7200) skipped
    message = caplog.text
    assert "skipped 2 of 4 clips shorter than min_sample_size=10000" in message
    assert "line 3: c1.wav" in message and "line 5: c3.wav" in message
    assert [dataset.audio_path(i).name for i in range(2)] == ["c0.wav", "c2.wav"]
    assert dataset.label_vector(1).tolist() == [1, 0, 1]  # c2's labels, not c1's


def test_all_clips_too_short(tmp_path):
    with pytest.raises(ManifestError, match="no clips left"):
        FbankDataset(make_data(tmp_path) / "train.tsv", target_length=64, min_sample_size=10**6)


def test_single_label_dataset_refuses_multi_label_rows(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest line 4 \(c2.wav\) has 2 labels; a single-label dataset"):
        labelled(make_data(tmp_path), multi_label=False)


def test_dataset_checks_target_length(tmp_path):
    with pytest.raises(ValueError, match="target_length=100 is not a positive multiple of 16"):
        FbankDataset(make_data(tmp_path) / "train.tsv", target_length=100)


# ----------------------------------------------------------------------------- weighted sampling


def weighted(tmp_path, weights, num_samples, **kwargs):
    data = make_data(tmp_path, seconds=[0.1] * len(weights), labels=[("dog",)] * len(weights))
    np.savetxt(data / "w.csv", np.asarray(weights, dtype=float))
    return FbankDataset(data / "train.tsv", target_length=64, weights_file=data / "w.csv",
                        num_samples=num_samples, **kwargs)


def test_weighted_draw_frequencies_follow_the_weights(tmp_path):
    weights = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    dataset = weighted(tmp_path, weights, num_samples=1)
    assert not dataset.can_reuse_epoch_itr_across_epochs
    epochs = 4000
    counts = np.zeros(5)
    for epoch in range(1, epochs + 1):
        dataset.set_epoch(epoch)
        counts[dataset.ordered_indices()] += 1
    expected = weights / weights.sum()
    sigma = np.sqrt(expected * (1 - expected) / epochs)
    assert counts[4] == 0
    assert np.all(np.abs(counts / epochs - expected) <= 4 * sigma + 1e-12), counts / epochs


def test_weighted_epoch_draws_distinct_clips_reproducibly(tmp_path):
    dataset = weighted(tmp_path, [1, 1, 5, 0, 2, 1], num_samples=4)
    dataset.set_epoch(3)
    first = dataset.ordered_indices()
    assert len(set(first.tolist())) == 4 and 3 not in first
    assert np.array_equal(first, dataset.ordered_indices())  # same epoch -> same draw
    draws = set()
    for epoch in range(1, 20):
        dataset.set_epoch(epoch)
        draws.add(tuple(dataset.ordered_indices()))
    assert len(draws) > 1


def test_weights_file_problems(tmp_path):
    data = make_data(tmp_path)
    np.savetxt(data / "w.csv", [1.0, 2.0])
    with pytest.raises(ManifestError, match=r"w.csv: has 2 weights but manifest .* has 4 rows"):
        FbankDataset(data / "train.tsv", target_length=64, weights_file=data / "w.csv")
    np.savetxt(data / "w.csv", [1.0, -2.0, 1.0, 1.0])
    with pytest.raises(ManifestError, match="finite and non-negative"):
        FbankDataset(data / "train.tsv", target_length=64, weights_file=data / "w.csv")
    np.savetxt(data / "w.csv", [1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="num_samples=4: .* the 3 clips with a non-zero weight"):
        FbankDataset(data / "train.tsv", target_length=64, weights_file=data / "w.csv", num_samples=4)


def test_shuffle_is_a_per_epoch_permutation(tmp_path):
    dataset = FbankDataset(make_data(tmp_path) / "train.tsv", target_length=64, shuffle=True)
    orders = set()
    for epoch in range(1, 10):
        dataset.set_epoch(epoch)
        order = dataset.ordered_indices()
        assert sorted(order.tolist()) == [0, 1, 2, 3]
        orders.add(tuple(order))
    assert len(orders) > 1


# ---------------------------------------------------------------------------------- augmentation


def test_roll_and_gain_statistics():
    wave = torch.from_numpy(broadband(0.1))
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(2000):
        out = roll_and_gain(wave, rng)
        gain = float(out.norm() / wave.norm())
        gains.append(gain)
        assert 0.5 <= gain <= 1.5
    out = roll_and_gain(wave, np.random.default_rng(1))
    gain = float(out.norm() / wave.norm())
    assert any(torch.allclose(out / gain, torch.roll(wave, s), atol=1e-5) for s in range(len(wave)))
    assert np.mean(gains) == pytest.approx(1.0, abs=0.01)  # Beta(10,10) + 0.5: mean 1, std 0.109
    assert np.std(gains) == pytest.approx((1 / 84) ** 0.5, abs=0.01)


def test_noise_and_time_roll_bounds():
    fbank = torch.randn(1, 64, 128)
    for seed in range(50):
        out = noise_and_time_roll(fbank, np.random.default_rng(seed))
        shifts = [s for s in range(-10, 10) if torch.all((out - torch.roll(fbank, s, dims=1)).abs() < 0.1)]
        assert len(shifts) >= 1
        noise = out - torch.roll(fbank, shifts[0], dims=1)
        assert noise.min() >= 0 and noise.max() < 0.1


def test_augmentation_is_reproducible_per_epoch_and_off_by_default(tmp_path):
    data = make_data(tmp_path)
    plain = FbankDataset(data / "train.tsv", target_length=64)
    augmented = FbankDataset(data / "train.tsv", target_length=64, roll_aug=True, noise=True, seed=7)
    first = augmented[0]["source"]
    assert torch.equal(first, augmented[0]["source"])
    assert not torch.allclose(first, plain[0]["source"])
    augmented.set_epoch(2)
    assert not torch.allclose(first, augmented[0]["source"])


# ----------------------------------------------------------------- a bad clip during training


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_on_a_bad_clip_names_it(tmp_path, num_workers):
    data = make_data(tmp_path)
    data.joinpath("audio", "c2.wav").write_bytes(b"RIFF....garbage that is not a wave file")
    dataset = FbankDataset(data / "train.tsv", target_length=64)
    task = FairseqTask(FairseqDataclass())
    iterator = task.get_batch_iterator(dataset, max_sentences=2, num_workers=num_workers, seed=1)
    with pytest.raises(AudioError, match=r"train.tsv line 4: .*c2.wav: not audio or corrupt header"):
        for _ in iterator.next_epoch_itr(shuffle=False):
            pass


def test_missing_clip_names_file_and_line(tmp_path):
    data = make_data(tmp_path)
    data.joinpath("audio", "c1.wav").unlink()
    dataset = FbankDataset(data / "train.tsv", target_length=64)
    with pytest.raises(AudioError, match=r"train.tsv line 3: .*c1.wav: audio file not found"):
        dataset[1]


def test_changed_clip_length_is_reported(tmp_path):
    data = make_data(tmp_path)
    write_wav(data / "audio" / "c0.wav", broadband(0.2), 16000)
    with pytest.raises(AudioError, match=r"c0.wav: has 3200 samples but the manifest lists 11200"):
        FbankDataset(data / "train.tsv", target_length=64)[0]


# ----------------------------------------------------------------- the clip cache


def items(dataset, epochs=(1, 2, 3)):
    """Every item of every epoch: (fbank, masks or None) per clip."""
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            out.append((item[dataset.key], item.get("precomputed_mask")))
    return out


CACHE_CASES = {  # dataset options -> what the cache keeps
    "plain + masks": (dict(mask_spec=BlockMaskSpec(clone_batch=2, mask_prob=0.8, mask_length=3)), "fbank"),
    "fbank noise": (dict(noise=True, seed=3), "fbank"),
    "waveform roll + noise": (dict(roll_aug=True, noise=True, seed=3), "wave"),
}


@pytest.mark.parametrize("case", sorted(CACHE_CASES))
def test_a_cached_run_gives_exactly_the_uncached_items(tmp_path, case):
    """Epochs 1-3 through the cache equal a dataset without one, bit for bit (augmentation and masks are
    drawn afresh each epoch), and the cache holds the right stage of each clip: the fbank, or the 16 kHz
    waveform where a random step comes before the fbank."""
    options, level = CACHE_CASES[case]
    data = make_data(tmp_path)
    cache = ClipCache(budget_mb=10)
    cached = FbankDataset(data / "train.tsv", target_length=64, clip_cache=cache, **options)
    plain = FbankDataset(data / "train.tsv", target_length=64, **options)
    for (got, got_mask), (want, want_mask) in zip(items(cached), items(plain)):
        assert torch.equal(got, want)
        assert (got_mask is None and want_mask is None) or torch.equal(got_mask, want_mask)
    assert sorted((index, kind) for _, index, kind in cache.items) == [(i, level) for i in range(4)]
    if level == "fbank":  # the normalised fbank before the noise: the front end's output for the file
        expected = FbankFrontEnd(64, "audioset").from_file(data / "audio" / "c2.wav")
        assert torch.equal(cache.items[(cached.cache_namespace, 2, "fbank")], expected)
    else:  # the file's samples at 16 kHz (written as 16-bit PCM)
        assert cache.items[(cached.cache_namespace, 1, "wave")].shape == (4800,)


def test_a_cached_clip_is_decoded_once_and_served_as_a_copy(tmp_path):
    data = make_data(tmp_path)
    cache = ClipCache(budget_mb=10)
    dataset = FbankDataset(data / "train.tsv", target_length=64, clip_cache=cache)
    first = [dataset[i]["source"].clone() for i in range(4)]
    for path in (data / "audio").iterdir():
        path.unlink()  # from here on only the cache can serve the clips
    dataset.set_epoch(2)
    item = dataset[1]["source"]
    assert torch.equal(item, first[1])
    item.zero_()  # a caller changing its item in place does not reach the kept fbank
    assert torch.equal(dataset[1]["source"], first[1])
    with pytest.raises(AudioError, match="audio file not found"):  # without the cache: read, so missing
        FbankDataset(data / "train.tsv", target_length=64)[1]


def test_the_cache_stops_at_its_budget_and_says_so_once(tmp_path, caplog):
    data = make_data(tmp_path)
    fbank_bytes = 64 * 128 * 4  # one (1, 64, 128) float32 fbank
    cache = ClipCache(budget_mb=2.5 * fbank_bytes / 2**20)  # room for two
    dataset = FbankDataset(data / "train.tsv", target_length=64, clip_cache=cache)
    with caplog.at_level(logging.INFO, logger="eat_plugin.data.datasets"):
        for _ in range(2):
            for i in range(4):
                dataset[i]
    assert sorted(index for _, index, _ in cache.items) == [0, 1]
    assert cache.used_bytes == 2 * fbank_bytes
    assert [r.getMessage() for r in caplog.records].count(
        "clip cache full (0 MB, 2 clips; task.clip_cache_mb=0.078125): further clips are decoded every time") == 1
    with pytest.raises(ValueError, match="task.clip_cache_mb=-1"):
        ClipCache(budget_mb=-1)


def test_dataloader_workers_keep_nothing(tmp_path, monkeypatch):
    """A worker's copy of the dataset arrives with an empty cache (pickled) and never fills it."""
    data = make_data(tmp_path)
    cache = ClipCache(budget_mb=10)
    dataset = FbankDataset(data / "train.tsv", target_length=64, clip_cache=cache)
    dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.clip_cache.items == {} and copy.clip_cache.used_bytes == 0
    assert copy.clip_cache.budget_bytes == cache.budget_bytes
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as inside a worker
    assert torch.equal(copy[1]["source"], FbankDataset(data / "train.tsv", target_length=64)[1]["source"])
    assert copy.clip_cache.items == {}


def test_machine_sound_transformations_keep_the_waveform(tmp_path):
    """The transformation is drawn per epoch before the fbank: the cache keeps the waveform (train), the fbank
    where there is none (test), and the items equal an uncached dataset's."""
    data = make_data(tmp_path, labels=[("dog",), ("cat",), ("dog",), ("bird",)])
    descriptors = read_label_descriptors(data / "label_descriptors.csv")
    for transforms, level in ((True, "wave"), (False, "fbank")):
        cache = ClipCache(budget_mb=10)
        cached, plain = (MachineSoundDataset(data / "train.tsv", data / "train.lbl", descriptors, transforms=transforms,
                                             target_length=64, seed=5, clip_cache=c) for c in (cache, None))
        for (got, _), (want, _) in zip(items(cached), items(plain)):
            assert torch.equal(got, want)
        assert {kind for _, _, kind in cache.items} == {level}
