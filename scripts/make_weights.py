#!/usr/bin/env python
"""Write per-clip sampling weights for balanced training on a multi-label split (AudioSet).

Reads DATA/{split}.tsv, DATA/{split}.lbl and DATA/label_descriptors.csv and writes one weight per
manifest row, one float per line (numpy.loadtxt reads it back), following the AST/AudioMAE convention:

    class weight = 1000 / (number of clips of the class in the split + 0.01)
    clip weight  = sum of the weights of its classes

so clips of rare classes are drawn more often by a weighted sampler.

Example:

    python scripts/make_weights.py --data data/as2m --split train    # -> data/as2m/train_weights.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from eat_plugin.console import run_cli
from eat_plugin.data import prepare


def run(args: argparse.Namespace) -> int:
    data_dir = prepare.require_dir(Path(args.data), "a prepared data folder ({split}.tsv, .lbl, label_descriptors.csv)")
    out, weights = prepare.write_weights(data_dir, args.split, Path(args.out) if args.out else None)
    if len(weights):
        print(f"{len(weights)} clips, weights {weights.min():.4g} .. {weights.max():.4g} (mean {weights.mean():.4g})")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    parser.add_argument("--split", default="train", help="split to weight (default: train)")
    parser.add_argument("--out", metavar="FILE", help="output file (default: DATA/{split}_weights.csv)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
