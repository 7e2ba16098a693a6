"""Machine sounds (anomalous sound detection): the published layouts -> per-clip metadata, the split, the
metadata file. ``scripts/prepare_machine_sounds.py`` is the command line; the rules live here, once.

Layouts (paths relative to the root given to :func:`list_clips`; ``<type>`` is the machine type, e.g.
``fan``, ``pump``, ``ToyCar``; any audio extension is accepted, the published sets are ``.wav``):

    MIMII            ``[<snr>_dB_]<type>/id_00/normal/00000000.wav`` and ``.../abnormal/...``
                     ('abnormal' is recorded as condition 'anomaly'). The published archives unpack to
                     ``<snr>_dB_<type>/<type>/id_00/...``: the folder right above ``id_NN`` names the type,
                     an ``<snr>_dB_`` prefix on it is dropped, folders further up are not read. No
                     train/test split is given (see Split).
    DCASE 2020       ``<type>/train/normal_id_00_00000000.wav``, ``<type>/test/{normal,anomaly}_id_00_...wav``;
                     evaluation-set test clips ``<type>/test/id_05_00000000.wav`` (no condition: unlabelled).
    DCASE 2021-2023  ``<type>/{train,test,source_test,target_test}/
                     section_00_{source,target}_{train,test}[_{normal,anomaly}]_0000[_<attributes>].wav``
                     (attributes: free text) and evaluation-set test clips ``section_03_0000.wav``. The domain
                     comes from the name, else from a ``source_test`` / ``target_test`` folder, else None.

    If the root itself is the type folder (``id_00/...`` or ``train/...`` directly under it), the root's
    name is the type. Hidden files and folders are ignored, and so are non-audio files (the attribute
    csvs, READMEs; counted). An audio file that matches no layout, or whose folder contradicts its name
    (a ``*_test_*`` name in ``train/``, a ``target`` name in ``source_test/``, an unlabelled clip in
    ``train/``), is a :class:`LayoutError` listing the files (the first 20 and the count), never a skip.

Machine id:
    MIMII / DCASE 2020: the ``id_NN`` number (label id ``id_NN``). DCASE 2021-2023: the section number
    (label id ``section_NN``): from 2021 on a section is the unit the classification-based baselines
    (MobileNetV2 / section-ID classification) classify, and the ``section`` field keeps it as well. One
    output data set holds one machine type and one layout; its class index is the machine id, so a head
    of ``max id + 1`` outputs indexes ids directly (ids {0, 2, 4, 6} -> 7 classes, 1, 3, 5 unused).

Split (:func:`split_clips`), per (machine type, machine id), deterministic in ``seed`` and the paths
(never the listing order); ``round`` is round-half-up:
    test     every clip of a given ``test`` folder, untouched by the fractions. Clips without a given
             split (MIMII) follow the MIMII paper's protocol: every anomalous clip and as many normal
             clips (drawn with the seed; at most all but one) go to test, the other normal clips are the
             training clips.
    train    of the n training clips, ``k = max(1, round(n * subset_fraction))`` are kept (drawn with the
             seed); of those, ``v = round(k * val_fraction)`` (at least 1, at most k - 1; 0 when k < 2 or
             val_fraction is 0) go to valid, the rest to train. Smaller subsets are prefixes of larger
             ones (one permutation per id).
    Rows of every split are sorted by path.

Metadata file ``{split}.machine.tsv`` (next to the official ``{split}.tsv`` / ``.lbl``), UTF-8,
tab-separated, one header row then one row per manifest row in the same order; ``-`` marks "none":

    relpath  machine_type  machine_id  section  domain  condition
    fan/id_00/normal/00000001.wav  fan  0  -  -  normal
    fan/train/section_00_source_train_normal_0001_a.wav  fan  0  0  source  normal

    relpath       the manifest row's path (relative to the manifest's root, line 1 of ``{split}.tsv``)
    machine_id    integer, the class index of the row's ``.lbl`` label
    section       integer (DCASE 2021-2023, equal to machine_id) or ``-``
    domain        ``source`` / ``target`` / ``-``
    condition     ``normal`` / ``anomaly`` / ``-`` (an unlabelled evaluation-set test clip)
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from eat_plugin.console import InputError
from eat_plugin.data.audio_files import walk_audio_files
from eat_plugin.data.manifest import read_manifest
from eat_plugin.data.prepare import LayoutError

PathLike = Union[str, Path]

MIMII, DCASE2020, DCASE2021 = "MIMII", "DCASE 2020", "DCASE 2021-2023"
LAYOUT_HELP = (
    "  MIMII            [<snr>_dB_]<type>/id_00/{normal,abnormal}/00000000.wav\n"
    "  DCASE 2020       <type>/{train,test}/{normal,anomaly}_id_00_00000000.wav "
    "(evaluation test clips: id_00_00000000.wav)\n"
    "  DCASE 2021-2023  <type>/{train,test,source_test,target_test}/"
    "section_00_{source,target}_{train,test}_{normal,anomaly}_0000[_<attributes>].wav "
    "(evaluation test clips: section_00_0000.wav)"
)
MAX_LISTED = 20
SPLITS = ("train", "valid", "test")
CONDITIONS = ("normal", "anomaly")
DOMAINS = ("source", "target")
METADATA_COLUMNS = ("relpath", "machine_type", "machine_id", "section", "domain", "condition")
NONE = "-"
TEST_STREAM, TRAIN_STREAM = 0x74657374, 0x7472616E  # "test", "tran": independent draws per id

_SNR_TYPE = re.compile(r"^(-?\d+)_?dB_(.+)$")
_MIMII_ID = re.compile(r"^id_(\d+)$")
_MIMII_CONDITION = {"normal": "normal", "abnormal": "anomaly"}
_DCASE2020 = re.compile(r"^(?:(normal|anomaly)_)?id_(\d+)_(\d+)$")
_DCASE2020_FOLDERS = {"train": "train", "test": "test"}
_SECTION_NAMED = re.compile(r"^section_(\d+)_(source|target)_(train|test)_(?:(normal|anomaly)_)?(\d+)(?:_(.+))?$")
_SECTION_EVAL = re.compile(r"^section_(\d+)_(\d+)(?:_(.+))?$")
_DCASE2021_FOLDERS = {"train": ("train", None), "test": ("test", None),
                      "source_test": ("test", "source"), "target_test": ("test", "target")}


class MachineMetadataError(InputError, ValueError):
    """A malformed ``{split}.machine.tsv``; the message names the file, the line and the expectation."""


@dataclass(frozen=True)
class MachineClip:
    """One clip of a machine-sound layout.

    ``path`` is relative to the listed root (POSIX), as the manifest writes it; ``condition`` is None for an
    unlabelled evaluation-set test clip; ``given_split`` is the published split (None for MIMII).
    """

    path: str
    machine_type: str
    machine_id: int
    section: Optional[int]
    domain: Optional[str]  # 'source' / 'target' / None
    condition: Optional[str]  # 'normal' / 'anomaly' / None
    given_split: Optional[str]  # 'train' / 'test' / None
    layout: str = ""  # MIMII / DCASE2020 / DCASE2021 (the constants above)


@dataclass(frozen=True)
class MachineRow:
    """One row of ``{split}.machine.tsv`` (``line``: 1-based, the header is line 1)."""

    relpath: str
    machine_type: str
    machine_id: int
    section: Optional[int]
    domain: Optional[str]
    condition: Optional[str]
    line: int


@dataclass
class MachineListing:
    root: Path
    clips: List[MachineClip]  # sorted by path
    non_audio: int  # non-audio files ignored


class _NoMatch(Exception):
    """Why one file matches no layout (collected, then reported together)."""


# ----------------------------------------------------------------------------------------------------
# Parsing


def parse_clip(relpath: str, root_name: str = "") -> MachineClip:
    """The metadata of one file from its path under the root (``root_name``: the root folder's name, the
    type when the root is the type folder). Raises ``ValueError`` saying why the path matches no layout."""
    try:
        return _parse(relpath, root_name)
    except _NoMatch as err:
        raise ValueError(str(err)) from None


def _parse(relpath: str, root_name: str) -> MachineClip:
    parts = [p for p in Path(relpath).as_posix().split("/") if p]
    stem = os.path.splitext(parts[-1])[0]
    above = [root_name, *parts[:-1]]  # the folders above the file, the root's name first

    def folder(depth: int) -> str:  # depth 1 = the file's folder
        return above[-depth] if depth <= len(above) else ""

    if folder(1) in _MIMII_CONDITION and _MIMII_ID.match(folder(2)):
        machine_type = _type_name(folder(3), relpath)
        machine_id = int(_MIMII_ID.match(folder(2)).group(1))
        return MachineClip(relpath, machine_type, machine_id, None, None, _MIMII_CONDITION[folder(1)], None, MIMII)
    if stem.startswith("section_"):
        return _parse_dcase2021(relpath, stem, folder(1), folder(2))
    match = _DCASE2020.match(stem)
    if match:
        split = _DCASE2020_FOLDERS.get(folder(1))
        if split is None:
            raise _NoMatch(f"a DCASE 2020 name in folder {folder(1)!r}; expected train/ or test/")
        condition, machine_id = match.group(1), int(match.group(2))
        if split == "train" and condition is None:
            raise _NoMatch("an unlabelled (evaluation test) name in train/; training clip names start with normal_")
        return MachineClip(relpath, _type_name(folder(2), relpath), machine_id, None, None, condition, split, DCASE2020)
    raise _NoMatch("matches no layout")


def _parse_dcase2021(relpath: str, stem: str, split_folder: str, type_folder: str) -> MachineClip:
    if split_folder not in _DCASE2021_FOLDERS:
        raise _NoMatch(f"a DCASE 2021-2023 name in folder {split_folder!r}; expected "
                       f"{'/, '.join(_DCASE2021_FOLDERS)}/")
    split, folder_domain = _DCASE2021_FOLDERS[split_folder]
    named, unnamed = _SECTION_NAMED.match(stem), _SECTION_EVAL.match(stem)
    if named:
        section, domain, name_split, condition = int(named.group(1)), named.group(2), named.group(3), named.group(4)
        if name_split != split:
            raise _NoMatch(f"a {name_split} clip name in folder {split_folder}/")
        if folder_domain is not None and domain != folder_domain:
            raise _NoMatch(f"a {domain}-domain name in folder {split_folder}/")
    elif unnamed:
        section, domain, condition = int(unnamed.group(1)), folder_domain, None
    else:
        raise _NoMatch("starts with section_ but matches no DCASE 2021-2023 name")
    if split == "train" and condition is None:
        raise _NoMatch("an unlabelled (evaluation test) name in train/; training clip names carry _normal_")
    return MachineClip(relpath, _type_name(type_folder, relpath), section, section, domain, condition, split, DCASE2021)


def _type_name(folder: str, relpath: str) -> str:
    """The machine type from its folder name, without an ``<snr>_dB_`` prefix."""
    match = _SNR_TYPE.match(folder)
    name = match.group(2) if match else folder
    if not name or any(c in name for c in "\t\n\r"):
        raise _NoMatch("no machine-type folder above it" if not name else f"machine type {name!r} has a tab/newline")
    return name


def list_clips(root: PathLike) -> MachineListing:
    """Every audio file under ``root`` parsed (see the module docstring); ``LayoutError`` for unmatched files."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: directory not found; expected a machine-sound root (MIMII or DCASE task 2)")
    audio, other = walk_audio_files(root)
    root_name = root.resolve().name
    clips, unmatched = [], []
    for path in audio:
        relpath = Path(os.path.relpath(path, root)).as_posix()
        try:
            clips.append(_parse(relpath, root_name))
        except _NoMatch as err:
            unmatched.append((relpath, str(err)))
    if unmatched:
        listed = "\n".join(f"  {relpath}: {why}" for relpath, why in unmatched[:MAX_LISTED])
        more = f"\n  ... and {len(unmatched) - MAX_LISTED} more" if len(unmatched) > MAX_LISTED else ""
        raise LayoutError(
            f"{root}: {len(unmatched)} audio file(s) match no machine-sound layout "
            f"(first {min(len(unmatched), MAX_LISTED)} listed):\n{listed}{more}\nexpected one of (under the root):\n"
            f"{LAYOUT_HELP}"
        )
    if not clips:
        raise LayoutError(f"{root}: no audio files found ({len(other)} other files); expected one of:\n{LAYOUT_HELP}")
    return MachineListing(root, sorted(clips, key=lambda c: c.path), len(other))


