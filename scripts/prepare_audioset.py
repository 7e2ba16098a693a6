#!/usr/bin/env python
"""Prepare AudioSet for EAT from the published segment csvs and the clips you downloaded.

Input:

    --ontology class_labels_indices.csv   header index,mid,display_name (527 classes)
    --split NAME=FILE                     a published segment csv; lines starting with '#' are comments,
                                          rows are: YTID, start_seconds, end_seconds, "mid1,mid2,..."
                                          Repeating a NAME concatenates files (duplicate YTIDs are skipped
                                          and listed), e.g. train=balanced_train_segments.csv
                                          train=unbalanced_train_segments.csv eval=eval_segments.csv
    --audio-dir DIR                       downloaded clips, searched recursively. A segment's clip is the
                                          file whose name (without extension) is YTID, or Y+YTID (PANNs
                                          downloader), or starts with YTID_ (ytid_start naming); any
                                          extension soundfile reads.

Segments without a downloaded clip are skipped as "not downloaded"; they, and unreadable clips, are
counted in the printed summary and listed in summary.json.

Output, in the official manifest format (eat_plugin.data.manifest):

    OUT/{NAME}.tsv, .lbl         one per split (.lbl holds the segment's MIDs)
    OUT/label_descriptors.csv    the ontology's classes
    OUT/summary.json
    OUT/train_weights.csv        with --weights: balanced-sampling weights of the train split

Example:

    python scripts/prepare_audioset.py --audio-dir audioset/wavs --ontology class_labels_indices.csv \\
        --split train=balanced_train_segments.csv --split eval=eval_segments.csv --out data/as20k --weights
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from eat_plugin.console import run_cli
from eat_plugin.data import prepare
from eat_plugin.data.audio_files import walk_audio_files
from eat_plugin.data.manifest import LabelDescriptors, read_label_descriptors
from eat_plugin.data.prepare import LayoutError, Skipped, SplitScan

SEGMENT_ROW = 'YTID, start_seconds, end_seconds, "mid1,mid2,..."'
Item = Tuple[Path, Tuple[str, ...]]  # (audio path, label ids)


@dataclass(frozen=True)
class Segment:
    """One row of a segment csv."""

    ytid: str
    mids: Tuple[str, ...]
    source: Path
    line: int  # 1-based line in ``source``

    @property
    def where(self) -> str:
        return f"{self.source.name} line {self.line}"


def parse_split_arg(text: str) -> Tuple[str, Path]:
    """``NAME=FILE`` -> (NAME, FILE), for argparse."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FILE (e.g. train=balanced_train_segments.csv), got {text!r}")
    return name.strip(), Path(path.strip())


def read_ontology(path: Path) -> LabelDescriptors:
    """The class table of ``class_labels_indices.csv`` (index, mid, display_name)."""
    prepare.require_file(path, "AudioSet's class_labels_indices.csv (header index,mid,display_name)")
    return read_label_descriptors(path)


def read_segments(path: Path, classes: LabelDescriptors) -> List[Segment]:
    """Parse a segment csv; an unknown MID or a malformed row is a ``LayoutError`` naming file and line."""
    prepare.require_file(path, "an AudioSet segment csv such as balanced_train_segments.csv")
    segments = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = next(csv.reader([line], skipinitialspace=True))
            if len(fields) < 4 or not fields[0].strip():
                raise LayoutError(f"{path}: line {line_no}: expected {SEGMENT_ROW}, got {line.strip()!r}")
            mids = tuple(m.strip() for m in fields[3].split(",") if m.strip())
            unknown = [m for m in mids if m not in classes.index_of]
            if not mids or unknown:
                problem = f"unknown label id(s) {unknown}" if unknown else "no label ids"
                raise LayoutError(f"{path}: line {line_no}: {problem}; every MID must be in the ontology csv")
            segments.append(Segment(fields[0].strip(), mids, path, line_no))
    return segments


def merge_segments(files: Sequence[Path], classes: LabelDescriptors) -> Tuple[List[Segment], List[Skipped]]:
    """Concatenate segment files, keeping the first row of each YTID; later rows are reported as duplicates."""
    kept: Dict[str, Segment] = {}
    duplicates = []
    for path in files:
        for segment in read_segments(path, classes):
            first = kept.setdefault(segment.ytid, segment)
            if first is not segment:
                duplicates.append(
                    Skipped(segment.ytid, f"duplicate: listed in {segment.where}, already in {first.where}")
                )
    return list(kept.values()), duplicates


class AudioIndex:
    """Audio files under a folder, looked up by YouTube id."""

    def __init__(self, audio_dir: Path):
        self.exact: Dict[str, List[Path]] = defaultdict(list)  # stem -> files
        self.prefix: Dict[str, List[Path]] = defaultdict(list)  # stem up to any '_' -> files
        self.num_files = 0
        for path in walk_audio_files(audio_dir)[0]:
            self._add(path.stem, path)

    def _add(self, stem: str, path: Path) -> None:
        self.num_files += 1
        self.exact[stem].append(path)
        for i, char in enumerate(stem):
            if char == "_" and i > 0:
                self.prefix[stem[:i]].append(path)

    def find(self, ytid: str) -> List[Path]:
        """Files for ``ytid``: named YTID, else Y+YTID, else YTID_*, else Y+YTID_* (first match wins)."""
        for table in (self.exact, self.prefix):
            for key in (ytid, "Y" + ytid):
                if key in table:
                    return table[key]
        return []


