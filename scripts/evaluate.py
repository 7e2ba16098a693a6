#!/usr/bin/env python
"""Evaluate a fine-tuned EAT checkpoint on a labelled split (the official ``evaluation/eval.py``, generalised).

Reads, from the data directory DIR (the format the fine-tuning task reads, eat_plugin.data.manifest):

    DIR/{split}.tsv               manifest: audio root, then relpath<TAB>num_samples
    DIR/{split}.lbl               one 'key<TAB>id1,id2,...' line per manifest row
    DIR/label_descriptors.csv     class table 'index,id,"name"' (or --labels)

and reports, depending on the model (``single_label``, from its config):

* multi-label (AudioSet): mAP = ``eat_plugin.metrics.mean_average_precision`` of the sigmoid scores,
  the function the validation metric uses (classes without a positive clip are left out of the mean and
  counted); ``--out`` gets the per-class AP table (index, id, class, AP, positives), best first.
* single-label (ESC-50, Speech Commands): accuracy in % (``eat_plugin.metrics.accuracy``) of the argmax;
  ``--out`` gets the confusion matrix (rows: true class, columns: predicted class, with class names).

Next to the ``--out`` table goes a picture with its name and ``.png`` (``--out results/confusion.tsv`` ->
``results/confusion.png``; ``--no-plots``: none): the confusion matrix (counts written in the cells for up
to 30 classes), or the per-class AP as bars, best first (the ``--plot-classes`` best classes).

The front end is the training one with the checkpoint's normalisation and target length. Clips longer
than the target length are cut into windows whose logits are averaged (fine-tuning validation crops
them to the target length instead; clips of the usual lengths, e.g. 10 s at 1024 frames, are unaffected).

Example:

    python scripts/evaluate.py checkpoints/as20k/checkpoint_best.pt --data data/audioset --split eval --out ap.tsv
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO

import numpy as np

if __name__ == "__main__":  # keep the command line free of fairseq's import-time log and warning noise
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from eat_plugin.console import run_cli  # noqa: E402
from eat_plugin import cli, plots  # noqa: E402
from eat_plugin.data.manifest import LabelDescriptors, read_label_descriptors, read_labels, read_manifest  # noqa: E402
from eat_plugin.metrics import accuracy, mean_average_precision  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="mAP (multi-label models) or accuracy and confusion matrix (single-label models) of a "
                    "fine-tuned EAT checkpoint on DIR/{split}.tsv + .lbl, with the validation metric's functions.",
        epilog="Clips longer than the target length are cut into windows whose logits are averaged. Every clip "
               "must be readable: a bad clip stops the evaluation with its path.",
    )
    cli.add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="data directory with {split}.tsv, {split}.lbl and label_descriptors.csv")
    parser.add_argument("--split", default="eval", help="split name (default: eval)")
    parser.add_argument("--labels", type=Path, default=None, metavar="CSV",
                        help="class table 'index,id,display name' mapping the .lbl ids to the model's class "
                             "indices (default: DIR/label_descriptors.csv)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write the per-class AP table / the confusion matrix here (tsv), and its picture "
                             "next to it with the suffix .png")
    parser.add_argument("--no-plots", action="store_true", help="write the --out table without its .png picture")
    parser.add_argument("--plot-classes", type=cli.positive_int, default=50, metavar="N",
                        help="multi-label: the AP bar chart shows the N best classes (default: 50)")
    parser.add_argument("--json", default=None, metavar="FILE|-", help="write the metrics as JSON ('-': stdout)")
    return parser


def run(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise cli.CLIError(f"{args.data}: data directory not found")
    descriptors = read_label_descriptors(args.labels or args.data / "label_descriptors.csv")
    manifest = read_manifest(args.data / f"{args.split}.tsv")
    labels = read_labels(args.data / f"{args.split}.lbl", descriptors, manifest)
    items = cli.manifest_items(manifest)

    model = cli.load(args, check_names=False)
    if not model.is_classifier:
        raise cli.CLIError(f"{args.checkpoint}: a pre-trained checkpoint has no classifier head; evaluate a "
                           f"fine-tuned one")
    if len(descriptors) != cli.num_classes(model):
        raise cli.CLIError(f"{args.labels or args.data / 'label_descriptors.csv'} lists {len(descriptors)} classes "
                           f"but the model has {cli.num_classes(model)}")
    warn_on_other_class_table(model.label_names, descriptors)
    model.label_names = descriptors.names

    scores = np.zeros((len(items), len(descriptors)), dtype=np.float64)  # (N, C)
    score = lambda paths: model.scores(paths).numpy()  # noqa: E731  (B, C): sigmoid or softmax, as the model
    results = cli.map_batches(items, score, args.batch_size, f"evaluating {args.split}")
    for index, (item, row, error) in enumerate(results):
        if error is not None:
            raise cli.CLIError(f"{item.path}: {error}; every clip of the split is needed for the metric: fix it "
                               f"or remove it from {manifest.path} and its .lbl line")
        scores[index] = row

    console = sys.stderr if args.json == "-" else sys.stdout
    header = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
              "num_clips": len(items), "num_classes": len(descriptors)}
    plot = None if args.out is None or args.no_plots else plot_path(args.out)
    if model.network.single_label:
        metrics = single_label_report(scores, labels, descriptors, manifest.path, args.out, console, plot)
    else:
        metrics = multi_label_report(scores, labels, descriptors, args.out, console, plot, args.plot_classes)
    if args.json is not None:
        cli.write_json({**header, **metrics}, args.json)
    return 0


def warn_on_other_class_table(names: Optional[List[str]], descriptors: LabelDescriptors) -> None:
    """The checkpoint's class table (training data or stored ids), if known, should be this one."""
    if names is not None and names not in (descriptors.ids, descriptors.names):
        print(f"warning: the checkpoint's class table ({len(names)} classes, first {names[:3]}) differs from the "
              f"evaluation data's ({len(descriptors)}, first {descriptors.names[:3]}): class indices may mean "
              f"different classes", file=sys.stderr)


