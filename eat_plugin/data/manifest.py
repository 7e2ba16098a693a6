"""The official manifest format: reading with clear errors, and the one writer every preparer uses.

Files of a data directory (reference §5.1):
    {split}.tsv               first line: audio root directory; then ``relpath<TAB>num_samples``
                              (samples at the file's native rate)
    {split}.lbl               one line per manifest row: ``key<TAB>id1,id2,...`` (label ids, e.g. AudioSet MIDs)
    label_descriptors.csv     ``index,id,"display name"``, no header, indices 0..C-1
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from eat_plugin.console import InputError

PathLike = Union[str, Path]


class ManifestError(InputError, ValueError):
    """A malformed manifest / label / descriptor file; the message names the file, line and expectation."""


@dataclass(frozen=True)
class ManifestRow:
    relpath: str
    num_samples: int
    line: int  # 1-based line number in the .tsv (the root is line 1)


@dataclass
class Manifest:
    path: Path
    root: Path
    rows: List[ManifestRow]

    def __len__(self) -> int:
        return len(self.rows)

    def audio_path(self, index: int) -> Path:
        return self.root / self.rows[index].relpath


@dataclass
class LabelDescriptors:
    """Class table: ``ids[i]`` is the label id (e.g. ``/m/09x0r``) of class index i, ``names[i]`` its display name."""

    ids: List[str]
    names: List[str]

    def __post_init__(self):
        self.index_of: Dict[str, int] = {label_id: i for i, label_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)


def _read_lines(path: Path, what: str) -> List[str]:
    """The file's lines: UTF-8 (a leading BOM dropped), LF, CRLF or CR line ends.

    Only line ends split lines: a path may hold any other character (str.splitlines would also split at
    form feeds, U+2028, ...).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    data = path.read_bytes()
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # the BOM some Windows editors write
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        raise ManifestError(
            f"{path}: line {line}: byte 0x{data[err.start]:02x} is not valid UTF-8; expected a UTF-8 text {what} "
            f"(re-save it as UTF-8)"
        ) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_manifest(path: PathLike, check_root: bool = True) -> Manifest:
    """Parse ``{split}.tsv``. A relative root line is taken relative to the manifest's directory."""
    path = Path(path)
    lines = _read_lines(path, "manifest")
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}: line 1 must be the audio root directory; the file is empty or starts blank")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = path.parent / root
    if check_root and not root.is_dir():
        raise ManifestError(f"{path}: line 1: audio root directory {root} does not exist")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 2:
            raise ManifestError(
                f"{path}: line {lineno}: expected 2 tab-separated fields 'relpath<TAB>num_samples', "
                f"got {len(fields)}: {line!r}"
            )
        relpath, count = fields
        try:
            num_samples = int(count)
        except ValueError:
            num_samples = -1
        if num_samples < 0 or not relpath:
            raise ManifestError(
                f"{path}: line {lineno}: expected 'relpath<TAB>num_samples' with a non-negative integer "
                f"sample count, got {line!r}"
            )
        rows.append(ManifestRow(relpath, num_samples, lineno))
    return Manifest(path, root, rows)


def read_label_descriptors(path: PathLike) -> LabelDescriptors:
    """Parse ``label_descriptors.csv`` (``index,id,name``); indices must be exactly 0..C-1, ids unique."""
    path = Path(path)
    text = "\n".join(_read_lines(path, "label descriptors file"))
    by_index: Dict[int, Tuple[str, str]] = {}
    seen_ids: Dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    next_line = 1  # a quoted name may span lines: a record starts on the line after the previous one ended
    for fields in reader:
        lineno, next_line = next_line, reader.line_num + 1
        if not fields or not any(f.strip() for f in fields):
            continue
        if lineno == 1 and fields[0].strip().lower() == "index":  # AudioSet's class_labels_indices.csv header
            continue
        _add_descriptor(path, lineno, fields, by_index, seen_ids)
    if not by_index:
        raise ManifestError(f"{path}: no classes")
    if sorted(by_index) != list(range(len(by_index))):
        missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
        raise ManifestError(f"{path}: class indices must be 0..{len(by_index) - 1} without gaps; missing {missing[:10]}")
    return LabelDescriptors([by_index[i][0] for i in range(len(by_index))], [by_index[i][1] for i in range(len(by_index))])


def _add_descriptor(path: Path, lineno: int, fields: List[str], by_index: Dict[int, Tuple[str, str]],
                    seen_ids: Dict[str, int]) -> None:
    if not 2 <= len(fields) <= 3:
        raise ManifestError(
            f"{path}: line {lineno}: expected 'index,id,display name' (quote a name that contains commas), "
            f"got {len(fields)} fields: {fields!r}"
        )
    try:
        index = int(fields[0])
    except ValueError:
        raise ManifestError(f"{path}: line {lineno}: index {fields[0]!r} is not an integer") from None
    label_id = fields[1].strip()
    name = fields[2].strip() if len(fields) > 2 else label_id
    if index < 0:
        raise ManifestError(f"{path}: line {lineno}: class index {index} is negative; expected 0..C-1")
    if not label_id:
        raise ManifestError(f"{path}: line {lineno}: class {index} has an empty label id")
    if index in by_index:
        raise ManifestError(f"{path}: line {lineno}: duplicate class index {index}")
    if label_id in seen_ids:
        raise ManifestError(f"{path}: line {lineno}: duplicate label id {label_id!r} (also class {seen_ids[label_id]})")
    by_index[index] = (label_id, name)
    seen_ids[label_id] = index


