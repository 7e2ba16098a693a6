#!/usr/bin/env python
"""Prepare Speech Commands v2 for EAT fine-tuning (35-way keyword classification).

Input, the published layout (speech_commands_v0.02.tar.gz, extracted):

    SPC_ROOT/<word>/*.wav            one folder per keyword (1 s, 16 kHz mono wav)
    SPC_ROOT/validation_list.txt     relative paths, e.g. right/bb05582b_nohash_0.wav
    SPC_ROOT/testing_list.txt
    SPC_ROOT/_background_noise_/     excluded, as is every folder starting with '_' or '.'

Splits: train = every clip in neither list, valid = validation_list.txt, eval = testing_list.txt.
Classes are the sorted word folder names (class index = position); label id = display name = word.

Output, in the official manifest format (eat_plugin.data.manifest):

    OUT/{train,valid,eval}.tsv, .lbl
    OUT/label_descriptors.csv
    OUT/summary.json                 clips per split and class, skipped files and why

Example:

    python scripts/prepare_spcv2.py --spc-root speech_commands_v0.02 --out data/spcv2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Set, Tuple

from eat_plugin.console import run_cli
from eat_plugin.data import prepare
from eat_plugin.data.prepare import LayoutError, Skipped, SplitScan

LIST_FILES = {"valid": "validation_list.txt", "eval": "testing_list.txt"}
EXPECTED_CLASSES = 35  # Speech Commands v0.02

Item = Tuple[Path, Tuple[str, ...]]  # (audio path, label ids)


def find_classes(root: Path, expect: int) -> List[str]:
    """Sorted keyword folder names (folders starting with '_' or '.' excluded); check their number."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not classes:
        raise LayoutError(f"{root}: no keyword folders; expected SPC_ROOT/<word>/*.wav")
    if expect and len(classes) != expect:
        raise LayoutError(
            f"{root}: found {len(classes)} keyword folders {classes[:40]}, expected {expect} "
            f"(Speech Commands v2 has {EXPECTED_CLASSES}); pass --expect-classes {len(classes)} (or 0) if intended"
        )
    return classes


def list_clips(root: Path, classes: Sequence[str]) -> List[str]:
    """Relative paths ``word/name.wav`` of every clip in the keyword folders, sorted."""
    return sorted(f"{word}/{p.name}" for word in classes for p in (root / word).glob("*.wav") if p.is_file())


def read_list(path: Path) -> List[str]:
    """Entries of a split list as POSIX relative paths (blank lines ignored, order kept)."""
    prepare.require_file(path, "a Speech Commands split list (one relative path like right/abc_nohash_0.wav per line)")
    entries = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        entry = line.strip().replace("\\", "/")
        if entry:
            entries.append(PurePosixPath(entry).as_posix())
    return entries


def check_disjoint(lists: Dict[str, List[str]], root: Path) -> None:
    """A clip listed for both validation and testing would leak; refuse it."""
    both = sorted(set(lists["valid"]) & set(lists["eval"]))
    if both:
        raise LayoutError(
            f"{root}: {len(both)} clip(s) are in both {LIST_FILES['valid']} and {LIST_FILES['eval']}, "
            f"e.g. {both[:3]}; the lists must be disjoint"
        )


def listed_items(entries: Sequence[str], existing: Set[str], classes: Set[str], root: Path, list_name: str):
    """Split a list's entries into scan items and entries skipped before probing (unknown class, missing file)."""
    items: List[Item] = []
    skipped: List[Skipped] = []
    for entry in entries:
        word = entry.split("/")[0]
        if word not in classes:
            skipped.append(Skipped(str(root / entry), f"not in a keyword folder: listed in {list_name}"))
        elif entry not in existing:
            skipped.append(Skipped(str(root / entry), f"missing: listed in {list_name} but the file does not exist"))
        else:
            items.append((root / entry, (word,)))
    return items, skipped


def split_items(root: Path, classes: List[str]) -> Tuple[Dict[str, List[Item]], Dict[str, List[Skipped]]]:
    """Scan items and pre-skipped entries for train / valid / eval."""
    lists = {split: read_list(root / name) for split, name in LIST_FILES.items()}
    check_disjoint(lists, root)
    existing = list_clips(root, classes)
    existing_set, class_set = set(existing), set(classes)
    held_out = set(lists["valid"]) | set(lists["eval"])
    items = {"train": [(root / rel, (rel.split("/")[0],)) for rel in existing if rel not in held_out]}
    skipped: Dict[str, List[Skipped]] = {"train": []}
    for split, name in LIST_FILES.items():
        items[split], skipped[split] = listed_items(lists[split], existing_set, class_set, root, name)
    return items, skipped


def run(args: argparse.Namespace) -> int:
    root = prepare.require_dir(Path(args.spc_root), "the Speech Commands root (<word>/*.wav and the split lists)")
    classes = find_classes(root, args.expect_classes)
    items, pre_skipped = split_items(root, classes)
    scans: Dict[str, SplitScan] = {}
    for split, clips_to_scan in items.items():
        scan = prepare.scan_split(clips_to_scan, root, split, min_samples=args.min_samples, full_check=args.full_check)
        scans[split] = SplitScan(scan.clips, pre_skipped[split] + scan.skipped)

    out = Path(args.out)
    excluded = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(("_", ".")))
    extra = {"spc root": str(root), "output": str(out), "excluded folders": ", ".join(excluded) or "none"}
    summary = prepare.summarize("Speech Commands v2", scans, classes, classes, extra)
    summary_path = prepare.write_summary(out, summary)
    prepare.require_clips(scans, summary_path)
    prepare.write_dataset(out, root, scans, classes, classes)
    print(f"wrote {out} ({', '.join(f'{s}.tsv' for s in scans)}) and {summary_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--spc-root", required=True, metavar="DIR", help="Speech Commands v2 folder (word folders + lists)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the manifests and summary.json")
    parser.add_argument(
        "--expect-classes",
        type=int,
        default=EXPECTED_CLASSES,
        metavar="N",
        help=f"fail unless exactly N keyword folders are found (default: {EXPECTED_CLASSES}; 0 disables the check)",
    )
    prepare.add_scan_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
