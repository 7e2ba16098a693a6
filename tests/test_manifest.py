"""Manifest / label / descriptor files: round trips through the one writer, and every malformed input."""

from pathlib import Path

import pytest

from eat_plugin.data.manifest import (
    Clip,
    ManifestError,
    read_label_descriptors,
    read_labels,
    read_manifest,
    write_label_descriptors,
    write_split,
)

CLIPS = [
    Clip("a/one.wav", 16000, ("/m/dog",)),
    Clip("b/two.flac", 32000, ("/m/cat", "/m/dog")),
    Clip("three.wav", 8000, ("/m/bird",)),
]
IDS = ["/m/dog", "/m/cat", "/m/bird"]
NAMES = ["Dog", 'Cat, "domestic"', "Bird"]


def write(tmp_path: Path) -> Path:
    (tmp_path / "audio").mkdir(exist_ok=True)
    write_split(tmp_path, "train", tmp_path / "audio", CLIPS)
    write_label_descriptors(tmp_path / "label_descriptors.csv", IDS, NAMES)
    return tmp_path


def test_round_trip(tmp_path):
    write(tmp_path)
    manifest = read_manifest(tmp_path / "train.tsv")
    assert manifest.root == (tmp_path / "audio").resolve()
    assert [(r.relpath, r.num_samples) for r in manifest.rows] == [(c.relpath, c.num_samples) for c in CLIPS]
    assert manifest.audio_path(1) == manifest.root / "b/two.flac"
    descriptors = read_label_descriptors(tmp_path / "label_descriptors.csv")
    assert descriptors.ids == IDS and descriptors.names == NAMES
    assert read_labels(tmp_path / "train.lbl", descriptors, manifest) == [[0], [1, 0], [2]]


def test_written_format_is_the_official_one(tmp_path):
    write(tmp_path)
    assert (tmp_path / "train.tsv").read_text().splitlines() == [
        str((tmp_path / "audio").resolve()), "a/one.wav\t16000", "b/two.flac\t32000", "three.wav\t8000",
    ]
    assert (tmp_path / "train.lbl").read_text().splitlines()[1] == "b/two.flac\t/m/cat,/m/dog"
    assert (tmp_path / "label_descriptors.csv").read_text().splitlines() == [
        '0,/m/dog,"Dog"', '1,/m/cat,"Cat, ""domestic"""', '2,/m/bird,"Bird"',
    ]