def machine_types(clips: Sequence[MachineClip]) -> Dict[str, int]:
    """``{machine type: clip count}``, sorted by type."""
    return dict(sorted(Counter(c.machine_type for c in clips).items()))


def select_machine_type(clips: Sequence[MachineClip], machine_type: Optional[str], root: PathLike) -> List[MachineClip]:
    """The clips of one machine type: ``machine_type``, or the only one present. ``LayoutError`` (listing the
    types found) if it is absent or if none is given and there are several; also if the type mixes layouts."""
    found = machine_types(clips)
    listed = ", ".join(f"{name} ({n} clips)" for name, n in found.items())
    if machine_type is None and len(found) > 1:
        raise LayoutError(f"{root}: holds several machine types: {listed}; choose one with --machine-type")
    chosen = machine_type if machine_type is not None else next(iter(found))
    if chosen not in found:
        raise LayoutError(f"{root}: no clips of machine type {chosen!r}; found {listed}")
    selected = [c for c in clips if c.machine_type == chosen]
    layouts: Dict[str, List[str]] = defaultdict(list)
    for clip in selected:
        layouts[clip.layout].append(clip.path)
    if len(layouts) > 1:
        mixed = "; ".join(f"{name}: {len(paths)} files, e.g. {paths[0]}" for name, paths in sorted(layouts.items()))
        raise LayoutError(f"{root}: machine type {chosen!r} mixes layouts ({mixed}); point the root at one of them")
    return selected


