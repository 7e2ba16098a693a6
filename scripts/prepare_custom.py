#!/usr/bin/env python
"""Prepare your own labelled audio for EAT fine-tuning.

Input, either:

    --folders ROOT    ROOT/<class>/**/<clip>   one sub-folder per class (ImageFolder / HF audiofolder);
                                               hidden and non-audio files are ignored (counted)
    --csv FILE        a CSV or TSV with a path column, a label column (several labels per cell, separated
                      by --label-sep) and optionally a split column (train/valid/test; validation, val,
                      dev -> valid; eval -> test); relative paths are relative to --audio-root

Every clip is decoded once to check it (training clips again for the fbank statistics, once the
split and target_length are known); unreadable, empty, silent (peak below one 16-bit step) and too short clips,
missing and repeated CSV paths are skipped and listed with their reason. Without a split column the
split is stratified by class (--seed, --valid-fraction, --test-fraction; a multi-label clip counts for
its rarest label). Classes are the sorted label ids. The rules are in eat_plugin/data/custom_inputs.py
(listing, labels) and eat_plugin/data/custom.py (decoding, split, statistics).

Output, in the official manifest format (eat_plugin.data.manifest):

    OUT/{train,valid,test}.tsv, .lbl
    OUT/label_descriptors.csv
    OUT/summary.json    clips per split and class, skipped files and why, warnings, multi_label, classes,
                        duration_seconds, target_length, norm_stats (fbank mean/std over train), overrides
    OUT/overrides.txt   the recipe overrides on one line, for the shell:
                        task.target_length=... task.norm_mean=... task.norm_std=...

Example:

    python scripts/make_demo_data.py --layout folders --out demo/folders
    python scripts/prepare_custom.py --folders demo/folders --out data/custom
    fairseq-hydra-train --config-dir config/finetuning --config-name custom ... \
        task.data=$PWD/data/custom $(cat data/custom/overrides.txt)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from eat_plugin.console import run_cli
from eat_plugin.data import custom, custom_inputs, prepare

CSV_OPTIONS = ("audio_root", "path_column", "label_column", "split_column")
OVERRIDES_FILE = "overrides.txt"  # the recipe overrides on one line, for $(cat ...) on a command line


def run(args: argparse.Namespace) -> int:
    if args.folders:
        listing = custom_inputs.list_folders(Path(args.folders))
    else:
        listing = custom_inputs.list_csv(
            Path(args.csv), args.audio_root, args.path_column, args.label_column, args.split_column, args.label_sep
        )
    prepared = custom.build(
        listing, args.merge_similar_labels, args.min_seconds, args.valid_fraction, args.test_fraction, args.seed
    )
    out = Path(args.out)
    extra = {"input": listing.description, "audio root": str(prepared.root), "output": str(out)}
    if args.folders:
        extra["non-audio files ignored"] = str(listing.non_audio)
    extra["split"] = (
        "from the split column"
        if listing.has_split_column
        else f"stratified by class, seed {args.seed}, valid {args.valid_fraction:g}, test {args.test_fraction:g}"
    )
    extra["multi-label"] = "yes" if prepared.multi_label else "no"
    summary = prepare.summarize(
        "custom data set", prepared.splits, prepared.label_ids, prepared.label_names, extra, unsplit=prepared.unsplit
    )
    summary.update(
        multi_label=prepared.multi_label,
        classes=prepared.label_ids,
        warnings=prepared.warnings,
        duplicates=prepared.duplicates,
        label_conflicts=prepared.label_conflicts,
    )
    print(f"warnings: {len(prepared.warnings)}", *(f"  - {w}" for w in prepared.warnings), sep="\n")
    summary_path = prepare.write_summary(out, summary)
    prepare.require_clips(prepared.splits, summary_path)

    summary.update(custom.statistics(prepared))
    summary_path = prepare.write_summary(out, summary)
    prepare.write_dataset(out, prepared.root, prepared.splits, prepared.label_ids, prepared.label_names)
    (out / OVERRIDES_FILE).write_text(summary["overrides"] + "\n", encoding="utf-8")
    durations, stats = summary["duration_seconds"], summary["norm_stats"]
    print("duration (s): " + ", ".join(f"{k} {v:.3f}" for k, v in durations.items()))
    print(
        f"fbank statistics over {stats['clips']} training clips padded/cropped to {stats['target_length']} frames: "
        f"mean {stats['mean']:.4f}, std {stats['std']:.4f}"
    )
    print(f"wrote {out} ({', '.join(f'{s}.tsv/.lbl' for s in prepared.splits)}, label_descriptors.csv)")
    print(f"suggested overrides: task.data={out.resolve()} {summary['overrides']}")
    print(f"summary: {summary_path}, overrides: {out / OVERRIDES_FILE}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folders", metavar="ROOT", help="folder with one sub-folder per class")
    source.add_argument("--csv", metavar="FILE", help="CSV/TSV listing path, label(s) and optionally split per clip")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the manifests and summary.json")
    csv_group = parser.add_argument_group("--csv options")
    csv_group.add_argument("--audio-root", metavar="DIR", help="folder relative paths start from (default: the CSV's)")
    csv_group.add_argument(
        "--path-column", metavar="NAME", help=f"default: the first of {', '.join(custom_inputs.PATH_COLUMNS)} present"
    )
    csv_group.add_argument(
        "--label-column", metavar="NAME", help=f"default: the first of {', '.join(custom_inputs.LABEL_COLUMNS)} present"
    )
    csv_group.add_argument("--label-sep", default=";", metavar="SEP", help="separates labels in a cell (default: ';')")
    csv_group.add_argument(
        "--split-column",
        metavar="NAME",
        help=f"default: '{custom_inputs.SPLIT_COLUMN}' if present, else a stratified split",
    )
    split = parser.add_argument_group("stratified split (when no split column gives it)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    split.add_argument("--valid-fraction", type=float, default=0.1, metavar="F", help="(default: 0.1)")
    split.add_argument(
        "--test-fraction", type=float, default=0.1, metavar="F", help="0 writes no test split (default: 0.1)"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=0.1, metavar="S", help="skip (and list) shorter clips (default: 0.1)"
    )
    parser.add_argument(
        "--merge-similar-labels",
        action="store_true",
        help="map labels differing only in case/whitespace to their most frequent spelling (default: report them)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folders and any(getattr(args, name) is not None for name in CSV_OPTIONS):
        parser.error("--audio-root, --path-column, --label-column and --split-column apply to --csv only")
    fractions_ok = 0 < args.valid_fraction and 0 <= args.test_fraction and args.valid_fraction + args.test_fraction < 1
    if not fractions_ok:
        parser.error("need 0 < --valid-fraction, 0 <= --test-fraction and --valid-fraction + --test-fraction < 1")
    if args.min_seconds < 0 or not args.label_sep:
        parser.error("need --min-seconds >= 0 and a non-empty --label-sep")
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
