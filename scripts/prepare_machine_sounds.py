#!/usr/bin/env python
"""Prepare machine sounds (MIMII, DCASE task 2) for EAT: machine-id classification + anomaly metadata.

Input, one of the published layouts under --root (``<type>``: fan, pump, slider, valve, ToyCar, ...):

    MIMII            [<snr>_dB_]<type>/id_00/{normal,abnormal}/00000000.wav
                     (the archives unpack to <snr>_dB_<type>/<type>/id_00/...; no split given)
    DCASE 2020       <type>/{train,test}/{normal,anomaly}_id_00_00000000.wav
                     (evaluation test clips: <type>/test/id_05_00000000.wav, unlabelled)
    DCASE 2021-2023  <type>/{train,test,source_test,target_test}/
                         section_00_{source,target}_{train,test}_{normal,anomaly}_0000[_<attributes>].wav
                     (evaluation test clips: section_03_0000.wav or section_03_source_test_0000.wav)

Hidden and non-audio files (attribute csvs, READMEs) are ignored; an audio file matching no layout is an
error listing such files. One machine type per output folder: --machine-type chooses it when the root
holds several. The machine id is the ``id_NN`` number (MIMII, DCASE 2020) or the section number
(DCASE 2021-2023, where the classification-based baselines classify sections). The rules, the split
included, are in eat_plugin/data/machine_sounds.py.

Split, per machine id, deterministic in --seed: given test clips stay test (MIMII, with no given split:
every anomalous clip and as many normal clips go to test, as in the MIMII paper); of the training clips
--subset-fraction are kept, and --val-fraction of the kept ones go to valid (0: no valid split).

Output, in the official manifest format (eat_plugin.data.manifest), in OUT/:

    {train,valid,test}.tsv, .lbl   label = the machine id as a label id: id_00 / section_00
                                   (test is written when the root has test clips)
    label_descriptors.csv          class index = machine id, rows 0..max id: ids {0,2,4,6} give 7 rows,
                                   the unused ones named "(unused id 1)"; the model's head index = the id
    {split}.machine.tsv            per-clip metadata, one header row then one row per manifest row, same
                                   order, tab-separated, "-" = none:
                                       relpath machine_type machine_id section domain condition
                                   (section: integer or -, domain: source/target/-,
                                    condition: normal/anomaly/- for an unlabelled evaluation clip)
    summary.json                   clips per split and class, skipped files and why, plus machine_type,
                                   layout, machine_ids / conditions / domains counts per split

Example:

    python scripts/make_demo_data.py --layout mimii --out demo/mimii
    python scripts/prepare_machine_sounds.py --root demo/mimii --out data/mimii_fan --machine-type fan
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from eat_plugin.console import run_cli
from eat_plugin.data import machine_sounds, prepare
from eat_plugin.data.prepare import LayoutError, SplitScan


def run(args: argparse.Namespace) -> int:
    root = prepare.require_dir(Path(args.root), "a machine-sound root (MIMII or DCASE task 2 layout)")
    listing = machine_sounds.list_clips(root)
    clips = machine_sounds.select_machine_type(listing.clips, args.machine_type, root)
    machine_type, layout = clips[0].machine_type, clips[0].layout
    ids, names = machine_sounds.class_table(clips)  # from every listed clip: unreadable ones keep their class

    items = [(root / clip.path, (machine_sounds.clip_label(clip),)) for clip in clips]
    scan = prepare.scan_split(items, root, machine_type, args.min_samples, args.full_check)
    probed = {clip.relpath: clip for clip in scan.clips}
    readable = [clip for clip in clips if clip.path in probed]
    split_clips = machine_sounds.split_clips(readable, args.subset_fraction, args.val_fraction, args.seed)
    if args.val_fraction == 0:
        del split_clips["valid"]
    elif not split_clips["valid"] and split_clips["train"]:
        raise LayoutError(
            f"{root}: no machine id kept 2 or more training clips, so valid would be empty; "
            f"raise --subset-fraction or pass --val-fraction 0")
    if not split_clips["test"]:
        del split_clips["test"]
    splits = {s: SplitScan([probed[c.path] for c in members]) for s, members in split_clips.items()}

    out = Path(args.out)
    extra = {
        "root": str(root),
        "output": str(out),
        "layout": layout,
        "machine type": machine_type,
        "other machine types (not written)": ", ".join(t for t in machine_sounds.machine_types(listing.clips)
                                                       if t != machine_type) or "none",
        "non-audio files ignored": str(listing.non_audio),
        "split": f"seed {args.seed}, subset {args.subset_fraction:g}, valid {args.val_fraction:g} per machine id"
        + ("" if layout != machine_sounds.MIMII else "; test = anomalies + as many normal clips (MIMII protocol)"),
    }
    summary = prepare.summarize(f"machine sounds: {machine_type}", splits, ids, names, extra, unsplit=scan.skipped)
    counts = machine_sounds.split_counts(split_clips)
    for split in split_clips:
        conditions = ", ".join(f"{k} {v}" for k, v in counts["conditions"][split].items())
        print(f"{split}: {conditions}")
    summary.update(machine_type=machine_type, layout=layout, classes=ids, **counts)
    summary_path = prepare.write_summary(out, summary)
    prepare.require_clips(splits, summary_path)
    prepare.write_dataset(out, root, splits, ids, names)
    for split, members in split_clips.items():
        machine_sounds.write_machine_metadata(out, split, members)
    written = ", ".join(f"{s}.tsv/.lbl/.machine.tsv" for s in splits)
    print(f"wrote {out} ({written}, label_descriptors.csv: {len(ids)} classes) and {summary_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, metavar="DIR", help="folder holding the published layout")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the manifests and summary.json")
    parser.add_argument(
        "--machine-type", metavar="TYPE", help="the machine type to write (required when the root holds several)"
    )
    parser.add_argument(
        "--subset-fraction", type=float, default=1.0, metavar="F",
        help="keep this fraction of each machine id's training clips (default: 1.0)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, metavar="F",
        help="of each machine id's kept training clips, this fraction goes to valid; 0: no valid split (default: 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the split (default: 0)")
    prepare.add_scan_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.subset_fraction <= 1 or not 0 <= args.val_fraction < 1:
        parser.error("need 0 < --subset-fraction <= 1 and 0 <= --val-fraction < 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