# ----------------------------------------------------------------------------------------------------
# Classes


def label_id(machine_id: int, sectioned: bool) -> str:
    """``id_00`` (MIMII / DCASE 2020) or ``section_00`` (DCASE 2021-2023)."""
    return f"{'section' if sectioned else 'id'}_{machine_id:02d}"


def clip_label(clip: MachineClip) -> str:
    return label_id(clip.machine_id, clip.section is not None)


def class_table(clips: Sequence[MachineClip]) -> Tuple[List[str], List[str]]:
    """Label ids and display names by class index = machine id, ``0..max id``; unused ids are named
    ``(unused id 1)`` / ``(unused section 1)``. The clips must be of one type and one layout."""
    if not clips:
        raise LayoutError("no clips: the class table needs at least one machine id")
    sectioned = clips[0].section is not None
    used = {c.machine_id for c in clips}
    machine_type = clips[0].machine_type
    kind = "section" if sectioned else "id"
    ids = [label_id(i, sectioned) for i in range(max(used) + 1)]
    names = [f"{machine_type} {ids[i]}" if i in used else f"(unused {kind} {i})" for i in range(len(ids))]
    return ids, names


# ----------------------------------------------------------------------------------------------------
# Split


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def kept_size(n: int, subset_fraction: float) -> int:
    """Training clips kept of ``n``: ``max(1, round(n * f))`` (0 when n is 0)."""
    return 0 if n == 0 else min(n, max(1, _round_half_up(n * subset_fraction)))


