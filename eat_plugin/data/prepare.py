"""Shared machinery of the data-preparation scripts: probe clips, skip bad ones with a reason, summarise.

The dataset-specific scripts (``scripts/prepare_*.py``) only map a published layout to
``(audio path, label ids)`` pairs; everything else (reading headers, skipping, writing the official
manifest format, printing the summary) happens here, once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from eat_plugin.console import InputError, failure_reason, progress
from eat_plugin.data.fbank import AudioError, open_audio, read_audio
from eat_plugin.data.manifest import (
    Clip,
    read_label_descriptors,
    read_labels,
    read_manifest,
    write_label_descriptors,
    write_split,
)

T = TypeVar("T")


class LayoutError(InputError):
    """The input does not match the published layout; the message names the path and what was expected."""


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise ``LayoutError`` naming it and ``what`` was expected there."""
    if not path.is_file():
        raise LayoutError(f"{path}: not found; expected {what}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise ``LayoutError`` naming it and what was expected."""
    if not path.is_dir():
        raise LayoutError(f"{path}: directory not found; expected {what}")
    return path


def add_scan_options(parser: argparse.ArgumentParser) -> None:
    """The options every preparation script passes to :func:`scan_split`."""
    parser.add_argument(
        "--min-samples",
        type=int,
        default=0,
        metavar="N",
        help="skip (and list) clips shorter than N samples at their native rate (default: 0, keep all; "
        "the official loader drops clips under 10000)",
    )
    parser.add_argument(
        "--full-check",
        action="store_true",
        help="decode every file instead of reading only its header: slower, but also catches corrupt "
        "compressed data and NaN/Inf samples",
    )


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class SplitScan:
    clips: List[Clip] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)


def probe_clip(path: Path, full_check: bool = False) -> int:
    """Return the clip's length in native samples, or raise ``AudioError``/``FileNotFoundError``.

    The fast path reads only the header (and catches truncated WAV/AIFF data); ``full_check``
    decodes the whole file, which also catches corrupt compressed data and NaN/Inf samples.
    """
    if full_check:
        wave, _ = read_audio(path)
        return int(wave.shape[0])
    with open_audio(path) as audio:
        return int(audio.frames)


def scan_split(
    items: Sequence[Tuple[Path, Tuple[str, ...]]],
    root: Path,
    split: str,
    min_samples: int = 0,
    full_check: bool = False,
    show_progress: Optional[bool] = None,
) -> SplitScan:
    """Probe each ``(path, label ids)``; keep readable clips of at least ``min_samples`` samples."""
    scan = SplitScan()
    paths = [Path(path) for path, _ in items]
    results = probe_each(paths, root, lambda path: probe_clip(path, full_check), f"scanning {split}", show_progress)
    for path, (_, label_ids), result in zip(paths, items, results):
        if isinstance(result, Skipped):
            scan.skipped.append(result)
        elif result[1] < min_samples:
            scan.skipped.append(Skipped(str(path), f"too short: {result[1]} samples < min {min_samples}"))
        else:
            scan.clips.append(Clip(result[0], result[1], tuple(label_ids)))
    return scan


def probe_each(paths: Sequence[Path], root: Path, probe: Callable[[Path], T], desc: str,
               show_progress: Optional[bool] = None) -> Iterator[Union[Tuple[str, T], Skipped]]:
    """The one clip scan of the preparers: for each path, in order, ``(relpath under root, probe(path))``,
    or a ``Skipped`` with the reason (outside ``root``; ``AudioError`` / ``FileNotFoundError`` of ``probe``)."""
    for path in progress(paths, desc, show_progress):
        relpath = _relative_to(path, root)
        if relpath is None:
            yield Skipped(str(path), f"outside the audio root {root}")
            continue
        try:
            probed = probe(path)
        except (AudioError, FileNotFoundError) as err:
            yield Skipped(str(path), failure_reason(err, path))
            continue
        yield relpath, probed


def _relative_to(path: Path, root: Path) -> Optional[str]:
    """``path`` relative to ``root`` (POSIX), or None if it lies outside.

    Lexical, not ``resolve()``-based: a symlinked clip (or sub-folder) inside the root keeps its path
    under the root instead of pointing wherever the link leads.
    """
    relpath = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if relpath == os.curdir or relpath.split(os.sep)[0] == os.pardir:
        return None
    return Path(relpath).as_posix()


def write_dataset(
    out_dir: Path,
    root: Path,
    splits: Dict[str, SplitScan],
    label_ids: Sequence[str],
    label_names: Sequence[str],
) -> None:
    """Write every split's ``.tsv``/``.lbl`` and ``label_descriptors.csv`` into ``out_dir``."""
    for split, scan in splits.items():
        write_split(out_dir, split, root, scan.clips)
    write_label_descriptors(out_dir / "label_descriptors.csv", label_ids, label_names)


