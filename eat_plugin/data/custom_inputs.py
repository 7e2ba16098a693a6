"""What the user gives -> listed entries with clean label ids: class folders or a CSV/TSV, label hygiene.

``custom.py`` decodes the entries, splits them and computes the statistics; ``scripts/prepare_custom.py``
is the command line.

Inputs:
    class folders   ``ROOT/<class>/**/<clip>`` (torchvision ImageFolder / HF ``audiofolder``); the label
                    is the class folder's name. Hidden files and folders ('.') are ignored, and so are
                    files whose extension is not in ``AUDIO_EXTENSIONS`` (counted).
    a CSV / TSV     a path column, a label column (several labels per cell, separated by ``label_sep``)
                    and an optional split column (train / valid / test; validation, val, dev -> valid;
                    eval -> test). Relative paths are relative to the audio root.

Labels:
    Surrounding whitespace is always stripped. Spellings that differ only in case or whitespace form a
    conflict group (reported, most frequent spelling first); they stay distinct classes unless
    ``merge_similar`` maps each group to its most frequent spelling (ties: the first in sorted order).
    The .lbl format cannot hold spaces, tabs or newlines in a label id, so the id is the spelling with
    every whitespace character replaced by '_' and the display name is the spelling itself; a comma
    (the .lbl id separator) cannot be mapped and is an error.
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from eat_plugin.data import prepare
from eat_plugin.data.audio_files import AUDIO_EXTENSIONS, walk_audio_files
from eat_plugin.data.prepare import LayoutError, Skipped

SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "eval": "test",
}
PATH_COLUMNS = ("path", "filepath", "file", "filename", "file_name", "audio")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target")
SPLIT_COLUMN = "split"
DELIMITERS = (",", "\t", ";", "|")


@dataclass(frozen=True)
class Entry:
    """A listed clip, not yet decoded: its path, its label spellings, where it was listed, its given split."""

    path: Path
    labels: Tuple[str, ...]
    where: str
    split: Optional[str] = None


@dataclass
class Listing:
    """What an input names: the clips, the manifest root and what was set aside while listing."""

    root: Path
    entries: List[Entry]
    description: str
    skipped: List[Tuple[Optional[str], Skipped]] = field(default_factory=list)  # (given split, why)
    non_audio: int = 0
    duplicates: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    has_split_column: bool = False


# ----------------------------------------------------------------------------------------------------
# Listing


def list_folders(root: Path) -> Listing:
    """Every audio file under ``root/<class>/`` (any depth), sorted by path; raise if there is none."""
    root = prepare.require_dir(Path(root), "a folder with one sub-folder per class (ROOT/<class>/<clip>.wav)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise LayoutError(f"{root}: no class folders; expected one sub-folder per class, ROOT/<class>/<clip>.wav")
    listing = Listing(root, [], f"class folders in {root}")
    for name in classes:
        audio, other = walk_audio_files(root / name)
        listing.non_audio += len(other)
        if not audio:
            listing.warnings.append(f"class folder {name!r} holds no audio file; no class made of it")
        listing.entries += [Entry(path, (name,), f"class folder {name!r}") for path in audio]
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        listing.warnings.append(f"{len(loose)} file(s) directly in {root} ignored: a clip's class is its folder")
    if not listing.entries:
        raise LayoutError(
            f"{root}: no audio files in the class folders {classes[:10]}; expected extensions "
            f"{', '.join(AUDIO_EXTENSIONS)}"
        )
    return listing


def list_csv(
    path: Path,
    audio_root: Optional[Path] = None,
    path_column: Optional[str] = None,
    label_column: Optional[str] = None,
    split_column: Optional[str] = None,
    label_sep: str = ";",
) -> Listing:
    """The clips a CSV/TSV lists; missing files and repeated paths are set aside with their reason."""
    path = prepare.require_file(Path(path), "a CSV/TSV with a path and a label column")
    audio_root = Path(audio_root) if audio_root is not None else path.parent
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = f.readline()
        f.seek(0)
        delimiter = _delimiter(path, header)
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        path_col = _column(path, columns, path_column, PATH_COLUMNS, "path")
        label_col = _column(path, columns, label_column, LABEL_COLUMNS, "label")
        split_col = _column(path, columns, split_column, (SPLIT_COLUMN,), "split", required=split_column is not None)
        rows = [(reader.line_num, record) for record in reader]
    if not rows:
        raise LayoutError(f"{path}: no rows after the header; expected one row per clip")
    shown = {"\t": "TAB"}.get(delimiter, delimiter)
    columns_used = f"path column {path_col!r}, label column {label_col!r}, split column {split_col!r}"
    description = f"{path} (delimiter {shown!r}, {columns_used})"
    listing = Listing(audio_root, [], description, has_split_column=bool(split_col))
    first_line: Dict[str, int] = {}
    for line, record in rows:
        where = f"{path} line {line}"
        split = _split_value(record.get(split_col), where) if split_col else None
        cell = (record.get(path_col) or "").strip().replace("\\", "/")
        if not cell:
            listing.skipped.append((split, Skipped(where, f"no path: empty {path_col!r} cell")))
            continue
        clip = Path(os.path.abspath(audio_root / cell))
        if str(clip) in first_line:
            reason = f"duplicate: listed again at line {line} (first at line {first_line[str(clip)]})"
            listing.skipped.append((split, Skipped(str(clip), reason)))
            if str(clip) not in listing.duplicates:
                listing.duplicates.append(str(clip))
            continue
        first_line[str(clip)] = line
        if not clip.is_file():
            listing.skipped.append((split, Skipped(str(clip), f"not found: listed in {where}")))
            continue
        labels = tuple(part for part in (record.get(label_col) or "").split(label_sep) if part.strip())
        listing.entries.append(Entry(clip, labels, where, split))
    if listing.duplicates:
        listing.warnings.append(
            f"{len(listing.duplicates)} path(s) listed more than once in {path}; kept the first listing of each: "
            + ", ".join(listing.duplicates[:5])
        )
    listing.root = _common_root(audio_root, [entry.path for entry in listing.entries])
    return listing


def _delimiter(path: Path, header: str) -> str:
    """Tab for .tsv/.tab; otherwise the most frequent of , TAB ; | in the header line (not the rows: a
    label cell may hold the label separator)."""
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    counts = [header.count(d) for d in DELIMITERS]
    return DELIMITERS[int(np.argmax(counts))] if max(counts) else ","


def _column(
    path: Path, columns: Sequence[str], wanted: Optional[str], defaults: Sequence[str], what: str, required: bool = True
) -> Optional[str]:
    """The column named ``wanted`` (else the first of ``defaults``), matched case-insensitively."""
    by_lower = {c.lower(): c for c in reversed(columns)}
    for name in [wanted] if wanted else defaults:
        if name in columns:
            return name
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    if not required:
        return None
    asked = f"column {wanted!r}" if wanted else f"a {what} column (one of {', '.join(defaults)})"
    raise LayoutError(f"{path}: no {asked}; the columns are {list(columns)}; pass --{what}-column to choose one")


def _split_value(value: Optional[str], where: str) -> str:
    split = SPLIT_ALIASES.get((value or "").strip().lower())
    if split is None:
        raise LayoutError(
            f"{where}: split value {value!r} is not one of train, valid, test "
            f"(also accepted: validation, val, dev -> valid; eval -> test)"
        )
    return split


def _common_root(audio_root: Path, paths: Sequence[Path]) -> Path:
    """The audio root if every clip lies under it, else the clips' common ancestor (lexical, like scan_split)."""
    root = os.path.abspath(audio_root)
    parents = [os.path.dirname(str(p)) for p in paths]
    if all(os.path.commonpath([root, parent]) == root for parent in parents):
        return Path(root)
    return Path(os.path.commonpath(parents))


