#!/usr/bin/env python
"""Prepare ESC-50 for EAT fine-tuning: one manifest directory per held-out fold.

Input, the published layout (github.com/karolpiczak/ESC-50):

    ESC50_ROOT/meta/esc50.csv     header: filename,fold,target,category,esc10,src_file,take
    ESC50_ROOT/audio/<filename>   one clip per csv row (5 s, 44.1 kHz mono wav)

Output, in the official manifest format (eat_plugin.data.manifest):

    OUT/fold{k}/train.tsv, train.lbl    clips of every other fold
    OUT/fold{k}/eval.tsv,  eval.lbl     clips of fold k
    OUT/fold{k}/label_descriptors.csv   class index = target, id = category, name = category with spaces
    OUT/summary.json                    clips per fold and class, skipped files and why

Example:

    python scripts/prepare_esc50.py --esc50-root ESC-50-master --out data/esc50
    fairseq-hydra-train ... task.data=data/esc50/fold1
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from eat_plugin.console import run_cli
from eat_plugin.data import prepare
from eat_plugin.data.prepare import LayoutError, SplitScan

META_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
REQUIRED_COLUMNS = ("filename", "fold", "target", "category")
EXPECTED_HEADER = ",".join(META_COLUMNS)


@dataclass(frozen=True)
class MetaRow:
    """One row of ``meta/esc50.csv``."""

    filename: str
    fold: int
    target: int
    category: str
    line: int  # 1-based line in the csv (the header is line 1)


def read_meta(path: Path) -> List[MetaRow]:
    """Parse ``meta/esc50.csv``; raise ``LayoutError`` naming the line of any malformed row."""
    prepare.require_file(path, f"the ESC-50 meta csv (header {EXPECTED_HEADER})")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LayoutError(
                f"{path}: header {reader.fieldnames} lacks column(s) {missing}; expected {EXPECTED_HEADER}"
            )
        rows = [_meta_row(path, record, reader.line_num) for record in reader]
    if not rows:
        raise LayoutError(f"{path}: no clips listed; expected one row per clip after the header")
    _check_unique_filenames(path, rows)
    return rows


def _meta_row(path: Path, record: Dict[str, str], line: int) -> MetaRow:
    try:
        fold, target = int(record["fold"]), int(record["target"])
    except (TypeError, ValueError):
        raise LayoutError(
            f"{path}: line {line}: fold {record['fold']!r} and target {record['target']!r} must be integers"
        ) from None
    filename, category = (record["filename"] or "").strip(), (record["category"] or "").strip()
    if not filename or not category:
        raise LayoutError(f"{path}: line {line}: empty filename or category")
    return MetaRow(filename, fold, target, category, line)


def _check_unique_filenames(path: Path, rows: Sequence[MetaRow]) -> None:
    first_line: Dict[str, int] = {}
    for row in rows:
        if row.filename in first_line:
            raise LayoutError(
                f"{path}: line {row.line}: {row.filename} is listed again (first on line {first_line[row.filename]})"
            )
        first_line[row.filename] = row.line


def class_table(rows: Sequence[MetaRow], path: Path) -> Tuple[List[str], List[str]]:
    """Label ids (categories) and display names by class index (= ``target``).

    Each target must name one category and each category one target, with targets 0..C-1.
    """
    category_of: Dict[int, MetaRow] = {}
    target_of: Dict[str, MetaRow] = {}
    for row in rows:
        seen = category_of.setdefault(row.target, row)
        if seen.category != row.category:
            raise LayoutError(
                f"{path}: target {row.target} maps to two categories: {seen.category!r} (line {seen.line}) "
                f"and {row.category!r} (line {row.line}); each target must name one category"
            )
        seen = target_of.setdefault(row.category, row)
        if seen.target != row.target:
            raise LayoutError(
                f"{path}: category {row.category!r} has two targets: {seen.target} (line {seen.line}) "
                f"and {row.target} (line {row.line})"
            )
    missing = sorted(set(range(len(category_of))) - set(category_of))
    if missing:
        raise LayoutError(
            f"{path}: targets must be 0..{len(category_of) - 1} (class indices); missing {missing[:10]}, "
            f"found {sorted(category_of)[:10]}..."
        )
    ids = [category_of[t].category for t in range(len(category_of))]
    return ids, [label_id.replace("_", " ") for label_id in ids]


def choose_folds(rows: Sequence[MetaRow], requested: Optional[Sequence[int]], path: Path) -> List[int]:
    """The held-out folds to write: every fold in the csv, or the ``requested`` subset of them."""
    available = sorted({row.fold for row in rows})
    if len(available) < 2:
        raise LayoutError(f"{path}: only fold(s) {available} found; cross-validation needs at least two folds")
    if not requested:
        return available
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise LayoutError(f"--folds {unknown}: not in {path}, whose folds are {available}")
    return sorted(set(requested))


def scan_folds(rows: Sequence[MetaRow], audio_dir: Path, args: argparse.Namespace) -> Dict[str, SplitScan]:
    """Probe every clip once, grouped by fold: ``{"fold1": scan, ...}`` (csv order within a fold)."""
    scans = {}
    for fold in sorted({row.fold for row in rows}):
        items = [(audio_dir / row.filename, (row.category,)) for row in rows if row.fold == fold]
        scans[f"fold{fold}"] = prepare.scan_split(
            items, audio_dir, f"fold{fold}", min_samples=args.min_samples, full_check=args.full_check
        )
    return scans


def held_out_splits(scans: Dict[str, SplitScan], fold: int) -> Dict[str, SplitScan]:
    """``train`` = the clips of every other fold (in fold order), ``eval`` = the clips of ``fold``."""
    others = [scan for name, scan in scans.items() if name != f"fold{fold}"]
    train = SplitScan(
        clips=[clip for scan in others for clip in scan.clips],
        skipped=[skip for scan in others for skip in scan.skipped],
    )
    return {"train": train, "eval": scans[f"fold{fold}"]}


def run(args: argparse.Namespace) -> int:
    root = prepare.require_dir(Path(args.esc50_root), "the ESC-50 root (with meta/esc50.csv and audio/)")
    meta_path = root / "meta" / "esc50.csv"
    rows = read_meta(meta_path)
    ids, names = class_table(rows, meta_path)
    folds = choose_folds(rows, args.folds, meta_path)
    audio_dir = prepare.require_dir(root / "audio", "the ESC-50 audio folder (audio/<filename> per csv row)")

    scans = scan_folds(rows, audio_dir, args)
    out = Path(args.out)
    extra = {"esc50 root": str(root), "output": str(out), "held-out folds written": ", ".join(map(str, folds))}
    summary = prepare.summarize("ESC-50", scans, ids, names, extra)
    summary_path = prepare.write_summary(out, summary)
    prepare.require_clips(scans, summary_path)
    for fold in folds:
        prepare.write_dataset(out / f"fold{fold}", audio_dir, held_out_splits(scans, fold), ids, names)
    written = ", ".join(str(out / f"fold{fold}") for fold in folds)
    print(f"wrote {written} and {summary_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esc50-root", required=True, metavar="DIR", help="ESC-50 folder holding meta/ and audio/")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder; gets fold{k}/ and summary.json")
    parser.add_argument(
        "--folds",
        type=int,
        nargs="+",
        metavar="K",
        help="write only these held-out folds (default: every fold in the csv); "
        "their training sets still use all other folds",
    )
    prepare.add_scan_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