def summarize(
    title: str,
    splits: Dict[str, SplitScan],
    label_ids: Sequence[str],
    label_names: Sequence[str],
    extra: Optional[Dict[str, str]] = None,
    max_classes: int = 60,
    max_skipped: int = 20,
    unsplit: Sequence[Skipped] = (),
) -> Dict:
    """Print the human summary (clips per split and class, skipped files and why); return it as a dict.

    ``unsplit`` lists files skipped before any split was chosen (a preparer that draws the split itself);
    they are reported under the key ``"unsplit"`` of ``skipped``.
    """
    name_of = dict(zip(label_ids, label_names))
    per_split = {s: len(scan.clips) for s, scan in splits.items()}
    per_class = {
        s: Counter(label for clip in scan.clips for label in clip.label_ids) for s, scan in splits.items()
    }
    skipped = {s: [vars(k) for k in scan.skipped] for s, scan in splits.items()}
    if unsplit:
        skipped["unsplit"] = [vars(k) for k in unsplit]
    lines = [f"== {title} ==", *(f"{k}: {v}" for k, v in (extra or {}).items())]
    lines.append("clips per split: " + ", ".join(f"{s}={n}" for s, n in per_split.items()))
    lines.append(f"classes: {len(label_ids)}")
    header = f"  {'class':<32}" + "".join(f"{s:>10}" for s in splits)
    lines.append(header)
    for label_id in label_ids[:max_classes]:
        lines.append(f"  {name_of[label_id][:32]:<32}" + "".join(f"{per_class[s][label_id]:>10}" for s in splits))
    if len(label_ids) > max_classes:
        lines.append(f"  ... {len(label_ids) - max_classes} more classes")
    total_skipped = sum(len(v) for v in skipped.values())
    lines.append(f"skipped files: {total_skipped}")
    reasons = Counter(_reason_kind(k["reason"]) for v in skipped.values() for k in v)
    for reason, count in reasons.most_common():
        lines.append(f"  {count:>6} x {reason}")
    shown = [(s, k) for s, v in skipped.items() for k in v][:max_skipped]
    for split, k in shown:
        lines.append(f"  [{split}] {k['path']}: {k['reason']}")
    if total_skipped > len(shown):
        lines.append(f"  ... {total_skipped - len(shown)} more (see summary.json)")
    print("\n".join(lines))
    return {
        "title": title,
        "clips_per_split": per_split,
        "clips_per_class": {s: {name_of[k]: v for k, v in c.items()} for s, c in per_class.items()},
        "skipped": skipped,
        **({"info": extra} if extra else {}),
    }


def _reason_kind(reason: str) -> str:
    """The short kind of a skip reason ("truncated", "not downloaded", ...): the text before ':' or '('."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def write_summary(out_dir: Path, summary: Dict) -> Path:
    """Write ``summary`` (from :func:`summarize`) to ``out_dir/summary.json``; return that path."""
    path = Path(out_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def require_clips(splits: Dict[str, SplitScan], summary_path: Path) -> None:
    """Raise ``LayoutError`` if a split kept no clip at all (writing an empty manifest helps nobody)."""
    empty = [split for split, scan in splits.items() if not scan.clips]
    if empty:
        details = ", ".join(f"{split} ({len(splits[split].skipped)} skipped)" for split in empty)
        raise LayoutError(f"no usable clips in split(s) {details}; see {summary_path} for why each was skipped")


def inverse_frequency_weights(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Per-clip sampling weights for balanced AudioSet training (the AST/AudioMAE convention).

    ``w_class = 1000 / (count_class + 0.01)`` over the split's labels and ``w_clip = sum of its classes' w``,
    so clips of rare classes are drawn more often.

    Returns:
        float64 array ``(num_clips,)``.
    """
    counts = np.zeros(num_classes, dtype=np.float64)  # (C,)
    for clip_labels in labels:
        for index in clip_labels:
            counts[index] += 1
    class_weight = 1000.0 / (counts + 0.01)  # (C,)
    return np.array([class_weight[list(clip_labels)].sum() for clip_labels in labels], dtype=np.float64)


def write_weights(data_dir: Path, split: str, out: Optional[Path] = None) -> Tuple[Path, np.ndarray]:
    """Write per-clip sampling weights for ``data_dir/{split}.tsv`` (one float per manifest row).

    Reads the manifest, its ``.lbl`` and ``label_descriptors.csv`` through :mod:`eat_plugin.data.manifest`
    and writes :func:`inverse_frequency_weights` with ``np.savetxt`` (``np.loadtxt`` reads it back).

    Returns:
        the output path (default ``data_dir/{split}_weights.csv``) and the float64 weights ``(num_clips,)``.
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir / f"{split}.tsv", check_root=False)  # weights need no audio
    descriptors = read_label_descriptors(data_dir / "label_descriptors.csv")
    labels = read_labels(data_dir / f"{split}.lbl", descriptors, manifest)
    weights = inverse_frequency_weights(labels, len(descriptors))  # (num_clips,)
    out = Path(out) if out is not None else data_dir / f"{split}_weights.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(out, weights, delimiter=",")
    return out, weights