# ----------------------------------------------------------------------------------------------------
# Labels


def label_id(spelling: str, where: str) -> str:
    """The .lbl id of a (stripped) label: whitespace -> '_'; a comma is an error naming the label."""
    if "," in spelling:
        raise LayoutError(
            f"{where}: label {spelling!r} contains ',', which separates label ids in .lbl files; rename it "
            f"(or, if the cell lists several labels, pass --label-sep ',')"
        )
    return "".join("_" if c.isspace() else c for c in spelling)


def similar_key(spelling: str) -> str:
    return "".join(spelling.split()).casefold()


def normalise_labels(entries: Sequence[Entry], merge_similar: bool):
    """Strip, group similar spellings, optionally merge them, map to ids (see the module docstring).

    Returns:
        the entries with label ids, the entries left without a label, ``{id: display name}``,
        the conflict groups (raw spellings, most frequent first) and the warnings.
    """
    raw = Counter(label for entry in entries for label in entry.labels)
    stripped = Counter()
    for label, count in raw.items():
        stripped[label.strip()] += count
    groups: Dict[str, List[str]] = defaultdict(list)
    for label in sorted(raw, key=lambda s: (-raw[s], s)):
        groups[similar_key(label)].append(label)
    conflicts = [group for group in groups.values() if len(group) > 1]
    spelling_of = {s: s for s in stripped}
    warnings = []
    for group in conflicts:
        spellings = sorted({s.strip() for s in group}, key=lambda s: (-stripped[s], s))
        if len(spellings) == 1:
            outcome = f"one label, {spellings[0]!r}, once surrounding whitespace is stripped"
        elif merge_similar:
            spelling_of.update({s: spellings[0] for s in spellings})
            outcome = f"merged into {spellings[0]!r} (--merge-similar-labels)"
        else:
            outcome = f"kept as {len(spellings)} distinct classes; --merge-similar-labels merges them"
        warnings.append(f"labels differing only in case or whitespace: {group}: {outcome}")
    names: Dict[str, str] = {}
    kept, unlabelled = [], []
    for entry in entries:
        ids = []
        for label in entry.labels:
            spelling = spelling_of[label.strip()]
            lid = label_id(spelling, entry.where)
            if names.setdefault(lid, spelling) != spelling:
                raise LayoutError(
                    f"{entry.where}: labels {names[lid]!r} and {spelling!r} both map to the label id {lid!r} "
                    f"(whitespace becomes '_'); rename one"
                )
            if lid not in ids:
                ids.append(lid)
        (kept if ids else unlabelled).append(replace(entry, labels=tuple(ids)))
    return kept, unlabelled, names, [sorted(g, key=lambda s: (-raw[s], s)) for g in conflicts], warnings
