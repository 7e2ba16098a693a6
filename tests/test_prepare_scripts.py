"""Data-preparation scripts: published layouts in, official manifests out (tiny trees, CPU, in-process).

Every test builds a small tree in ``tmp_path`` in the layout a user downloads, runs the script's
``main([...])`` and checks the written files, read back through ``eat_plugin.data.manifest``, against
expectations computed here independently of the scripts.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile as sf

from eat_plugin.data.manifest import (
    Clip,
    read_label_descriptors,
    read_labels,
    read_manifest,
    write_label_descriptors,
    write_split,
)
from helpers import SCRIPTS, read_split, skipped_reasons
from helpers import load_script as script

SCRIPT_NAMES = ("prepare_esc50", "prepare_spcv2", "prepare_audioset", "make_weights", "make_demo_data")
SR = 16000
ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take"


def write_wav(path: Path, num_samples: int, seed: int = 0, sample_rate: int = SR) -> int:
    """A short 16-bit mono wav of ``num_samples`` samples; returns ``num_samples``."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(num_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sample_rate, subtype="PCM_16")
    return num_samples


def write_truncated_wav(path: Path) -> None:
    """A valid wav with the last half of its bytes cut off (the header still declares the full length)."""
    write_wav(path, 1600)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------------------------------
# ESC-50


ESC_CLASSES = ["dog", "rain", "church_bells"]  # target = position


def make_esc50(root: Path, folds=(1, 2, 3), per_class: int = 2) -> Dict[str, Tuple[int, str, int]]:
    """ESC-50 layout; returns ``{filename: (fold, category, num_samples)}``."""
    clips, rows = {}, []
    for fold in folds:
        for target, category in enumerate(ESC_CLASSES):
            for take in "AB"[:per_class]:
                src = 1000 + 10 * fold + target
                name = f"{fold}-{src}-{take}-{target}.wav"
                num_samples = write_wav(root / "audio" / name, 800 + 37 * len(clips), seed=len(clips))
                clips[name] = (fold, category, num_samples)
                rows.append(f"{name},{fold},{target},{category},False,{src},{take}")
    write_esc50_meta(root, rows)
    return clips


def write_esc50_meta(root: Path, rows: List[str]) -> None:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join([ESC50_HEADER, *rows]) + "\n")


def append_esc50_rows(root: Path, rows: List[str]) -> None:
    with open(root / "meta" / "esc50.csv", "a") as f:
        f.write("\n".join(rows) + "\n")


def test_esc50_folds_hold_out_exactly_one_fold(tmp_path):
    clips = make_esc50(tmp_path / "ESC-50")
    out = tmp_path / "out"
    assert script("prepare_esc50").main(["--esc50-root", str(tmp_path / "ESC-50"), "--out", str(out)]) == 0

    for fold in (1, 2, 3):
        eval_lengths, eval_ids = read_split(out / f"fold{fold}", "eval")
        train_lengths, train_ids = read_split(out / f"fold{fold}", "train")
        assert set(eval_lengths) == {name for name, (f, _, _) in clips.items() if f == fold}
        assert set(train_lengths) == {name for name, (f, _, _) in clips.items() if f != fold}
        for name, length in {**eval_lengths, **train_lengths}.items():
            assert length == clips[name][2]
            assert {**eval_ids, **train_ids}[name] == [clips[name][1]]
        descriptors = read_label_descriptors(out / f"fold{fold}" / "label_descriptors.csv")
        assert descriptors.ids == ESC_CLASSES
        assert descriptors.names == ["dog", "rain", "church bells"]
        assert read_manifest(out / f"fold{fold}" / "eval.tsv").root == (tmp_path / "ESC-50" / "audio").resolve()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_per_split"] == {"fold1": 6, "fold2": 6, "fold3": 6}
    assert skipped_reasons(out / "summary.json") == {}


def test_esc50_folds_option_restricts_written_folds(tmp_path):
    clips = make_esc50(tmp_path / "ESC-50")
    out = tmp_path / "out"
    args = ["--esc50-root", str(tmp_path / "ESC-50"), "--out", str(out), "--folds", "3", "1"]
    assert script("prepare_esc50").main(args) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["fold1", "fold3"]
    train, _ = read_split(out / "fold1", "train")
    assert set(train) == {name for name, (f, _, _) in clips.items() if f in (2, 3)}


