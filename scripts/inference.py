#!/usr/bin/env python
"""Top-k audio tagging with a fine-tuned EAT checkpoint (the official ``inference/inference.py``, batched).

INPUT is an audio file, a folder (searched recursively for every extension soundfile reads) or a
manifest ``.tsv`` (first line the audio root, then ``relpath<TAB>num_samples``). Each clip goes through
the training front end (any sample rate and channel count: down-mixed, resampled to 16 kHz, Kaldi
fbank, the checkpoint's normalisation). Clips longer than the model's target length are cut into
consecutive windows and the window logits are averaged. Scores are sigmoid outputs for multi-label
(AudioSet) models and softmax outputs for single-label ones (ESC-50, Speech Commands).

Output: a table (file, rank, label, score) on the terminal; ``--json FILE|-`` writes
``{file: [{"label": ..., "score": ...}, ...]}`` (best first) and ``--csv FILE`` the rows
``file,rank,label,score``. A clip that cannot be read is reported and skipped; the exit status is
then 1.

Example:

    python scripts/inference.py EAT-base_epoch30_finetune_AS2M.pt dog.wav --labels class_labels_indices.csv --top-k 12
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __name__ == "__main__":  # keep the command line free of fairseq's import-time log and warning noise
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from eat_plugin.console import run_cli  # noqa: E402
from eat_plugin import cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Top-k labels of audio clips with a fine-tuned EAT checkpoint. Clips longer than the "
                    "model's target length are cut into consecutive windows whose logits are averaged.",
        epilog="Scores: sigmoid (multi-label models) or softmax (single-label models). A clip that cannot be "
               "read is reported and the others go on; the exit status is then 1.",
    )
    cli.add_model_arguments(parser)
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="an audio file, a folder (recursive) or a manifest .tsv")
    parser.add_argument("--labels", type=Path, default=None, metavar="CSV",
                        help="class table 'index,id,display name' (label_descriptors.csv or AudioSet's "
                             "class_labels_indices.csv; default: the training data's table if it still exists, "
                             "else the label ids stored in the checkpoint)")
    parser.add_argument("--top-k", type=cli.positive_int, default=5, metavar="K",
                        help="labels per clip (default: 5)")
    parser.add_argument("--json", default=None, metavar="FILE|-",
                        help="write {file: [{label, score}, ...]} as JSON ('-': stdout, then no table)")
    parser.add_argument("--csv", type=Path, default=None, metavar="FILE", help="write rows file,rank,label,score")
    return parser


def run(args: argparse.Namespace) -> int:
    items = cli.collect_inputs(args.input)
    model = cli.load(args, args.labels)
    if not model.is_classifier:
        raise cli.CLIError(f"{args.checkpoint}: a pre-trained checkpoint has no classifier head; "
                           f"use a fine-tuned one (or scripts/extract_features.py for embeddings)")
    predictions: Dict[str, List[Dict]] = {}
    failed = []
    predict = lambda paths: model.predict(paths, top_k=args.top_k)  # noqa: E731
    for item, top, error in cli.map_batches(items, predict, args.batch_size, "inference"):
        if error is not None:
            failed.append((item, error))
        else:
            predictions[item.name] = [{"label": label, "score": score} for label, score in top]

    if args.json != "-":
        print_table(predictions)
    if args.json is not None:
        cli.write_json(predictions, args.json)
    if args.csv is not None:
        with cli.open_text(args.csv) as f:
            writer = csv.writer(f)
            writer.writerow(["file", "rank", "label", "score"])
            for name, top in predictions.items():
                writer.writerows([name, rank, p["label"], f"{p['score']:.6g}"] for rank, p in enumerate(top, 1))
    for item, error in failed:
        print(f"failed: {item.path}: {error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(items)} clips failed", file=sys.stderr)
    return 1 if failed else 0


def print_table(predictions: Dict[str, List[Dict]]) -> None:
    width = max([len("file"), *(len(name) for name in predictions)])
    label_width = max([len("label"), *(len(p["label"]) for top in predictions.values() for p in top)])
    print(f"{'file':<{width}}  rank  {'label':<{label_width}}  score")
    for name, top in predictions.items():
        for rank, p in enumerate(top, 1):
            print(f"{name if rank == 1 else '':<{width}}  {rank:>4}  {p['label']:<{label_width}}  {p['score']:.4f}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
