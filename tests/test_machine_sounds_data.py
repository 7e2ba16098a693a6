"""Machine sounds, data side: layouts -> metadata, the per-id split, the preparer, the metadata file, the
MIMII demo generator (tiny trees in ``tmp_path``, CPU, in-process, seconds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf

from eat_plugin.data import machine_sounds as ms
from eat_plugin.data.machine_sounds import MachineClip, MachineMetadataError
from eat_plugin.data.manifest import read_label_descriptors, read_labels, read_manifest
from eat_plugin.data.prepare import LayoutError
from helpers import load_script as script, read_split

SR = 16000


def touch_wav(path: Path, num_samples: int = 160) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.1 * np.sin(np.arange(num_samples) / 5.0), SR, subtype="PCM_16")
    return path


def make_tree(root: Path, relpaths: List[str]) -> Path:
    for relpath in relpaths:
        touch_wav(root / relpath)
    return root


def by_path(root: Path) -> Dict[str, MachineClip]:
    return {clip.path: clip for clip in ms.list_clips(root).clips}


def prepare(*args) -> int:
    return script("prepare_machine_sounds").main([str(a) for a in args])


# ----------------------------------------------------------------------------------------------------
# Layouts


def test_mimii_layout_with_and_without_snr_prefix(tmp_path):
    root = make_tree(tmp_path / "mimii", [
        "6_dB_fan/fan/id_00/normal/00000000.wav",  # the archive unpacked into its own folder
        "-6_dB_pump/id_02/abnormal/00000001.wav",  # the SNR prefix on the type folder itself
        "valve/id_04/normal/00000007.wav",
    ])
    clips = by_path(root)
    assert clips == {
        "6_dB_fan/fan/id_00/normal/00000000.wav": MachineClip(
            "6_dB_fan/fan/id_00/normal/00000000.wav", "fan", 0, None, None, "normal", None, ms.MIMII),
        "-6_dB_pump/id_02/abnormal/00000001.wav": MachineClip(
            "-6_dB_pump/id_02/abnormal/00000001.wav", "pump", 2, None, None, "anomaly", None, ms.MIMII),
        "valve/id_04/normal/00000007.wav": MachineClip(
            "valve/id_04/normal/00000007.wav", "valve", 4, None, None, "normal", None, ms.MIMII),
    }


def test_dcase2020_layout_with_unlabelled_evaluation_clips(tmp_path):
    root = make_tree(tmp_path / "dcase2020", [
        "ToyCar/train/normal_id_01_00000000.wav",
        "ToyCar/test/anomaly_id_01_00000003.wav",
        "ToyCar/test/normal_id_03_00000004.wav",
        "ToyCar/test/id_05_00000000.wav",  # evaluation set: no condition
    ])
    clips = by_path(root)
    fields = {p: (c.machine_type, c.machine_id, c.section, c.domain, c.condition, c.given_split, c.layout)
              for p, c in clips.items()}
    assert fields == {
        "ToyCar/train/normal_id_01_00000000.wav": ("ToyCar", 1, None, None, "normal", "train", ms.DCASE2020),
        "ToyCar/test/anomaly_id_01_00000003.wav": ("ToyCar", 1, None, None, "anomaly", "test", ms.DCASE2020),
        "ToyCar/test/normal_id_03_00000004.wav": ("ToyCar", 3, None, None, "normal", "test", ms.DCASE2020),
        "ToyCar/test/id_05_00000000.wav": ("ToyCar", 5, None, None, None, "test", ms.DCASE2020),
    }


def test_dcase2021_layout_with_and_without_condition(tmp_path):
    root = make_tree(tmp_path / "dcase2022", [
        "fan/train/section_00_source_train_normal_0001_strength_1_ambient.wav",
        "fan/train/section_02_target_train_normal_0000_m-n_W_noise.wav",
        "fan/test/section_01_source_test_anomaly_0002.wav",
        "fan/target_test/section_00_target_test_normal_0001_a_b.wav",
        "fan/source_test/section_03_source_test_0000.wav",  # 2021 evaluation: domain, no condition
        "fan/target_test/section_04_0005.wav",  # domain from the folder
        "fan/test/section_03_0001.wav",  # 2022/2023 evaluation: neither
    ])
    (root / "fan" / "attributes_00.csv").write_text("file_name,d1p\n")  # non-audio: ignored (counted)
    touch_wav(root / "fan" / "train" / ".hidden.wav")  # hidden: ignored
    touch_wav(root / ".cache" / "whatever.wav")
    listing = ms.list_clips(root)
    assert listing.non_audio == 1
    fields = {c.path.split("/", 2)[2]: (c.machine_id, c.section, c.domain, c.condition, c.given_split)
              for c in listing.clips}
    assert fields == {
        "section_00_source_train_normal_0001_strength_1_ambient.wav": (0, 0, "source", "normal", "train"),
        "section_02_target_train_normal_0000_m-n_W_noise.wav": (2, 2, "target", "normal", "train"),
        "section_01_source_test_anomaly_0002.wav": (1, 1, "source", "anomaly", "test"),
        "section_00_target_test_normal_0001_a_b.wav": (0, 0, "target", "normal", "test"),
        "section_03_source_test_0000.wav": (3, 3, "source", None, "test"),
        "section_04_0005.wav": (4, 4, "target", None, "test"),
        "section_03_0001.wav": (3, 3, None, None, "test"),
    }
    assert {c.machine_type for c in listing.clips} == {"fan"} and {c.layout for c in listing.clips} == {ms.DCASE2021}


def test_root_that_is_the_type_folder_names_the_type(tmp_path):
    mimii = make_tree(tmp_path / "0_dB_slider", ["id_06/normal/00000000.wav"])
    assert [(c.machine_type, c.machine_id) for c in ms.list_clips(mimii).clips] == [("slider", 6)]
    dcase = make_tree(tmp_path / "ToyConveyor", ["train/normal_id_02_00000000.wav"])
    assert [(c.machine_type, c.machine_id) for c in ms.list_clips(dcase).clips] == [("ToyConveyor", 2)]


def test_unparseable_names_are_one_error_listing_them(tmp_path, capsys):
    good = ["fan/train/normal_id_00_00000000.wav"]
    bad = [f"fan/train/recording_{i:02d}.wav" for i in range(23)] + [
        "fan/train/section_00_source_test_normal_0001.wav",  # a test name in train/
        "fan/source_test/section_00_target_test_normal_0001.wav",  # a target name in source_test/
        "fan/train/id_00_00000000.wav",  # unlabelled in train/
        "fan/valid/normal_id_00_00000001.wav",  # no such DCASE 2020 folder
    ]
    root = make_tree(tmp_path / "root", good + bad)
    with pytest.raises(LayoutError) as err:
        ms.list_clips(root)
    message = str(err.value)
    assert "27 audio file(s) match no machine-sound layout" in message and "... and 7 more" in message
    listed = [line.split(":")[0].strip() for line in message.splitlines() if line.startswith("  fan/")]
    assert listed == sorted(bad)[:20]
    assert "MIMII" in message and "section_00_{source,target}" in message  # the expected layouts
    assert prepare("--root", root, "--out", tmp_path / "out") == 1
    assert "match no machine-sound layout" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    for name, why in [("fan/train/section_00_source_test_normal_0001.wav", "test clip name in folder train/"),
                      ("fan/source_test/section_00_target_test_normal_0001.wav", "target-domain name"),
                      ("fan/train/id_00_00000000.wav", "unlabelled"),
                      ("fan/valid/normal_id_00_00000001.wav", "expected train/ or test/")]:
        with pytest.raises(ValueError, match=why):
            ms.parse_clip(name)


def test_machine_type_choice_and_mixed_layouts(tmp_path, capsys):
    root = make_tree(tmp_path / "dev", [
        "fan/train/normal_id_00_00000000.wav", "fan/test/anomaly_id_00_00000000.wav",
        "pump/train/normal_id_02_00000000.wav",
    ])
    assert prepare("--root", root, "--out", tmp_path / "out", "--val-fraction", "0") == 1
    assert "several machine types: fan (2 clips), pump (1 clips)" in capsys.readouterr().err
    assert prepare("--root", root, "--out", tmp_path / "out", "--machine-type", "valve") == 1
    assert "no clips of machine type 'valve'; found fan (2 clips), pump (1 clips)" in capsys.readouterr().err

    mixed = make_tree(tmp_path / "mixed", ["6_dB_fan/fan/id_00/normal/00000000.wav",
                                           "fan/train/normal_id_00_00000000.wav"])
    with pytest.raises(LayoutError, match="mixes layouts"):
        ms.select_machine_type(ms.list_clips(mixed).clips, "fan", mixed)


# ----------------------------------------------------------------------------------------------------
# Split


def clip(path: str, machine_id: int, given: str = "train", condition: str = "normal", kind: str = "t") -> MachineClip:
    return MachineClip(path, "fan", machine_id, None, None, condition, given, kind)


def dcase_clips() -> List[MachineClip]:
    clips = [clip(f"fan/train/normal_id_00_{i:08d}.wav", 0) for i in range(20)]
    clips += [clip(f"fan/train/normal_id_02_{i:08d}.wav", 2) for i in range(7)]
    clips += [clip("fan/train/normal_id_04_00000000.wav", 4)]
    clips += [clip(f"fan/test/anomaly_id_00_{i:08d}.wav", 0, "test", "anomaly") for i in range(3)]
    clips += [clip(f"fan/test/id_02_{i:08d}.wav", 2, "test", None) for i in range(2)]
    return clips


def per_id(clips) -> Counter:
    return Counter(c.machine_id for c in clips)


def test_split_fractions_per_machine_id_and_invariants():
    clips = dcase_clips()
    splits = ms.split_clips(clips, subset_fraction=0.5, val_fraction=0.2, seed=0)
    # id 0: 20 -> keep 10, valid 2; id 2: 7 -> keep round(3.5) = 4, valid round(0.8) = 1; id 4: 1 -> keep 1, valid 0
    assert per_id(splits["valid"]) == {0: 2, 2: 1}
    assert per_id(splits["train"]) == {0: 8, 2: 3, 4: 1}
    assert splits["test"] == sorted((c for c in clips if c.given_split == "test"), key=lambda c: c.path)
    paths = {s: [c.path for c in members] for s, members in splits.items()}
    assert all(p == sorted(p) for p in paths.values())
    assert not set(paths["train"]) & set(paths["valid"]) and not (set(paths["train"]) | set(paths["valid"])) & set(
        paths["test"])
    assert all(c.given_split == "train" for c in splits["train"] + splits["valid"])

    full = ms.split_clips(clips, subset_fraction=1.0, val_fraction=0.1, seed=0)
    assert per_id(full["valid"]) == {0: 2, 2: 1} and per_id(full["train"]) == {0: 18, 2: 6, 4: 1}
    assert len(full["train"]) + len(full["valid"]) == 28  # everything kept
    kept_half = set(paths["train"]) | set(paths["valid"])
    assert kept_half <= {c.path for c in full["train"] + full["valid"]}
    assert ms.split_clips(clips, 1.0, 0.0, 0)["valid"] == []


def test_split_is_deterministic_order_independent_and_seeded():
    clips = dcase_clips()
    first = ms.split_clips(clips, 0.6, 0.25, seed=3)
    assert ms.split_clips(list(reversed(clips)), 0.6, 0.25, seed=3) == first
    assert ms.split_clips(clips, 0.6, 0.25, seed=4)["train"] != first["train"]
    assert ms.split_clips(clips, 0.6, 0.25, seed=4)["test"] == first["test"]  # test untouched by the seed


def test_split_without_given_split_follows_the_mimii_protocol():
    clips = [clip(f"fan/id_00/normal/{i:08d}.wav", 0, None) for i in range(10)]
    clips += [clip(f"fan/id_00/abnormal/{i:08d}.wav", 0, None, "anomaly") for i in range(3)]
    clips += [clip(f"fan/id_02/normal/{i:08d}.wav", 2, None) for i in range(2)]
    clips += [clip(f"fan/id_02/abnormal/{i:08d}.wav", 2, None, "anomaly") for i in range(5)]
    splits = ms.split_clips(clips, 1.0, 0.25, seed=0)
    test = Counter((c.machine_id, c.condition) for c in splits["test"])
    # id 0: every anomaly + 3 normal; id 2: every anomaly + 1 normal (one normal clip stays for training)
    assert test == {(0, "anomaly"): 3, (0, "normal"): 3, (2, "anomaly"): 5, (2, "normal"): 1}
    assert per_id(splits["train"]) == {0: 5, 2: 1} and per_id(splits["valid"]) == {0: 2}
    assert all(c.condition == "normal" for c in splits["train"] + splits["valid"])
    assert len({c.path for s in splits.values() for c in s}) == len(clips)  # a partition
    assert ms.split_clips(clips, 1.0, 0.25, seed=0) == splits


def test_split_rejects_bad_fractions():
    for subset, val in ((0.0, 0.1), (1.5, 0.1), (1.0, 1.0), (1.0, -0.1)):
        with pytest.raises(ValueError):
            ms.split_clips(dcase_clips(), subset, val)


def test_class_table_indexes_by_machine_id():
    clips = [clip(f"x{i}.wav", i) for i in (6, 0, 4, 2)]
    ids, names = ms.class_table(clips)
    assert ids == [f"id_{i:02d}" for i in range(7)]
    assert names == ["fan id_00", "(unused id 1)", "fan id_02", "(unused id 3)", "fan id_04", "(unused id 5)",
                     "fan id_06"]
    sectioned = [MachineClip("a.wav", "fan", 1, 1, "source", "normal", "train", ms.DCASE2021)]
    assert ms.class_table(sectioned) == (["section_00", "section_01"], ["(unused section 0)", "fan section_01"])


# ----------------------------------------------------------------------------------------------------
# The preparer and the metadata file


def make_demo(out: Path, seed: int = 0, normal: int = 4, anomalous: int = 2) -> Path:
    args = ["--layout", "mimii", "--out", str(out), "--seed", str(seed), "--seconds", "0.25",
            "--normal-per-id", str(normal), "--anomalous-per-id", str(anomalous)]
    assert script("make_demo_data").main(args) == 0
    return out


def test_prepare_generated_mimii_end_to_end(tmp_path):
    demo = make_demo(tmp_path / "demo", normal=6, anomalous=2)
    out = tmp_path / "out"
    assert prepare("--root", demo, "--out", out, "--val-fraction", "0.25") == 0
    descriptors = read_label_descriptors(out / "label_descriptors.csv")
    assert descriptors.ids == [f"id_{i:02d}" for i in range(7)] and descriptors.names[1] == "(unused id 1)"
    sizes = {}
    for split in ("train", "valid", "test"):
        manifest = read_manifest(out / f"{split}.tsv")
        labels = read_labels(out / f"{split}.lbl", descriptors, manifest)
        rows = ms.read_machine_metadata(out, split)
        assert [r.relpath for r in rows] == [r.relpath for r in manifest.rows]
        assert [[r.machine_id] for r in rows] == labels  # class index == machine id
        for row, manifest_row in zip(rows, manifest.rows):
            assert manifest_row.num_samples == SR // 4 and (manifest.root / row.relpath).is_file()
            assert row.relpath.startswith(f"fan/id_{row.machine_id:02d}/")
            assert row.condition == ("anomaly" if "/abnormal/" in row.relpath else "normal")
            assert (row.machine_type, row.section, row.domain) == ("fan", None, None)
        sizes[split] = Counter((r.machine_id, r.condition) for r in rows)
    for machine_id in (0, 2, 4, 6):  # 6 normal + 2 abnormal: test 2 + 2, then 4 normal -> valid 1, train 3
        assert sizes["test"][(machine_id, "anomaly")] == 2 and sizes["test"][(machine_id, "normal")] == 2
        assert sizes["valid"][(machine_id, "normal")] == 1 and sizes["train"][(machine_id, "normal")] == 3
    assert (out / "train.machine.tsv").read_text().splitlines()[0] == (
        "relpath\tmachine_type\tmachine_id\tsection\tdomain\tcondition")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_per_split"] == {"train": 12, "valid": 4, "test": 16}
    assert summary["machine_type"] == "fan" and summary["layout"] == ms.MIMII
    assert summary["machine_ids"]["test"] == {"id_00": 4, "id_02": 4, "id_04": 4, "id_06": 4}
    assert summary["conditions"]["test"] == {"normal": 8, "anomaly": 8}
    assert summary["conditions"]["train"] == {"normal": 12, "anomaly": 0}

    again = tmp_path / "again"
    assert prepare("--root", demo, "--out", again, "--val-fraction", "0.25") == 0
    for name in ("train.tsv", "valid.lbl", "test.machine.tsv", "label_descriptors.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_prepare_dcase2021_tree_keeps_sections_domains_and_test(tmp_path, capsys):
    train = [f"fan/train/section_0{s}_source_train_normal_{i:04d}_a_{i}.wav" for s in (0, 2) for i in range(4)]
    test = ["fan/source_test/section_00_source_test_anomaly_0000.wav", "fan/target_test/section_02_0001.wav"]
    root = make_tree(tmp_path / "dcase", train + test + ["pump/train/section_00_source_train_normal_0000.wav"])
    out = tmp_path / "out"
    assert prepare("--root", root, "--out", out, "--machine-type", "fan", "--subset-fraction", "0.5",
                   "--val-fraction", "0.5") == 0
    assert read_label_descriptors(out / "label_descriptors.csv").ids == ["section_00", "section_01", "section_02"]
    lengths, labels = read_split(out, "test")
    assert list(lengths) == sorted(test) and labels == {test[0]: ["section_00"], test[1]: ["section_02"]}
    rows = ms.read_machine_metadata(out, "test")
    assert [(r.section, r.domain, r.condition) for r in rows] == [(0, "source", "anomaly"), (2, "target", None)]
    assert json.loads((out / "summary.json").read_text())["conditions"]["test"] == {
        "normal": 0, "anomaly": 1, "unlabelled": 1}
    for split in ("train", "valid"):  # 4 per section -> keep 2 -> 1 valid, 1 train
        assert Counter(r.section for r in ms.read_machine_metadata(out, split)) == {0: 1, 2: 1}
    assert "pump" in capsys.readouterr().out  # other types are named in the summary


def test_no_test_folder_writes_no_test_split_and_val_zero_no_valid(tmp_path):
    root = make_tree(tmp_path / "dev", [f"fan/train/normal_id_00_{i:08d}.wav" for i in range(3)])
    out = tmp_path / "out"
    assert prepare("--root", root, "--out", out, "--val-fraction", "0") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "label_descriptors.csv", "summary.json", "train.lbl", "train.machine.tsv", "train.tsv"]


def test_unreadable_clips_are_skipped_and_listed_and_an_empty_valid_is_an_error(tmp_path, capsys):
    root = make_tree(tmp_path / "dev", [f"fan/train/normal_id_00_{i:08d}.wav" for i in range(3)]
                     + ["fan/train/normal_id_02_00000000.wav"])
    broken = root / "fan/train/normal_id_00_00000001.wav"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated
    (root / "fan/train/normal_id_02_00000000.wav").write_bytes(b"")  # empty
    out = tmp_path / "out"
    assert prepare("--root", root, "--out", out, "--val-fraction", "0.5") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(k["path"]).name for k in summary["skipped"]["unsplit"]) == [
        "normal_id_00_00000001.wav", "normal_id_02_00000000.wav"]
    assert summary["clips_per_split"] == {"train": 1, "valid": 1}
    assert read_label_descriptors(out / "label_descriptors.csv").ids == ["id_00", "id_01", "id_02"]  # id 2 kept

    single = make_tree(tmp_path / "single", ["fan/train/normal_id_00_00000000.wav"])
    assert prepare("--root", single, "--out", tmp_path / "out2") == 1
    assert "valid would be empty" in capsys.readouterr().err


def test_metadata_reader_errors_name_file_and_line(tmp_path):
    root = make_tree(tmp_path / "dev", [f"fan/train/normal_id_00_{i:08d}.wav" for i in range(3)])
    out = tmp_path / "out"
    assert prepare("--root", root, "--out", out, "--val-fraction", "0") == 0
    path = out / "train.machine.tsv"
    lines = path.read_text().splitlines()
    assert len(ms.read_machine_metadata(out, "train")) == 3

    cases = [
        (lines[1:], "line 1: expected the header"),
        (lines[:-1], "has 2 rows but manifest"),
        (lines[:1] + [lines[2], lines[1], lines[3]], "line 2: path .* differs from manifest .* line 2"),
        (lines[:3] + [lines[3].replace("\t0\t", "\tzero\t")], "line 4: machine_id 'zero' must be an integer"),
        (lines[:2] + ["\t".join(lines[2].split("\t")[:4] + ["sideways", "normal"])] + lines[3:],
         "line 3: domain 'sideways' must be one of source, target, -"),
        (lines[:2] + [lines[2] + "\textra"] + lines[3:], "line 3: expected 6 tab-separated fields"),
    ]
    for text, message in cases:
        path.write_text("\n".join(text) + "\n")
        with pytest.raises(MachineMetadataError, match=message) as err:
            ms.read_machine_metadata(out, "train")
        assert str(path) in str(err.value)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="train.machine.tsv"):
        ms.read_machine_metadata(out, "train")


def test_metadata_reader_rejects_bad_condition(tmp_path):
    clips = [MachineClip("a.wav", "fan", 0, None, None, "normal", "train", ms.MIMII)]
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\na.wav\t10\n")
    ms.write_machine_metadata(tmp_path, "train", clips)
    assert ms.read_machine_metadata(tmp_path, "train")[0].condition == "normal"
    path = tmp_path / "train.machine.tsv"
    path.write_text(path.read_text().replace("\tnormal", "\tbroken"))
    with pytest.raises(MachineMetadataError, match="line 2: .*condition 'broken'"):
        ms.read_machine_metadata(tmp_path, "train")


def test_help_and_bad_arguments(capsys):
    module = script("prepare_machine_sounds")
    text = module.build_parser().format_help()
    assert "--machine-type" in text and "--subset-fraction" in text and "machine.tsv" in text
    for bad in (["--subset-fraction", "0"], ["--val-fraction", "1"], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            module.main(["--root", "x", "--out", "y", *bad])


# ----------------------------------------------------------------------------------------------------
# The generator


def test_mimii_demo_generator_is_deterministic_and_in_the_layout(tmp_path):
    a, b, c = (make_demo(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert all((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    expected = [f"fan/id_{i:02d}/{folder}/{n:08d}.wav" for i in (0, 2, 4, 6)
                for folder, count in (("abnormal", 2), ("normal", 4)) for n in range(count)]
    assert files == sorted(expected)
    for f in files:
        info = sf.info(str(a / f))
        assert (info.samplerate, info.frames, info.subtype, info.channels) == (SR, SR // 4, "PCM_16", 1)
        peak = np.abs(sf.read(a / f)[0]).max()
        assert 0.3 <= peak <= 0.9 + 1e-4
    clips = ms.list_clips(a).clips
    assert {(x.machine_type, x.machine_id) for x in clips} == {("fan", i) for i in (0, 2, 4, 6)}
    assert Counter(x.condition for x in clips) == {"normal": 16, "anomaly": 8}


def test_mimii_demo_ids_and_faults_are_spectrally_distinct(tmp_path):
    """Nearest-centroid on log band energies separates the normal clips of the ids, and a fault (off-speed
    running plus an added fault sound) moves a clip off its id's normals."""
    demo = make_demo(tmp_path / "demo", normal=4, anomalous=2)

    def bands(path: Path) -> np.ndarray:
        x = sf.read(path)[0]
        power = np.abs(np.fft.rfft(x / x.std())) ** 2
        return np.log(np.stack([b.sum() for b in np.array_split(power, 48)]) + 1e-9)

    feats = {p.relative_to(demo).as_posix(): bands(p) for p in demo.rglob("*.wav")}
    centroid = {i: np.mean([f for p, f in feats.items() if p.startswith(f"fan/id_{i:02d}/normal/")], 0)
                for i in (0, 2, 4, 6)}
    for path, f in feats.items():
        machine_id = int(path.split("/")[1][3:])
        if "/normal/" in path:
            assert min(centroid, key=lambda i: np.linalg.norm(f - centroid[i])) == machine_id, path
    for i in (0, 2, 4, 6):
        normal = [np.linalg.norm(f - centroid[i]) for p, f in feats.items() if p.startswith(f"fan/id_{i:02d}/normal/")]
        faulty = [np.linalg.norm(f - centroid[i]) for p, f in feats.items()
                  if p.startswith(f"fan/id_{i:02d}/abnormal/")]
        assert min(faulty) > np.mean(normal), i