def valid_size(kept: int, val_fraction: float) -> int:
    """Validation clips of ``kept``: ``round(kept * f)`` in ``[1, kept - 1]``; 0 when f is 0 or kept < 2."""
    if val_fraction <= 0 or kept < 2:
        return 0
    return min(kept - 1, max(1, _round_half_up(kept * val_fraction)))


def _generator(seed: int, machine_type: str, machine_id: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(machine_type.encode("utf-8")), machine_id, stream])


def split_clips(clips: Sequence[MachineClip], subset_fraction: float = 1.0, val_fraction: float = 0.1,
                seed: int = 0) -> Dict[str, List[MachineClip]]:
    """``{"train", "valid", "test": clips sorted by path}`` by the module docstring's rule."""
    if not 0 < subset_fraction <= 1 or not 0 <= val_fraction < 1 or seed < 0:
        raise ValueError(f"need 0 < subset_fraction <= 1, 0 <= val_fraction < 1 and seed >= 0; got "
                         f"{subset_fraction}, {val_fraction}, {seed}")
    groups: Dict[Tuple[str, int], List[MachineClip]] = defaultdict(list)
    for clip in clips:
        groups[(clip.machine_type, clip.machine_id)].append(clip)
    out: Dict[str, List[MachineClip]] = {split: [] for split in SPLITS}
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda c: c.path)
        test = [c for c in members if c.given_split == "test"]
        pool = [c for c in members if c.given_split == "train"]
        unsplit = [c for c in members if c.given_split is None]
        if unsplit:  # the MIMII protocol: anomalies + as many normal clips to test
            anomalies = [c for c in unsplit if c.condition == "anomaly"]
            normals = [c for c in unsplit if c.condition != "anomaly"]
            n_test = min(len(anomalies), max(len(normals) - 1, 0))
            order = _generator(seed, *key, TEST_STREAM).permutation(len(normals))
            test += anomalies + [normals[i] for i in order[:n_test]]
            pool += [normals[i] for i in order[n_test:]]
        pool.sort(key=lambda c: c.path)
        order = _generator(seed, *key, TRAIN_STREAM).permutation(len(pool))
        kept = kept_size(len(pool), subset_fraction)
        valid = valid_size(kept, val_fraction)
        out["valid"] += [pool[i] for i in order[:valid]]
        out["train"] += [pool[i] for i in order[valid:kept]]
        out["test"] += test
    for split in SPLITS:
        out[split].sort(key=lambda c: c.path)
    return out


