"""prepare_custom: class folders or a CSV of any labelled audio in, official manifests + summary.json out.

Tiny trees of short 16 kHz clips in ``tmp_path``; the script runs in-process through ``main([...])`` and its
output is checked against hand-written expectations and statistics computed here independently.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from conftest import broadband, write_wav
from eat_plugin.data import custom
from eat_plugin.data.manifest import Clip, read_label_descriptors, read_manifest
from helpers import SCRIPTS, read_split, skipped_reasons
from helpers import load_script as script

SR = 16000


def clip(path: Path, seconds: float, seed: int = 0, channels: int = 1) -> int:
    """A broadband 16-bit clip at 16 kHz; returns its number of samples."""
    wave = 0.5 * broadband(seconds, SR, seed)  # (S,)
    if channels > 1:
        wave = np.stack([wave * (0.5 + 0.5 * c) for c in range(channels)], axis=1)  # (S, C)
    write_wav(path, wave, SR)
    return len(wave)


def write_bad_files(folder: Path) -> Dict[str, str]:
    """One bad file of each kind; returns ``{file name: expected words of its skip reason}``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.wav").write_text("this is not audio\n")
    write_wav(folder / "empty.wav", np.zeros(0, np.float32), SR)
    write_wav(folder / "silent.wav", np.zeros(SR // 2, np.float32), SR)
    clip(folder / "short.wav", 0.05)
    return {"garbage.wav": "not audio", "empty.wav": "no samples", "silent.wav": "silent", "short.wav": "too short"}


def prepare_custom(*args) -> int:
    return script("prepare_custom").main([str(a) for a in args])


def summary_of(out: Path) -> Dict:
    return json.loads((out / "summary.json").read_text())


def labels_per_split(out: Path) -> Dict[str, Counter]:
    splits = [s for s in custom.SPLITS if (out / f"{s}.tsv").is_file()]
    return {s: Counter(label for ids in read_split(out, s)[1].values() for label in ids) for s in splits}


# ----------------------------------------------------------------------------------------------------
# CSV input


CSV_ROWS = """path,labels,split
a.wav,dog,train
b.wav,cat;dog,Train
sub/c.wav,cat,validation
d.wav, Dog ,eval
e.wav,bird;cat,train
garbage.wav,cat,train
empty.wav,cat,train
silent.wav,dog,valid
short.wav,bird,test
missing.wav,dog,train
a.wav,dog,valid
"""


def make_csv_dataset(ds: Path) -> Dict[str, str]:
    for name, seconds in {"a.wav": 0.5, "b.wav": 0.6, "sub/c.wav": 0.7, "d.wav": 0.4, "e.wav": 0.45}.items():
        clip(ds / name, seconds, seed=len(name) + int(10 * seconds))
    bad = write_bad_files(ds)
    (ds / "labels.csv").write_text(CSV_ROWS)
    return {**bad, "missing.wav": "not found", "a.wav": "duplicate"}


def test_csv_with_split_column_writes_the_expected_manifests(tmp_path):
    ds = tmp_path / "ds"
    bad = make_csv_dataset(ds)
    out = tmp_path / "out"
    assert prepare_custom("--csv", ds / "labels.csv", "--out", out) == 0

    root = str(ds.resolve())
    expected = {
        "train.tsv": f"{root}\na.wav\t8000\nb.wav\t9600\ne.wav\t7200\n",
        "train.lbl": "a.wav\tdog\nb.wav\tcat,dog\ne.wav\tbird,cat\n",
        "valid.tsv": f"{root}\nsub/c.wav\t11200\n",
        "valid.lbl": "sub/c.wav\tcat\n",
        "test.tsv": f"{root}\nd.wav\t6400\n",
        "test.lbl": "d.wav\tDog\n",
        "label_descriptors.csv": '0,Dog,"Dog"\n1,bird,"bird"\n2,cat,"cat"\n3,dog,"dog"\n',
    }
    for name, text in expected.items():
        assert (out / name).read_text() == text, name

    reasons = skipped_reasons(out / "summary.json")
    assert set(reasons) == set(bad)
    for name, words in bad.items():
        assert reasons[name].startswith(words) or words in reasons[name], (name, reasons[name])
    summary = summary_of(out)
    assert [Path(k["path"]).name for k in summary["skipped"]["valid"]] == ["a.wav", "silent.wav"]
    assert summary["multi_label"] is True
    assert summary["classes"] == ["Dog", "bird", "cat", "dog"]
    assert summary["duplicates"] == [str(ds / "a.wav")]
    assert summary["label_conflicts"] == [["dog", " Dog "]]
    assert any("' Dog '" in w and "distinct classes" in w for w in summary["warnings"])
    assert any("listed more than once" in w for w in summary["warnings"])
    assert summary["norm_stats"]["clips"] == 3


def test_csv_merge_similar_labels_maps_to_the_most_frequent_spelling(tmp_path):
    ds = tmp_path / "ds"
    make_csv_dataset(ds)
    out = tmp_path / "out"
    assert prepare_custom("--csv", ds / "labels.csv", "--out", out, "--merge-similar-labels") == 0
    assert read_label_descriptors(out / "label_descriptors.csv").ids == ["bird", "cat", "dog"]
    assert (out / "test.lbl").read_text() == "d.wav\tdog\n"
    summary = summary_of(out)
    assert summary["label_conflicts"] == [["dog", " Dog "]]
    assert any("merged into 'dog'" in w for w in summary["warnings"])


def test_tsv_without_split_column_is_split_and_rooted_at_the_common_ancestor(tmp_path):
    audio, elsewhere = tmp_path / "audio", tmp_path / "elsewhere"
    rows = ["filename\tcategory"]
    for c, label in enumerate(["rain", "wind"]):
        for i in range(10):
            clip(audio / label / f"{i}.flac" if i else audio / f"{label}{i}.wav", 0.3, seed=10 * c + i)
            rows.append(f"{label}/{i}.flac\t{label}" if i else f"{label}{i}.wav\t{label}")
    clip(elsewhere / "far.wav", 0.3, seed=99)
    rows.append(f"{elsewhere / 'far.wav'}\twind")
    listing = tmp_path / "meta" / "list.tsv"
    listing.parent.mkdir()
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert prepare_custom("--csv", listing, "--audio-root", audio, "--out", out, "--test-fraction", "0") == 0

    assert not (out / "test.tsv").exists()
    assert read_manifest(out / "train.tsv").root == tmp_path.resolve()
    per_split = labels_per_split(out)
    assert per_split == {"train": Counter(rain=9, wind=10), "valid": Counter(rain=1, wind=1)}
    train, _ = read_split(out, "train")
    assert "elsewhere/far.wav" in train or "elsewhere/far.wav" in read_split(out, "valid")[0]
    assert summary_of(out)["multi_label"] is False


# ----------------------------------------------------------------------------------------------------
# Class folders


def test_class_folders_single_label_with_bad_and_ignored_files(tmp_path):
    root = tmp_path / "sounds"
    kept = set()
    for c, (label, count) in enumerate({"dog": 6, "cat": 6, "dog bark": 4}.items()):
        for i in range(count):
            rel = f"{label}/deep/er/{i}.wav" if i == 0 else f"{label}/{i}.wav"
            clip(root / rel, 0.2 + 0.01 * i, seed=10 * c + i)
            kept.add(rel)
    bad = write_bad_files(root / "bird")
    (root / "dog" / "notes.txt").write_text("not a clip")
    (root / "cat" / "readme.md").write_text("not a clip")
    clip(root / "dog" / ".hidden.wav", 0.2)
    clip(root / ".cache" / "x" / "y.wav", 0.2)
    (root / "empty_class").mkdir()
    out = tmp_path / "out"
    assert prepare_custom("--folders", root, "--out", out) == 0

    descriptors = read_label_descriptors(out / "label_descriptors.csv")
    assert (descriptors.ids, descriptors.names) == (["cat", "dog", "dog_bark"], ["cat", "dog", "dog bark"])
    written = {rel: ids for s in ("train", "valid", "test") for rel, ids in read_split(out, s)[1].items()}
    assert set(written) == kept
    for rel, ids in written.items():
        assert ids == [rel.split("/")[0].replace(" ", "_")]
    assert all(set(counts) == {"cat", "dog", "dog_bark"} for counts in labels_per_split(out).values())

    summary = summary_of(out)
    assert skipped_reasons(out / "summary.json").keys() == bad.keys()
    for k in summary["skipped"]["unsplit"]:
        assert bad[Path(k["path"]).name] in k["reason"]
    assert summary["info"]["non-audio files ignored"] == "2"
    assert any("'bird'" in w and "dropped" in w for w in summary["warnings"])
    assert any("'empty_class'" in w for w in summary["warnings"])
    assert summary["multi_label"] is False and summary["classes"] == ["cat", "dog", "dog_bark"]


def test_demo_folders_layout_prepares_every_class_in_every_split(tmp_path):
    args = ["--clips-per-class-per-fold", "1", "--sample-rate", str(SR), "--seconds", "0.25"]
    demo = script("make_demo_data")
    assert demo.main(["--out", str(tmp_path / "esc"), *args]) == 0
    assert demo.main(["--out", str(tmp_path / "folders"), "--layout", "folders", *args]) == 0
    classes = sorted(demo.CLASSES)
    assert sorted(p.name for p in (tmp_path / "folders").iterdir()) == classes
    for path in (tmp_path / "folders").rglob("*.wav"):  # the same clips as the ESC-50 layout
        assert path.read_bytes() == (tmp_path / "esc" / "audio" / path.name).read_bytes()
    assert len(list((tmp_path / "folders").rglob("*.wav"))) == 5 * len(classes)

    out = tmp_path / "out"
    assert prepare_custom("--folders", tmp_path / "folders", "--out", out) == 0
    per_split = labels_per_split(out)
    assert list(per_split) == ["train", "valid", "test"]
    assert all(sorted(counts) == classes for counts in per_split.values())
    assert summary_of(out)["warnings"] == []


# ----------------------------------------------------------------------------------------------------
# The stratified split


def clips_of(sizes: Dict[str, int]) -> List[Clip]:
    return [Clip(f"{label}/{i:03d}.wav", 100, (label,)) for label, n in sizes.items() for i in range(n)]


def per_class(splits: Dict[str, List[Clip]]) -> Dict[str, Counter]:
    return {s: Counter(label for c in clips for label in c.label_ids) for s, clips in splits.items()}


def test_stratified_split_keeps_every_class_in_every_split_it_can():
    clips = clips_of({"a": 20, "b": 7, "c": 3, "d": 2, "e": 1})
    splits, warnings = custom.stratified_split(clips, 0.1, 0.1, seed=0)
    assert per_class(splits) == {
        "train": Counter(a=16, b=5, c=1, d=1, e=1),
        "valid": Counter(a=2, b=1, c=1, d=1),
        "test": Counter(a=2, b=1, c=1),
    }
    assert sorted(c.relpath for s in splits.values() for c in s) == sorted(c.relpath for c in clips)
    assert all(s == sorted(s, key=lambda c: c.relpath) for s in splits.values())
    assert len(warnings) == 1 and "'d' (2 clips)" in warnings[0] and "'e' (1 clip)" in warnings[0]
    assert "'c'" not in warnings[0]


def test_stratified_split_is_deterministic_and_order_independent():
    clips = clips_of({"a": 20, "b": 12})
    first, _ = custom.stratified_split(clips, 0.1, 0.1, seed=0)
    again, _ = custom.stratified_split(list(reversed(clips)), 0.1, 0.1, seed=0)
    other, _ = custom.stratified_split(clips, 0.1, 0.1, seed=1)
    assert first == again
    assert first != other
    assert per_class(first) == per_class(other)


@pytest.mark.parametrize(
    "valid, test, n, expected",
    [(0.2, 0.0, 40, [8]), (0.25, 0.15, 40, [10, 6]), (0.1, 0.1, 25, [3, 3]), (0.1, 0.1, 5, [1, 1]),
     (0.5, 0.4, 4, [1, 2]), (0.1, 0.1, 2, [1, 0]), (0.1, 0.1, 1, [0, 0])],
)  # fmt: skip
def test_held_out_sizes_respect_the_fractions(valid, test, n, expected):
    fractions = [valid, test] if test else [valid]
    assert custom.held_out_sizes(n, fractions) == expected
    splits, _ = custom.stratified_split(clips_of({"x": n}), valid, test, seed=3)
    assert [len(splits[s]) for s in custom.split_names(test)[1:]] == expected


def test_multi_label_split_stratifies_by_the_rarest_label():
    clips = [Clip(f"{r}{i}.wav", 100, ("common", r)) for r in ("r1", "r2", "r3") for i in range(3)]
    splits, warnings = custom.stratified_split(clips, 0.1, 0.1, seed=0)
    assert all(counts == Counter(common=3, r1=1, r2=1, r3=1) for counts in per_class(splits).values())
    assert warnings == []
    # "x" is never a clip's rarest label: its three clips land wherever r4..r6 go (train), with a warning.
    clips = [Clip(f"{r}.wav", 100, ("x", r)) for r in ("r4", "r5", "r6")]
    _, warnings = custom.stratified_split(clips, 0.1, 0.1, seed=0)
    assert any("'x' (3 clips) is missing from valid, test" in w for w in warnings)


# ----------------------------------------------------------------------------------------------------
# Statistics


def reference_fbank(path: Path, target_length: int) -> np.ndarray:
    """The EAT front end written out: mono, DC removed, Kaldi fbank, zero-padded/cropped; ``(T, 128)`` float64."""
    wave, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    assert sample_rate == SR
    wave = torch.from_numpy(wave.mean(axis=1))  # (S,)
    fbank = torchaudio.compliance.kaldi.fbank(
        (wave - wave.mean())[None], htk_compat=True, sample_frequency=SR, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10, frame_length=25,
    ).numpy().astype(np.float64)  # fmt: skip
    padded = np.zeros((target_length, 128))
    padded[: min(len(fbank), target_length)] = fbank[:target_length]
    return padded


def test_summary_statistics_equal_a_direct_computation(tmp_path):
    root = tmp_path / "sounds"
    durations = []
    for c, label in enumerate(["hum", "tick", "wash"]):
        for i in range(4):
            seconds = 0.3 + 0.13 * (4 * c + i)
            num_samples = clip(root / label / f"{i}.wav", seconds, seed=4 * c + i, channels=1 + (i == 1))
            durations.append(num_samples / SR)
    out = tmp_path / "out"
    assert prepare_custom("--folders", root, "--out", out) == 0
    summary = summary_of(out)

    percentiles = np.percentile(durations, [0, 5, 50, 95, 100])
    assert list(summary["duration_seconds"].values()) == pytest.approx(percentiles.tolist(), abs=1e-12)
    frames = 1 + (round(percentiles[3] * SR) - 400) // 160
    target_length = min(1024, max(16, math.ceil(frames / 16) * 16))
    assert summary["target_length"] == target_length

    train = read_manifest(out / "train.tsv")
    fbanks = np.stack([reference_fbank(train.audio_path(i), target_length) for i in range(len(train))])
    stats = summary["norm_stats"]
    assert (stats["split"], stats["clips"], stats["target_length"]) == ("train", len(train), target_length)
    np.testing.assert_allclose([stats["mean"], stats["std"]], [fbanks.mean(), fbanks.std()], rtol=1e-6)

    parsed = dict(token.split("=") for token in summary["overrides"].split())
    assert set(parsed) == {"task.target_length", "task.norm_mean", "task.norm_std"}
    assert int(parsed["task.target_length"]) == summary["target_length"]
    assert abs(float(parsed["task.norm_mean"]) - stats["mean"]) <= 1e-4
    assert abs(float(parsed["task.norm_std"]) - stats["std"]) <= 1e-4
    assert (out / "overrides.txt").read_text() == summary["overrides"] + "\n"  # for $(cat ...) in a shell


@pytest.mark.parametrize(
    "seconds, expected",
    [(0.01, 16), (0.1, 16), (0.2, 32), (1.0, 112), (5.0, 512), (10.0, 1008), (10.24, 1024), (12.0, 1024)],
)
def test_target_length_rule(seconds, expected):
    # 1.0 s = 16000 samples -> 1 + 15600 // 160 = 98 frames -> 112; 10 s -> 998 -> 1008; 12 s -> capped.
    assert custom.suggest_target_length(seconds) == expected


# ----------------------------------------------------------------------------------------------------
# Errors


def test_missing_column_is_a_clear_error(tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("file_path,tag\nx.wav,dog\n")
    assert prepare_custom("--csv", listing, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert str(listing) in err and "path column" in err and "['file_path', 'tag']" in err
    assert prepare_custom("--csv", listing, "--out", tmp_path / "out", "--path-column", "file_path") == 1
    err = capsys.readouterr().err
    assert "label column" in err and "Traceback" not in err
    args = ["--path-column", "file_path", "--label-column", "labels"]
    assert prepare_custom("--csv", listing, "--out", tmp_path / "out", *args) == 1
    assert "column 'labels'" in capsys.readouterr().err


def test_bad_split_value_names_file_line_and_value(tmp_path, capsys):
    clip(tmp_path / "a.wav", 0.2)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label,split\na.wav,dog,train\na.wav,dog,training\n")
    assert prepare_custom("--csv", listing, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{listing} line 3" in err and "'training'" in err


def test_empty_folder_and_unwritable_labels_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert prepare_custom("--folders", tmp_path / "empty", "--out", tmp_path / "out") == 1
    assert "no class folders" in capsys.readouterr().err
    (tmp_path / "nothing" / "dog").mkdir(parents=True)
    (tmp_path / "nothing" / "dog" / "notes.txt").write_text("x")
    assert prepare_custom("--folders", tmp_path / "nothing", "--out", tmp_path / "out") == 1
    assert "no audio files" in capsys.readouterr().err
    clip(tmp_path / "comma" / "cats, dogs" / "a.wav", 0.2)
    assert prepare_custom("--folders", tmp_path / "comma", "--out", tmp_path / "out") == 1
    assert "'cats, dogs'" in capsys.readouterr().err


def test_help():
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "prepare_custom.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "--folders" in proc.stdout and "--csv" in proc.stdout
