"""scripts/inference.py, evaluate.py and extract_features.py end to end on generated clips, checked against the API."""

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from matplotlib.image import imread

import eat_plugin
from conftest import REPO, tone, write_wav
from eat_plugin.data.manifest import read_label_descriptors, read_labels, read_manifest
from eat_plugin.metrics import mean_average_precision
from helpers import (LABEL_IDS, LABEL_NAMES, NUM_CLASSES, TARGET_LENGTH, RunsCode, build_checkpoints, load_script,
                     noise, samples_for)

SCRIPTS = ("inference", "evaluate", "extract_features")
inference, evaluate, extract_features = (load_script(name) for name in SCRIPTS)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    """Checkpoints, a nested folder of clips (several rates, channels, formats, one long) and a labelled split."""
    root = tmp_path_factory.mktemp("scripts")
    env = build_checkpoints(root)
    clips = root / "clips"
    write_wav(clips / "dog.wav", noise(16000, seed=1), 16000)
    write_wav(clips / "outdoor" / "rain.flac", noise(15435, 22050, seed=2), 22050)
    write_wav(clips / "outdoor" / "night" / "siren.wav", np.stack([tone(900, 1.1, 44100), noise(48510, 44100)], 1),
              44100)
    write_wav(clips / "long.wav", noise(samples_for(3 * TARGET_LENGTH), seed=4), 16000)  # 3 windows
    (clips / "notes.txt").write_text("not audio, not an audio extension: ignored")
    env.clips = clips

    # a labelled split in the task's format: manifest rows -> the clips above (and more), .lbl ids
    split = [("dog.wav", [0, 4]), ("long.wav", [1]), ("outdoor/night/siren.wav", [2]), ("outdoor/rain.flac", [1, 3])]
    for i in range(6):
        relpath = f"extra/x{i}.wav"
        write_wav(clips / relpath, noise(9600 + 1600 * i, seed=20 + i), 16000)
        split.append((relpath, [i % NUM_CLASSES]))
    rows = [f"{rel}\t{sf.info(str(clips / rel)).frames}" for rel, _ in split]
    (env.data / "eval.tsv").write_text("\n".join([str(clips), *rows]) + "\n")
    (env.data / "eval.lbl").write_text("".join(f"{rel}\t{','.join(LABEL_IDS[c] for c in cls)}\n" for rel, cls in split))
    env.split = split
    env.names = sorted(rel for rel, _ in split)  # every audio file of the folder, as relative paths
    return env


def api_predictions(checkpoint, paths, top_k):
    model = eat_plugin.load_model(checkpoint)
    return [[{"label": n, "score": s} for n, s in top] for top in model.predict([str(p) for p in paths], top_k=top_k)]