def locate(segments: Sequence[Segment], index: AudioIndex) -> Tuple[List[Item], List[Skipped], List[str]]:
    """Scan items for the downloaded segments; "not downloaded" skips; YTIDs matching several files."""
    items, missing, ambiguous = [], [], []
    for segment in segments:
        paths = index.find(segment.ytid)
        if not paths:
            missing.append(Skipped(segment.ytid, f"not downloaded: listed in {segment.where}"))
            continue
        if len(paths) > 1:
            ambiguous.append(segment.ytid)
        items.append((paths[0], segment.mids))
    return items, missing, ambiguous


def group_split_files(split_args: Sequence[Tuple[str, Path]]) -> Dict[str, List[Path]]:
    """``[(name, file), ...]`` -> ``{name: [files]}`` in first-appearance order."""
    files: Dict[str, List[Path]] = {}
    for name, path in split_args:
        files.setdefault(name, []).append(path)
    return files


def overlapping_ytids(segments: Dict[str, List[Segment]]) -> List[str]:
    """YTIDs listed in more than one split (train/eval leakage)."""
    count: Dict[str, int] = defaultdict(int)
    for split_segments in segments.values():
        for ytid in {s.ytid for s in split_segments}:
            count[ytid] += 1
    return sorted(ytid for ytid, n in count.items() if n > 1)


def scan_splits(
    segments: Dict[str, List[Segment]],
    duplicates: Dict[str, List[Skipped]],
    index: AudioIndex,
    audio_dir: Path,
    args: argparse.Namespace,
) -> Tuple[Dict[str, SplitScan], List[str]]:
    """Locate and probe each split's clips; skipped = duplicates + not downloaded + unreadable."""
    scans, ambiguous = {}, []
    for split, split_segments in segments.items():
        items, missing, split_ambiguous = locate(split_segments, index)
        scan = prepare.scan_split(items, audio_dir, split, min_samples=args.min_samples, full_check=args.full_check)
        scans[split] = SplitScan(scan.clips, duplicates[split] + missing + scan.skipped)
        ambiguous += split_ambiguous
    return scans, ambiguous


def warn(message: str, examples: Sequence[str]) -> None:
    if examples:
        print(f"warning: {len(examples)} {message}, e.g. {list(examples[:3])}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    split_files = group_split_files(args.split)
    if args.weights and "train" not in split_files:
        raise LayoutError(f"--weights needs a split named train; got splits {list(split_files)}")
    classes = read_ontology(Path(args.ontology))
    segments, duplicates = {}, {}
    for split, files in split_files.items():
        segments[split], duplicates[split] = merge_segments(files, classes)
    audio_dir = prepare.require_dir(Path(args.audio_dir), "the folder of downloaded AudioSet clips")
    print(f"indexing audio files under {audio_dir} ...", file=sys.stderr)
    index = AudioIndex(audio_dir)
    scans, ambiguous = scan_splits(segments, duplicates, index, audio_dir, args)
    overlap = overlapping_ytids(segments)

    out = Path(args.out)
    extra = {
        "audio dir": f"{audio_dir} ({index.num_files} audio files)",
        "segments listed": ", ".join(f"{s}={len(v)}" for s, v in segments.items()),
        "ytids matching several files (first used)": str(len(ambiguous)),
        "ytids in more than one split": str(len(overlap)),
    }
    summary = prepare.summarize("AudioSet", scans, classes.ids, classes.names, extra)
    summary_path = prepare.write_summary(out, summary)
    warn("YTIDs match several audio files; the first in sorted order was used", ambiguous)
    warn("YTIDs are listed in more than one split", overlap)
    prepare.require_clips(scans, summary_path)
    prepare.write_dataset(out, audio_dir, scans, classes.ids, classes.names)
    print(f"wrote {out} ({', '.join(f'{s}.tsv' for s in scans)}) and {summary_path}")
    if args.weights:
        weights_path, _ = prepare.write_weights(out, "train")
        print(f"wrote {weights_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--audio-dir", required=True, metavar="DIR", help="folder of downloaded clips (searched recursively)"
    )
    parser.add_argument(
        "--ontology", required=True, metavar="CSV", help="class_labels_indices.csv (index,mid,display_name)"
    )
    parser.add_argument(
        "--split",
        required=True,
        action="append",
        type=parse_split_arg,
        metavar="NAME=CSV",
        help="a split and its segment csv; repeat for more splits, or the same NAME to concatenate files",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the manifests and summary.json")
    parser.add_argument(
        "--weights",
        action="store_true",
        help="also write OUT/train_weights.csv (balanced-sampling weights, as scripts/make_weights.py)",
    )
    prepare.add_scan_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