def test_relative_root_and_audioset_header(tmp_path, golden_dir):
    manifest = read_manifest(golden_dir / "data" / "train.tsv")  # root line is the relative "wavs"
    assert manifest.root == golden_dir / "data" / "wavs" and len(manifest) == 8
    (tmp_path / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    assert read_label_descriptors(tmp_path / "class_labels_indices.csv").ids == ["/m/09x0r"]


def test_label_keys_may_be_file_names_or_stems(tmp_path):
    write(tmp_path)
    (tmp_path / "train.lbl").write_text("one\t/m/dog\ntwo.flac\t/m/cat\nthree.wav /m/bird\n")
    labels = read_labels(tmp_path / "train.lbl", read_label_descriptors(tmp_path / "label_descriptors.csv"),
                         read_manifest(tmp_path / "train.tsv"))
    assert labels == [[0], [1], [2]]


# ---------------------------------------------------------------------------------- bad input


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv: manifest not found"):
        read_manifest(tmp_path / "nope.tsv")


def test_manifest_root_does_not_exist(tmp_path):
    (tmp_path / "train.tsv").write_text("/definitely/not/here\na.wav\t100\n")
    with pytest.raises(ManifestError, match=r"train.tsv: line 1: audio root directory /definitely/not/here does not exist"):
        read_manifest(tmp_path / "train.tsv")


@pytest.mark.parametrize("line", ["a.wav", "a.wav\t100\textra", "a.wav\tmany", "a.wav\t-5"])
def test_manifest_line_with_wrong_fields(tmp_path, line):
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\nok.wav\t10\n{line}\n")
    with pytest.raises(ManifestError, match=r"train.tsv: line 3: expected .*relpath<TAB>num_samples"):
        read_manifest(tmp_path / "train.tsv")


def test_empty_manifest(tmp_path):
    (tmp_path / "train.tsv").write_text("")
    with pytest.raises(ManifestError, match="line 1 must be the audio root"):
        read_manifest(tmp_path / "train.tsv")


def test_label_count_differs_from_manifest_rows(tmp_path):
    write(tmp_path)
    lines = (tmp_path / "train.lbl").read_text().splitlines()
    (tmp_path / "train.lbl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(ManifestError, match=r"train.lbl: has 2 label lines but manifest .*train.tsv has 3 rows"):
        read_labels(tmp_path / "train.lbl", read_label_descriptors(tmp_path / "label_descriptors.csv"),
                    read_manifest(tmp_path / "train.tsv"))


def test_unknown_label_id(tmp_path):
    write(tmp_path)
    (tmp_path / "train.lbl").write_text("a/one.wav\t/m/dog\nb/two.flac\t/m/cow\nthree.wav\t/m/bird\n")
    with pytest.raises(ManifestError, match=r"train.lbl: line 2: unknown label id\(s\) \['/m/cow'\]"):
        read_labels(tmp_path / "train.lbl", read_label_descriptors(tmp_path / "label_descriptors.csv"),
                    read_manifest(tmp_path / "train.tsv"))


def test_label_line_out_of_order(tmp_path):
    write(tmp_path)
    (tmp_path / "train.lbl").write_text("b/two.flac\t/m/dog\na/one.wav\t/m/cat\nthree.wav\t/m/bird\n")
    with pytest.raises(ManifestError, match=r"line 1: key 'b/two.flac' does not name manifest row 1"):
        read_labels(tmp_path / "train.lbl", read_label_descriptors(tmp_path / "label_descriptors.csv"),
                    read_manifest(tmp_path / "train.tsv"))


def test_label_line_with_wrong_fields_or_repeated_id(tmp_path):
    write(tmp_path)
    descriptors = read_label_descriptors(tmp_path / "label_descriptors.csv")
    (tmp_path / "x.lbl").write_text("a/one.wav\n")
    with pytest.raises(ManifestError, match=r"x.lbl: line 1: expected 2 fields"):
        read_labels(tmp_path / "x.lbl", descriptors)
    (tmp_path / "y.lbl").write_text("a/one.wav\t/m/dog,/m/dog\n")
    with pytest.raises(ManifestError, match=r"y.lbl: line 1: label id\(s\) \['/m/dog'\] listed more than once"):
        read_labels(tmp_path / "y.lbl", descriptors)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0,/m/a,A\n1,/m/a,B\n", r"line 2: duplicate label id '/m/a'"),
        ("0,/m/a,A\n0,/m/b,B\n", r"line 2: duplicate class index 0"),
        ("0,/m/a,A\n2,/m/b,B\n", r"indices must be 0..1 without gaps; missing \[1\]"),
        ("zero,/m/a,A\n", r"line 1: index 'zero' is not an integer"),
        ("0\n", r"line 1: expected 'index,id,display name'"),
        ("", r"no classes"),
    ],
)
def test_bad_label_descriptors(tmp_path, text, message):
    (tmp_path / "label_descriptors.csv").write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_label_descriptors(tmp_path / "label_descriptors.csv")


def test_writer_refuses_unwritable_fields(tmp_path):
    with pytest.raises(ManifestError, match="contains a tab"):
        write_split(tmp_path, "train", tmp_path, [Clip("a\tb.wav", 10, ("x",))])
    with pytest.raises(ManifestError, match="has no labels"):
        write_split(tmp_path, "train", tmp_path, [Clip("a.wav", 10, ())])
    with pytest.raises(ManifestError, match="duplicate label ids"):
        write_label_descriptors(tmp_path / "d.csv", ["a", "a"])