def assert_predictions_equal(got, expected):
    assert [[p["label"] for p in top] for top in got] == [[p["label"] for p in top] for top in expected]
    np.testing.assert_allclose([[p["score"] for p in top] for top in got],
                               [[p["score"] for p in top] for top in expected], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ inference


def test_inference_on_a_folder_writes_json_and_csv_matching_the_api(env, tmp_path, capsys):
    argv = [str(env.multi), str(env.clips), "--device", "cpu", "--top-k", "3", "--batch-size", "2",
            "--json", str(tmp_path / "out.json"), "--csv", str(tmp_path / "out.csv")]
    assert inference.main(argv) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["file", "rank", "label", "score"]
    assert all(name in table for name in env.names)

    result = json.loads((tmp_path / "out.json").read_text())
    assert list(result) == env.names  # recursive, relative paths, non-audio files ignored
    expected = api_predictions(env.multi, [env.clips / n for n in env.names], 3)
    assert_predictions_equal([result[n] for n in env.names], expected)

    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(env.names)
    for row in rows:
        top = result[row["file"]][int(row["rank"]) - 1]
        assert row["label"] == top["label"] and float(row["score"]) == pytest.approx(top["score"], rel=1e-5)


def test_inference_on_a_manifest_and_on_one_file(env, tmp_path, capsys):
    assert inference.main([str(env.single), str(env.data / "eval.tsv"), "--device", "cpu", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)  # stdout is the JSON only
    assert list(result) == [rel for rel, _ in env.split]
    expected = api_predictions(env.single, [env.clips / rel for rel, _ in env.split], 5)
    assert_predictions_equal([result[rel] for rel, _ in env.split], expected)
    assert all(sum(p["score"] for p in top) == pytest.approx(1.0, abs=1e-5) for top in result.values())  # softmax

    one = env.clips / "dog.wav"
    labels = tmp_path / "names.csv"
    labels.write_text("".join(f'{i},{label_id},"name {i}"\n' for i, label_id in enumerate(LABEL_IDS)))
    assert inference.main([str(env.single), str(one), "--device", "cpu", "--labels", str(labels), "--json", "-",
                           "--top-k", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == [str(one)] and all(p["label"].startswith("name ") for p in result[str(one)])


# ------------------------------------------------------------------------------------------- evaluate


def api_scores(env, checkpoint):
    descriptors = read_label_descriptors(env.data / "label_descriptors.csv")
    manifest = read_manifest(env.data / "eval.tsv")
    labels = read_labels(env.data / "eval.lbl", descriptors, manifest)
    model = eat_plugin.load_model(checkpoint)
    scores = model.scores([manifest.audio_path(i) for i in range(len(manifest))]).numpy()  # (N, C)
    return scores, labels


@pytest.fixture
def figures(monkeypatch):
    """The figures evaluate.py draws, by function name (the drawing functions wrapped)."""
    drawn = {}
    for name in ("confusion_matrix_figure", "average_precision_figure"):
        def wrapper(*args, _draw=getattr(evaluate.plots, name), _name=name, **kwargs):
            drawn[_name] = _draw(*args, **kwargs)
            return drawn[_name]
        monkeypatch.setattr(evaluate.plots, name, wrapper)
    return drawn


def test_evaluate_multi_label_map_is_the_metric_on_the_api_scores(env, tmp_path, capsys, figures):
    out, metrics = tmp_path / "ap.tsv", tmp_path / "metrics.json"
    argv = [str(env.multi), "--data", str(env.data), "--split", "eval", "--device", "cpu", "--batch-size", "3",
            "--out", str(out), "--json", str(metrics)]
    assert evaluate.main(argv) == 0
    scores, labels = api_scores(env, env.multi)
    targets = np.zeros_like(scores)
    for row, classes in enumerate(labels):
        targets[row, classes] = 1
    expected = mean_average_precision(scores, targets)

    result = json.loads(metrics.read_text())
    assert result["kind"] == "multi-label" and result["num_clips"] == len(env.split)
    assert result["mAP"] == pytest.approx(expected.mAP, abs=1e-6)
    assert result["classes_without_positives"] == expected.num_skipped == 0
    stdout = capsys.readouterr().out
    assert f"mAP: {expected.mAP:.4f}" in stdout and f"per-class AP chart: {tmp_path / 'ap.png'}" in stdout

    with open(out, newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert [r["class"] for r in table] == [LABEL_NAMES[i] for i in np.argsort(-expected.per_class_ap, kind="stable")]
    for r in table:
        index = int(r["index"])
        assert float(r["AP"]) == pytest.approx(expected.per_class_ap[index], abs=1e-5)
        assert int(r["positives"]) == int(targets[:, index].sum()) and r["id"] == LABEL_IDS[index]

    # the picture next to the table: one bar per class, best first, height = the table's AP
    assert imread(tmp_path / "ap.png").ndim == 3
    (ax,) = [a for a in figures["average_precision_figure"].axes]
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], [float(r["AP"]) for r in table], atol=1e-5)
    assert [t.get_text() for t in ax.get_xticklabels()] == [r["class"] for r in table]
    assert evaluate.main(argv + ["--plot-classes", "2"]) == 0  # the 2 best classes only
    np.testing.assert_allclose([bar.get_height() for bar in figures["average_precision_figure"].axes[0].patches],
                               [float(r["AP"]) for r in table[:2]], atol=1e-5)


def test_evaluate_single_label_accuracy_and_confusion_matrix(env, tmp_path, capsys, figures):
    data = tmp_path / "data"  # one label per clip
    data.mkdir()
    (data / "label_descriptors.csv").write_text((env.data / "label_descriptors.csv").read_text())
    (data / "eval.tsv").write_text((env.data / "eval.tsv").read_text())
    (data / "eval.lbl").write_text("".join(f"{rel}\t{LABEL_IDS[cls[0]]}\n" for rel, cls in env.split))
    out, metrics = tmp_path / "confusion.tsv", tmp_path / "metrics.json"
    assert evaluate.main([str(env.single), "--data", str(data), "--device", "cpu", "--out", str(out),
                          "--json", str(metrics)]) == 0

    scores, _ = api_scores(env, env.single)
    true = np.array([cls[0] for _, cls in env.split])
    correct = int((scores.argmax(1) == true).sum())
    result = json.loads(metrics.read_text())
    assert result["kind"] == "single-label" and result["correct"] == correct
    assert result["accuracy"] == pytest.approx(100.0 * correct / len(true))
    with open(out, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0][1:] == LABEL_NAMES and [r[0] for r in rows[1:]] == LABEL_NAMES
    matrix = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert matrix.tolist() == result["confusion_matrix"]
    assert matrix.sum() == len(true) and np.trace(matrix) == correct
    assert matrix.sum(axis=1).tolist() == np.bincount(true, minlength=NUM_CLASSES).tolist()  # rows: true class

    # the picture next to the table: confusion.png, the same counts, class names on both axes
    assert f"confusion matrix picture: {tmp_path / 'confusion.png'}" in capsys.readouterr().out
    assert imread(tmp_path / "confusion.png").ndim == 3
    ax = figures["confusion_matrix_figure"].axes[0]
    image = np.asarray(ax.images[0].get_array())
    assert image.tolist() == matrix.tolist() and image.sum() == len(env.split)
    assert [t.get_text() for t in ax.get_yticklabels()] == LABEL_NAMES == [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(matrix[matrix > 0].tolist())  # counts written
    (tmp_path / "confusion.png").unlink()
    argv = [str(env.single), "--data", str(data), "--device", "cpu", "--out", str(out), "--no-plots"]
    assert evaluate.main(argv) == 0
    assert out.is_file() and not (tmp_path / "confusion.png").exists()

    (data / "eval.lbl").write_text((env.data / "eval.lbl").read_text())  # multi-label lines
    assert evaluate.main([str(env.single), "--data", str(data), "--device", "cpu"]) == 1


# ------------------------------------------------------------------------------------ extract features


def test_extract_features_writes_mirrored_npy_resumes_and_overwrites(env, tmp_path, capsys):
    out = tmp_path / "feats"
    argv = [str(env.single), str(env.clips), str(out), "--device", "cpu", "--batch-size", "3", "--granularity", "all"]
    assert extract_features.main(argv) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    clips = env.names
    assert files == sorted(str(Path(n).with_suffix(".npy")) for n in clips)  # a/b.wav -> OUTDIR/a/b.npy
    model = eat_plugin.load_model(env.single)
    for name in env.names:
        array = np.load(out / Path(name).with_suffix(".npy"))
        assert array.dtype == np.float32
        np.testing.assert_allclose(array, model.embed(env.clips / name, "all").numpy(), rtol=1e-5, atol=1e-5)
    assert np.load(out / "long.npy").shape == (1 + 3 * 8 * 8, 32)  # 3 windows of 8 time patches
    assert np.load(out / "dog.npy").shape == (1 + 7 * 8, 32)  # 98 frames -> 7 time patches

    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert extract_features.main(argv + ["--json", str(tmp_path / "again.json")]) == 0
    summary = json.loads((tmp_path / "again.json").read_text())
    assert (summary["written"], summary["skipped_existing"], summary["failed"]) == (0, len(clips), [])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == stamps

    (out / "dog.npy").unlink()  # an interrupted run: only the missing clip is computed
    assert extract_features.main(argv + ["--json", str(tmp_path / "resume.json")]) == 0
    assert json.loads((tmp_path / "resume.json").read_text())["written"] == 1

    assert extract_features.main(argv + ["--overwrite", "--json", str(tmp_path / "overwrite.json")]) == 0
    assert json.loads((tmp_path / "overwrite.json").read_text())["written"] == len(clips)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("granularity,reshape,shape", [("frame", True, (7, 8, 32)), ("frame", False, (56, 32)),
                                                       ("utterance", False, (32,))])
def test_extract_features_from_a_manifest_with_a_pretrained_checkpoint(env, tmp_path, granularity, reshape, shape):
    out = tmp_path / "feats"
    argv = [str(env.pretrained), str(env.data / "eval.tsv"), str(out), "--device", "cpu",
            "--granularity", granularity] + (["--reshape"] if reshape else [])
    assert extract_features.main(argv) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == sorted(
        str(Path(rel).with_suffix(".npy")) for rel, _ in env.split)
    features = np.load(out / "dog.npy")
    assert features.shape == shape
    expected = eat_plugin.load_model(env.pretrained).embed(env.clips / "dog.wav", granularity, reshape=reshape)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_extract_features_reports_a_corrupt_clip_and_writes_the_others(env, tmp_path, capsys):
    clips = tmp_path / "clips"
    write_wav(clips / "a" / "good.wav", noise(12800, seed=1), 16000)
    write_wav(clips / "b" / "good.flac", noise(19845, 22050, seed=2), 22050)
    (clips / "a" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = tmp_path / "feats"
    argv = [str(env.multi), str(clips), str(out), "--device", "cpu", "--batch-size", "8",
            "--json", str(tmp_path / "s.json")]
    assert extract_features.main(argv) == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a/good.npy", "b/good.npy"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["written"] == 2 and len(summary["failed"]) == 1
    assert summary["failed"][0]["file"] == str(clips / "a" / "corrupt.wav")
    assert "corrupt.wav" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- command line


def test_help_of_every_script():
    runs = [subprocess.Popen([sys.executable, str(REPO / "scripts" / f"{name}.py"), "--help"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for name in SCRIPTS]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr[-2000:]
        assert "--device" in stdout and "--batch-size" in stdout and "CHECKPOINT" in stdout
        assert "Traceback" not in stderr and "tensorboardX" not in stderr
    inference_help, evaluate_help, extract_help = (stdout for stdout, _ in outputs)
    assert "--top-k" in inference_help and "windows" in inference_help and "averaged" in inference_help
    assert "--data" in evaluate_help and "--split" in evaluate_help
    assert "--granularity" in extract_help and "--reshape" in extract_help and "--overwrite" in extract_help


def test_bad_input_is_a_clear_error_without_traceback(env, tmp_path, capsys):
    missing = str(tmp_path / "nope.pt")
    clip = str(env.clips / "dog.wav")
    for main, argv in ((inference.main, [missing, clip]), (evaluate.main, [missing, "--data", str(env.data)]),
                       (extract_features.main, [missing, clip, str(tmp_path / "f")])):
        assert main(argv + ["--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert f"error: {missing}: checkpoint not found" in err and "Traceback" not in err

    bad = tmp_path / "bad.tsv"
    bad.write_text(f"{env.clips}\ndog.wav\n")
    assert inference.main([str(env.multi), str(bad), "--device", "cpu"]) == 1
    assert "bad.tsv: line 2: expected 2 tab-separated fields" in capsys.readouterr().err
    assert inference.main([str(env.multi), str(tmp_path / "nothing"), "--device", "cpu"]) == 1
    assert "nothing: not found" in capsys.readouterr().err
    assert inference.main([str(env.pretrained), clip, "--device", "cpu"]) == 1
    assert "pre-trained checkpoint has no classifier head" in capsys.readouterr().err

    unreadable = tmp_path / "broken.wav"
    unreadable.write_bytes(b"not audio")
    assert inference.main([str(env.multi), str(unreadable), "--device", "cpu"]) == 1
    assert f"{unreadable}: not audio or corrupt header" in capsys.readouterr().err

    state = torch.load(env.multi, weights_only=False)
    state["extra_state"]["payload"] = RunsCode(tmp_path / "pwned")
    torch.save(state, tmp_path / "evil.pt")
    assert inference.main([str(tmp_path / "evil.pt"), clip, "--device", "cpu"]) == 1
    assert f"error: {tmp_path / 'evil.pt'}: refused to load" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    for name, content in (("text.pt", b"hello"), ("empty.pt", b""), ("truncated.pt", env.multi.read_bytes()[:20000])):
        (tmp_path / name).write_bytes(content)  # not a checkpoint: named, no traceback
        assert inference.main([str(tmp_path / name), clip, "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name}: ") and "Traceback" not in err

    data = tmp_path / "data"  # evaluation needs every clip: a missing one stops it, named
    data.mkdir()
    for name in ("label_descriptors.csv", "eval.lbl", "eval.tsv"):
        (data / name).write_text((env.data / name).read_text().replace("extra/x5.wav", "extra/gone.wav"))
    assert evaluate.main([str(env.multi), "--data", str(data), "--device", "cpu"]) == 1
    assert f"{env.clips / 'extra/gone.wav'}: audio file not found" in capsys.readouterr().err

    clash = tmp_path / "clash"
    write_wav(clash / "a.wav", noise(8000), 16000)
    write_wav(clash / "a.flac", noise(8000), 16000)
    assert extract_features.main([str(env.multi), str(clash), str(tmp_path / "f"), "--device", "cpu"]) == 1
    assert "would all be written to" in capsys.readouterr().err

    short_table = tmp_path / "three.csv"
    short_table.write_text('0,a,"A"\n1,b,"B"\n2,c,"C"\n')
    assert inference.main([str(env.multi), clip, "--device", "cpu", "--labels", str(short_table)]) == 1
    assert f"{short_table}: lists 3 classes but the model has {NUM_CLASSES}" in capsys.readouterr().err

    for argv in (["--granularity", "frames"], ["--norm", "imagenet"], ["--batch-size", "0"], ["--target-length", "100"]):
        with pytest.raises(SystemExit):  # argparse: usage error, status 2
            extract_features.main([str(env.multi), clip, str(tmp_path / "f"), *argv])
    assert extract_features.main([str(env.multi), clip, str(tmp_path / "f"), "--device", "cpu", "--reshape"]) == 1
    assert "--reshape applies to --granularity frame only" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert inference.main([str(env.multi), clip, "--device", "cuda"]) == 1
        assert "CUDA is not available" in capsys.readouterr().err