def read_labels(path: PathLike, descriptors: LabelDescriptors, manifest: Optional[Manifest] = None) -> List[List[int]]:
    """Parse ``{split}.lbl`` into class indices per manifest row.

    Checks that the file has one line per manifest row, that each line's key names that row's clip
    (its relative path, file name or stem) and that every label id is in ``descriptors``.
    """
    path = Path(path)
    lines = [(n, line) for n, line in enumerate(_read_lines(path, "label file"), start=1) if line.strip()]
    if manifest is not None and len(lines) != len(manifest):
        raise ManifestError(
            f"{path}: has {len(lines)} label lines but manifest {manifest.path} has {len(manifest)} rows; "
            f"they must be aligned one to one"
        )
    labels = []
    for row, (lineno, line) in enumerate(lines, start=1):
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            raise ManifestError(
                f"{path}: line {lineno}: expected 2 fields 'key<TAB>id1,id2,...', got {len(fields)}: {line!r}"
            )
        key, ids = fields[0].strip(), [i.strip() for i in fields[1].split(",") if i.strip()]
        if manifest is not None and not _key_matches(key, manifest.rows[row - 1].relpath):
            raise ManifestError(
                f"{path}: line {lineno}: key {key!r} does not name manifest row {row} "
                f"({manifest.rows[row - 1].relpath!r}); .lbl lines must follow the manifest order"
            )
        if not ids:
            raise ManifestError(f"{path}: line {lineno}: no label ids in {fields[1]!r}; expected 'id1,id2,...'")
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ManifestError(f"{path}: line {lineno}: label id(s) {duplicated} listed more than once")
        unknown = [i for i in ids if i not in descriptors.index_of]
        if unknown:
            raise ManifestError(f"{path}: line {lineno}: unknown label id(s) {unknown}; not in label_descriptors.csv")
        labels.append([descriptors.index_of[i] for i in ids])
    return labels


def _key_matches(key: str, relpath: str) -> bool:
    name = os.path.basename(relpath)
    candidates = (relpath, name, os.path.splitext(name)[0], os.path.splitext(relpath)[0])
    return key.strip() in {c.strip() for c in candidates}  # the reader strips keys; a path may end in a space


# ----------------------------------------------------------------------------------------------------
# Writing: the single writer shared by every preparation script.


@dataclass(frozen=True)
class Clip:
    """One prepared clip: its path relative to the root, its length in native samples, its label ids."""

    relpath: str
    num_samples: int
    label_ids: Tuple[str, ...] = ()


def _check_field(value: str, what: str) -> str:
    if not value.strip() or any(c in value for c in "\t\n\r"):  # a blank row would be skipped on reading
        raise ManifestError(f"{what} {value!r} is blank or contains a tab/newline; it cannot be written to a manifest")
    return value


def write_split(out_dir: PathLike, split: str, root: PathLike, clips: Sequence[Clip], with_labels: bool = True) -> None:
    """Write ``{split}.tsv`` (and ``{split}.lbl``) for ``clips`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tsv = [str(Path(root).resolve())]
    lbl = []
    for clip in clips:
        _check_field(clip.relpath, "clip path")
        tsv.append(f"{clip.relpath}\t{int(clip.num_samples)}")
        if with_labels:
            if not clip.label_ids:
                raise ManifestError(f"clip {clip.relpath!r} has no labels")
            ids = ",".join(_check_field(i, "label id") for i in clip.label_ids)
            if " " in ids:
                raise ManifestError(f"label ids of {clip.relpath!r} contain spaces: {ids!r}")
            lbl.append(f"{clip.relpath}\t{ids}")
    _atomic_write(out_dir / f"{split}.tsv", "\n".join(tsv) + "\n")
    if with_labels:
        _atomic_write(out_dir / f"{split}.lbl", "\n".join(lbl) + ("\n" if lbl else ""))


def write_label_descriptors(path: PathLike, ids: Sequence[str], names: Optional[Sequence[str]] = None) -> None:
    """Write ``index,id,"name"`` rows (no header), class i on row i."""
    names = list(names) if names is not None else list(ids)
    if len(set(ids)) != len(ids):
        raise ManifestError(f"{path}: duplicate label ids {sorted({i for i in ids if list(ids).count(i) > 1})}")
    rows = []
    for index, (label_id, name) in enumerate(zip(ids, names)):
        if "," in str(label_id) or str(label_id).startswith('"'):
            raise ManifestError(f"{path}: label id {label_id!r} contains ',' or starts with '\"'; it would not read back")
        quoted = '"' + str(name).replace('"', '""') + '"'  # the official files quote every display name
        rows.append(f"{index},{_check_field(label_id, 'label id')},{quoted}\n")
    _atomic_write(Path(path), "".join(rows))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)