def test_esc50_bad_files_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "ESC-50"
    make_esc50(root)
    audio = root / "audio"
    (audio / "1-1-A-0.wav").write_bytes(b"")  # empty
    (audio / "1-2-A-0.wav").write_text("this is not audio\n")  # text renamed .wav
    write_truncated_wav(audio / "2-3-A-1.wav")
    write_wav(audio / "3-4-A-2.wav", 100)  # too short for --min-samples 400
    bad = {
        "1-1-A-0.wav": "empty",
        "1-2-A-0.wav": "not audio",
        "2-3-A-1.wav": "truncated",
        "3-4-A-2.wav": "too short",
        "3-5-A-2.wav": "not found",  # listed, never written
    }
    append_esc50_rows(
        root, [f"{n},{n[0]},{n[-5]},{ESC_CLASSES[int(n[-5])]},False,{n.split('-')[1]},A" for n in bad]
    )
    out = tmp_path / "out"
    assert script("prepare_esc50").main(["--esc50-root", str(root), "--out", str(out), "--min-samples", "400"]) == 0

    reasons = skipped_reasons(out / "summary.json")
    assert set(reasons) == set(bad)
    for name, expected in bad.items():
        assert expected in reasons[name], (name, reasons[name])
    for fold in (1, 2, 3):
        for split in ("train", "eval"):
            lengths, _ = read_split(out / f"fold{fold}", split)
            assert not set(lengths) & set(bad)


def test_full_check_catches_nan_samples(tmp_path):
    root = tmp_path / "ESC-50"
    make_esc50(root)
    wave = np.zeros(800, dtype=np.float32)
    wave[10] = np.nan
    sf.write(root / "audio" / "1-9-A-0.wav", wave, SR, subtype="FLOAT")
    append_esc50_rows(root, ["1-9-A-0.wav,1,0,dog,False,9,A"])

    quick, full = tmp_path / "quick", tmp_path / "full"
    assert script("prepare_esc50").main(["--esc50-root", str(root), "--out", str(quick)]) == 0
    assert script("prepare_esc50").main(["--esc50-root", str(root), "--out", str(full), "--full-check"]) == 0
    assert "1-9-A-0.wav" in read_split(quick / "fold1", "eval")[0]  # the header is fine
    assert "1-9-A-0.wav" not in read_split(full / "fold1", "eval")[0]
    assert "NaN" in skipped_reasons(full / "summary.json")["1-9-A-0.wav"]


def test_esc50_symlinked_clip_keeps_its_path_under_the_root(tmp_path):
    root = tmp_path / "ESC-50"
    make_esc50(root)
    elsewhere = tmp_path / "elsewhere" / "clip.wav"
    write_wav(elsewhere, 999)
    (root / "audio" / "1-7-A-1.wav").symlink_to(elsewhere)
    append_esc50_rows(root, ["1-7-A-1.wav,1,1,rain,False,7,A"])
    out = tmp_path / "out"
    assert script("prepare_esc50").main(["--esc50-root", str(root), "--out", str(out)]) == 0
    assert read_split(out / "fold1", "eval")[0]["1-7-A-1.wav"] == 999