def split_counts(splits: Dict[str, Sequence[MachineClip]]) -> Dict[str, Dict[str, Dict[str, int]]]:
    """Per split: clips per machine label id, per condition (``unlabelled`` for None), per domain."""
    def count(clips, key):
        return dict(sorted(Counter(key(c) for c in clips).items()))

    return {
        "machine_ids": {s: count(clips, clip_label) for s, clips in splits.items()},
        "conditions": {s: {**{c: 0 for c in CONDITIONS}, **count(clips, lambda c: c.condition or "unlabelled")}
                       for s, clips in splits.items()},
        "domains": {s: count(clips, lambda c: c.domain or "none") for s, clips in splits.items()},
    }


# ----------------------------------------------------------------------------------------------------
# The metadata file


def metadata_path(data_dir: PathLike, split: str) -> Path:
    return Path(data_dir) / f"{split}.machine.tsv"


def _cell(value) -> str:
    text = NONE if value is None else str(value)
    if not text or any(c in text for c in "\t\n\r"):
        raise MachineMetadataError(f"metadata value {text!r} is empty or contains a tab/newline")
    return text


def write_machine_metadata(out_dir: PathLike, split: str, clips: Sequence[MachineClip]) -> Path:
    """Write ``{split}.machine.tsv`` for ``clips`` (in manifest order); return its path."""
    path = metadata_path(out_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(METADATA_COLUMNS)]
    for c in clips:
        lines.append("\t".join(_cell(v) for v in (c.path, c.machine_type, c.machine_id, c.section, c.domain,
                                                  c.condition)))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_machine_metadata(data_dir: PathLike, split: str) -> List[MachineRow]:
    """Parse ``{split}.machine.tsv`` and check it row by row against ``{split}.tsv`` (same paths, same order).

    Raises ``FileNotFoundError`` for a missing file and :class:`MachineMetadataError` naming the file and
    line for a missing header, a malformed row, or a row count / path that differs from the manifest.
    """
    path = metadata_path(data_dir, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: machine metadata not found; scripts/prepare_machine_sounds.py writes it")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MachineMetadataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = "\t".join(METADATA_COLUMNS)
    if not lines or lines[0].strip() != header:
        got = repr(lines[0]) if lines else "an empty file"
        raise MachineMetadataError(f"{path}: line 1: expected the header {header!r} (tab-separated), got {got}")
    rows = [_metadata_row(path, lineno, line) for lineno, line in enumerate(lines[1:], start=2) if line.strip()]
    manifest = read_manifest(Path(data_dir) / f"{split}.tsv", check_root=False)
    if len(rows) != len(manifest):
        raise MachineMetadataError(
            f"{path}: has {len(rows)} rows but manifest {manifest.path} has {len(manifest)}; "
            f"they must be aligned one to one")
    for row, manifest_row in zip(rows, manifest.rows):
        if row.relpath != manifest_row.relpath:
            raise MachineMetadataError(
                f"{path}: line {row.line}: path {row.relpath!r} differs from manifest {manifest.path} line "
                f"{manifest_row.line} ({manifest_row.relpath!r}); rows must follow the manifest order")
    return rows


def _metadata_row(path: Path, lineno: int, line: str) -> MachineRow:
    fields = line.split("\t")
    where = f"{path}: line {lineno}"
    if len(fields) != len(METADATA_COLUMNS):
        raise MachineMetadataError(f"{where}: expected {len(METADATA_COLUMNS)} tab-separated fields "
                                   f"({' '.join(METADATA_COLUMNS)}), got {len(fields)}: {line!r}")
    relpath, machine_type, machine_id, section, domain, condition = fields
    if not relpath or not machine_type:
        raise MachineMetadataError(f"{where}: empty relpath or machine_type: {line!r}")
    try:
        machine_id_int = int(machine_id)
        section_int = None if section == NONE else int(section)
    except ValueError:
        raise MachineMetadataError(
            f"{where}: machine_id {machine_id!r} must be an integer and section {section!r} an integer or "
            f"{NONE!r}") from None
    if machine_id_int < 0 or (section_int is not None and section_int != machine_id_int):
        raise MachineMetadataError(f"{where}: machine_id {machine_id_int} must be >= 0 and equal the section "
                                   f"when one is given (section {section!r})")
    if domain not in (*DOMAINS, NONE) or condition not in (*CONDITIONS, NONE):
        raise MachineMetadataError(f"{where}: domain {domain!r} must be one of {', '.join((*DOMAINS, NONE))} "
                                   f"and condition {condition!r} one of {', '.join((*CONDITIONS, NONE))}")
    return MachineRow(relpath, machine_type, machine_id_int, section_int, None if domain == NONE else domain,
                      None if condition == NONE else condition, lineno)