def plot_path(out: Path) -> Path:
    """The picture next to the ``--out`` table: ``results/confusion.tsv`` -> ``results/confusion.png``."""
    return out.with_suffix(".png") if out.suffix.lower() != ".png" else out.with_name(f"{out.stem}_plot.png")


def multi_label_report(scores: np.ndarray, labels: List[List[int]], descriptors: LabelDescriptors,
                       out: Optional[Path], console: TextIO, plot: Optional[Path] = None,
                       plot_classes: int = 50) -> Dict:
    targets = np.zeros_like(scores, dtype=bool)  # (N, C)
    for row, classes in enumerate(labels):
        targets[row, classes] = True
    result = mean_average_precision(scores, targets)
    positives = targets.sum(axis=0)  # (C,)
    order = sorted(range(len(descriptors)), key=lambda c: (np.isnan(result.per_class_ap[c]), -np.nan_to_num(
        result.per_class_ap[c]), c))  # best first, classes without positives last
    rows = [{"index": c, "id": descriptors.ids[c], "class": descriptors.names[c],
             "AP": float(result.per_class_ap[c]), "positives": int(positives[c])} for c in order]
    if out is not None:
        with cli.open_text(out) as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["index", "id", "class", "AP", "positives"])
            writer.writerows([r["index"], r["id"], r["class"], "nan" if np.isnan(r["AP"]) else f"{r['AP']:.6f}",
                              r["positives"]] for r in rows)
    scored = [r for r in rows if not np.isnan(r["AP"])]
    print(f"mAP: {result.mAP:.4f} over {len(scored)} classes with positives ({len(scores)} clips)", file=console)
    if result.num_skipped:
        missing = [r["class"] for r in rows if np.isnan(r["AP"])]
        more = f" ... {len(missing) - 10} more" if len(missing) > 10 else ""
        print(f"classes without positives (left out of the mean): {result.num_skipped}: "
              f"{', '.join(missing[:10])}{more}", file=console)
    parts = [("AP", scored)] if len(scored) <= 10 else [("best", scored[:5]), ("worst", scored[-5:][::-1])]
    for what, part in parts:
        print(f"{what}: " + ", ".join(f"{r['class']} {r['AP']:.3f}" for r in part), file=console)
    if out is not None:
        print(f"per-class AP: {out}", file=console)
    if plot is not None:
        fig = plots.average_precision_figure(result.per_class_ap, descriptors.names, plot_classes, result.mAP)
        print(f"per-class AP chart: {plots.save_figure(fig, plot)}", file=console)
    return {"kind": "multi-label", "mAP": result.mAP, "classes_without_positives": result.num_skipped,
            "per_class": rows}


def single_label_report(scores: np.ndarray, labels: List[List[int]], descriptors: LabelDescriptors,
                        manifest_path: Path, out: Optional[Path], console: TextIO, plot: Optional[Path] = None) -> Dict:
    several = [row for row, classes in enumerate(labels) if len(classes) != 1]
    if several:
        raise cli.CLIError(f"{manifest_path.with_suffix('.lbl')}: line {several[0] + 1} has {len(labels[several[0]])} "
                           f"labels; a single-label model is evaluated on exactly one label per clip")
    true = np.array([classes[0] for classes in labels])  # (N,)
    predicted = scores.argmax(axis=1)  # (N,)
    num = len(descriptors)
    confusion = np.zeros((num, num), dtype=np.int64)  # (true, predicted)
    np.add.at(confusion, (true, predicted), 1)
    correct = int(np.trace(confusion))
    acc = accuracy(correct, len(true))
    if out is not None:
        with cli.open_text(out) as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["true \\ predicted", *descriptors.names])
            writer.writerows([name, *confusion[i].tolist()] for i, name in enumerate(descriptors.names))
    print(f"accuracy: {acc:.2f} % ({correct} of {len(true)} clips)", file=console)
    off = confusion - np.diag(np.diag(confusion))
    pairs = sorted(((int(off[t, p]), t, p) for t, p in zip(*np.nonzero(off))), reverse=True)[:5]
    if pairs:
        print("most confused: " + ", ".join(f"{descriptors.names[t]} -> {descriptors.names[p]} ({n})"
                                            for n, t, p in pairs), file=console)
    if out is not None:
        print(f"confusion matrix: {out}", file=console)
    if plot is not None:
        fig = plots.confusion_matrix_figure(confusion, descriptors.names,
                                            f"confusion matrix: accuracy {acc:.2f} % ({correct} of {len(true)} clips)")
        print(f"confusion matrix picture: {plots.save_figure(fig, plot)}", file=console)
    return {"kind": "single-label", "accuracy": acc, "correct": correct, "classes": descriptors.names,
            "confusion_matrix": confusion.tolist()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