def test_esc50_missing_meta_csv_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "ESC-50"
    (root / "audio").mkdir(parents=True)
    assert script("prepare_esc50").main(["--esc50-root", str(root), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert str(root / "meta" / "esc50.csv") in err and ESC50_HEADER in err
    assert "Traceback" not in err


def test_esc50_target_with_two_categories_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "ESC-50"
    make_esc50(root)
    write_wav(root / "audio" / "1-8-A-0.wav", 800)
    append_esc50_rows(root, ["1-8-A-0.wav,1,0,cat,False,8,A"])
    assert script("prepare_esc50").main(["--esc50-root", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "target 0" in err and "'dog'" in err and "'cat'" in err


# ----------------------------------------------------------------------------------------------------
# Speech Commands v2


SPC_WORDS = ["yes", "down", "go"]  # class index = position in sorted order


def make_spcv2(root: Path) -> Dict[str, set]:
    """Speech Commands layout, 4 clips per word; returns the expected relpaths of each split."""
    expected = {"train": set(), "valid": set(), "eval": set()}
    valid, test = [], []
    for w, word in enumerate(SPC_WORDS):
        for i in range(4):
            rel = f"{word}/{w:02d}{i:06d}_nohash_{i}.wav"
            write_wav(root / rel, 900 + 10 * i + w, seed=10 * w + i)
            split = {0: "valid", 1: "eval"}.get(i, "train")
            expected[split].add(rel)
            (valid if split == "valid" else test if split == "eval" else []).append(rel)
    write_wav(root / "_background_noise_" / "white_noise.wav", 3200)
    test.append("go/missing_nohash_0.wav")  # listed but not there
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return expected


def test_spcv2_splits_follow_the_lists(tmp_path):
    root = tmp_path / "speech_commands"
    expected = make_spcv2(root)
    out = tmp_path / "out"
    assert script("prepare_spcv2").main(["--spc-root", str(root), "--out", str(out), "--expect-classes", "3"]) == 0

    descriptors = read_label_descriptors(out / "label_descriptors.csv")
    assert descriptors.ids == ["down", "go", "yes"]
    for split, relpaths in expected.items():
        lengths, ids = read_split(out, split)
        assert set(lengths) == relpaths
        manifest = read_manifest(out / f"{split}.tsv")
        labels = read_labels(out / f"{split}.lbl", descriptors, manifest)
        for row, row_labels in zip(manifest.rows, labels):
            word = row.relpath.split("/")[0]
            assert row_labels == [sorted(SPC_WORDS).index(word)]
            assert row.num_samples == 900 + 10 * int(row.relpath.split("_")[-1][0]) + SPC_WORDS.index(word)
        assert not any("_background_noise_" in rel for rel in lengths)
    reasons = skipped_reasons(out / "summary.json")
    assert list(reasons) == ["missing_nohash_0.wav"]
    assert "testing_list.txt" in reasons["missing_nohash_0.wav"]


def test_spcv2_class_count_mismatch_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "speech_commands"
    make_spcv2(root)
    assert script("prepare_spcv2").main(["--spc-root", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "found 3 keyword folders" in err and "expected 35" in err


def test_spcv2_missing_list_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "speech_commands"
    make_spcv2(root)
    (root / "validation_list.txt").unlink()
    args = ["--spc-root", str(root), "--out", str(tmp_path / "out"), "--expect-classes", "0"]
    assert script("prepare_spcv2").main(args) == 1
    assert str(root / "validation_list.txt") in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# AudioSet


ONTOLOGY = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0jbk,"Animal"\n'
SEGMENT_HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)


def make_audioset(tmp_path: Path) -> Dict[str, Path]:
    """Ontology, three segment csvs and an audio folder using every YTID naming convention."""
    audio = tmp_path / "audioset_audio"
    write_wav(audio / "AAAAAAAAAAA.wav", 1000, seed=1)  # stem == YTID
    write_wav(audio / "bal" / "YBBB-BBBBBBB.flac", 1100, seed=2)  # "Y" + YTID (PANNs), flac
    write_wav(audio / "unbal" / "deep" / "CCCC_CCCCCC_30.000.wav", 1200, seed=3)  # YTID_start, YTID has '_'
    write_wav(audio / "eval" / "DDDDDDDDDDD_0_10000.wav", 1300, seed=4)
    files = {"audio": audio, "ontology": tmp_path / "class_labels_indices.csv"}
    files["ontology"].write_text(ONTOLOGY)
    segments = {
        "balanced": ['AAAAAAAAAAA, 30.000, 40.000, "/m/09x0r,/m/04rlf"',
                     'BBB-BBBBBBB, 0.000, 10.000, "/m/04rlf"',
                     'EEEEEEEEEEE, 0.000, 10.000, "/m/09x0r"'],  # not downloaded
        "unbalanced": ['CCCC_CCCCCC, 30.000, 40.000, "/m/0jbk,/m/09x0r,/m/04rlf"',
                       'AAAAAAAAAAA, 30.000, 40.000, "/m/09x0r,/m/04rlf"'],  # duplicate of balanced
        "eval": ['DDDDDDDDDDD, 0.000, 10.000, "/m/0jbk"'],
    }
    for name, rows in segments.items():
        files[name] = tmp_path / f"{name}_segments.csv"
        files[name].write_text(SEGMENT_HEADER + "\n".join(rows) + "\n")
    return files


def audioset_args(files: Dict[str, Path], out: Path) -> List[str]:
    return [
        "--audio-dir", str(files["audio"]), "--ontology", str(files["ontology"]), "--out", str(out),
        "--split", f"train={files['balanced']}", "--split", f"train={files['unbalanced']}",
        "--split", f"eval={files['eval']}",
    ]  # fmt: skip


def test_audioset_finds_clips_by_ytid_and_writes_multilabels(tmp_path):
    files = make_audioset(tmp_path)
    out = tmp_path / "out"
    assert script("prepare_audioset").main(audioset_args(files, out) + ["--weights"]) == 0

    train, train_ids = read_split(out, "train")
    assert list(train) == ["AAAAAAAAAAA.wav", "bal/YBBB-BBBBBBB.flac", "unbal/deep/CCCC_CCCCCC_30.000.wav"]
    assert list(train.values()) == [1000, 1100, 1200]
    assert train_ids == {
        "AAAAAAAAAAA.wav": ["/m/09x0r", "/m/04rlf"],
        "bal/YBBB-BBBBBBB.flac": ["/m/04rlf"],
        "unbal/deep/CCCC_CCCCCC_30.000.wav": ["/m/0jbk", "/m/09x0r", "/m/04rlf"],
    }
    eval_clip = "eval/DDDDDDDDDDD_0_10000.wav"
    assert read_split(out, "eval") == ({eval_clip: 1300}, {eval_clip: ["/m/0jbk"]})
    assert (out / "train.lbl").read_text().splitlines()[0] == "AAAAAAAAAAA.wav\t/m/09x0r,/m/04rlf"
    descriptors = read_label_descriptors(out / "label_descriptors.csv")
    assert (descriptors.ids, descriptors.names) == (["/m/09x0r", "/m/04rlf", "/m/0jbk"], ["Speech", "Music", "Animal"])

    reasons = skipped_reasons(out / "summary.json")
    assert set(reasons) == {"EEEEEEEEEEE", "AAAAAAAAAAA"}
    assert reasons["EEEEEEEEEEE"] == "not downloaded: listed in balanced_segments.csv line 6"
    assert reasons["AAAAAAAAAAA"].startswith("duplicate") and "unbalanced_segments.csv line 5" in reasons["AAAAAAAAAAA"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_per_split"] == {"train": 3, "eval": 1}
    # --weights wrote the same file make_weights writes.
    assert script("make_weights").main(["--data", str(out), "--split", "train", "--out", str(tmp_path / "w.csv")]) == 0
    assert (out / "train_weights.csv").read_bytes() == (tmp_path / "w.csv").read_bytes()


def test_audioset_unknown_mid_names_file_and_line(tmp_path, capsys):
    files = make_audioset(tmp_path)
    files["eval"].write_text(SEGMENT_HEADER + 'DDDDDDDDDDD, 0.000, 10.000, "/m/0jbk,/m/nope"\n')
    assert script("prepare_audioset").main(audioset_args(files, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"{files['eval']}: line 4" in err and "/m/nope" in err


def test_make_weights_matches_hand_computation(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    clips = [Clip("a.wav", 10, ("x",)), Clip("b.wav", 10, ("x",)), Clip("c.wav", 10, ("x", "y"))]
    write_split(tmp_path, "train", root, clips)
    write_label_descriptors(tmp_path / "label_descriptors.csv", ["x", "y"], ["X", "Y"])
    assert script("make_weights").main(["--data", str(tmp_path), "--split", "train"]) == 0
    w_x, w_y = 1000 / (3 + 0.01), 1000 / (1 + 0.01)  # class x in 3 clips, y in 1
    np.testing.assert_allclose(np.loadtxt(tmp_path / "train_weights.csv"), [w_x, w_x, w_x + w_y], rtol=1e-12)


def test_make_weights_missing_manifest_is_a_clear_error(tmp_path, capsys):
    assert script("make_weights").main(["--data", str(tmp_path), "--split", "train"]) == 1
    assert str(tmp_path / "train.tsv") in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Demo data


def test_demo_data_is_deterministic_esc50_and_prepares(tmp_path):
    args = ["--clips-per-class-per-fold", "1", "--sample-rate", str(SR), "--seconds", "0.25"]
    demo = script("make_demo_data")
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert demo.main(["--out", str(tmp_path / name), "--seed", seed, *args]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    wavs = [rel for rel in files if rel.suffix == ".wav"]
    assert any((tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes() for rel in wavs)

    with open(tmp_path / "a" / "meta" / "esc50.csv") as f:
        assert f.readline().strip() == ESC50_HEADER
        rows = list(csv.DictReader(f, fieldnames=ESC50_HEADER.split(",")))
    assert {int(r["fold"]) for r in rows} == {1, 2, 3, 4, 5}
    assert len({r["category"] for r in rows}) >= 5
    for r in rows:
        assert r["filename"] == f"{r['fold']}-{r['src_file']}-{r['take']}-{r['target']}.wav"
        info = sf.info(str(tmp_path / "a" / "audio" / r["filename"]))
        assert (info.samplerate, info.frames, info.subtype) == (SR, SR // 4, "PCM_16")
        peak = np.abs(sf.read(tmp_path / "a" / "audio" / r["filename"])[0]).max()
        assert 0.3 <= peak <= 0.9 + 1e-4

    out = tmp_path / "manifests"
    assert script("prepare_esc50").main(["--esc50-root", str(tmp_path / "a"), "--out", str(out)]) == 0
    num_classes = len({r["category"] for r in rows})
    assert len(read_split(out / "fold5", "eval")[0]) == num_classes
    assert len(read_split(out / "fold5", "train")[0]) == 4 * num_classes


# ----------------------------------------------------------------------------------------------------
# Command lines


def test_every_script_has_a_working_help():
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(SCRIPTS / f"{name}.py"), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPT_NAMES
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, stderr)
        assert stdout.startswith("usage:") and ("--out" in stdout or "--data" in stdout), name
