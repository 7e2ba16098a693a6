#!/usr/bin/env python3
"""Anomaly scores of machine-sound test clips from the machine-id head, with AUC and pAUC per machine id.

The standard classification-based detector (the DCASE baselines' idea): a model trained to tell the
machine ids of NORMAL sounds apart is less sure of an anomalous clip's own id, so the anomaly score of a
clip is the negative log-probability the machine-id head gives its own id (window-averaged). Per machine id
the script reports the AUC and the pAUC (FPR up to 0.1, McClish-standardised as the DCASE challenges and
scikit-learn's ``roc_auc_score(max_fpr=0.1)`` compute it) of normal vs anomalous test clips, and their
means (arithmetic, as the DCASE 2020 tables; the harmonic mean is printed too).

    python scripts/score_anomalies.py runs/fan/checkpoint_best.pt --data data/fan --split test \\
        --out runs/fan/anomaly.tsv

Input: a ``machine_sounds`` pre-training checkpoint (``model.lambda_machine_id > 0``: its machine-id head),
or a classifier fine-tuned on the machine ids of the same data directory (``mae_image_classification``:
the machine-id head on a fine-tuned EAT encoder), and a data directory
of ``scripts/prepare_machine_sounds.py``: ``{split}.tsv`` and ``{split}.machine.tsv`` (machine id and
normal / anomaly condition per clip). Clips without a condition (unlabelled evaluation sets) are scored
and written, but left out of the AUCs. Output: a per-clip score table (``--scores``), the per-id table
(``--out``, tsv) and its bar chart next to it (``.png``), and ``--json`` metrics.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

if __name__ == "__main__":  # keep the command line free of fairseq's import-time log and warning noise
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from eat_plugin import cli  # noqa: E402
from eat_plugin.console import run_cli  # noqa: E402
from eat_plugin.data.machine_sounds import read_machine_metadata  # noqa: E402
from eat_plugin.data.manifest import read_manifest  # noqa: E402
from eat_plugin.metrics import partial_roc_auc, roc_auc  # noqa: E402

MAX_FPR = 0.1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="prepared machine-sound data: {split}.tsv and {split}.machine.tsv")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="per machine id AUC / pAUC table (tsv), its bar chart beside it (.png)")
    parser.add_argument("--scores", type=Path, default=None, metavar="FILE", help="per-clip anomaly scores (tsv)")
    parser.add_argument("--no-plots", action="store_true", help="no .png next to --out")
    parser.add_argument("--json", default=None, metavar="FILE|-", help="write the metrics as JSON ('-': stdout)")
    return parser


def anomaly_scores(log_probs: np.ndarray, machine_ids: Sequence[int]) -> np.ndarray:
    """``-log p(own id)`` per clip from ``(N, K)`` log-probabilities."""
    ids = np.asarray(machine_ids)
    if ids.max(initial=0) >= log_probs.shape[1]:
        raise cli.CLIError(f"machine id {int(ids.max())} but the model's machine-id head has {log_probs.shape[1]} "
                           f"outputs: the data is not the one the model was trained on")
    return -log_probs[np.arange(len(ids)), ids]  # (N,)


def machine_log_probs(model, paths) -> np.ndarray:
    """``(B, K)`` log-probabilities of the machine ids: the pre-training model's machine-id head, or the
    fine-tuned classifier's softmax (window-averaged logits)."""
    if model.is_classifier:
        return torch.log_softmax(model.logits(paths), -1).numpy()
    return model.machine_log_probs(paths).numpy()


def per_machine_metrics(scores: np.ndarray, machine_ids: Sequence[int], anomalous: Sequence[Optional[bool]]) -> Dict:
    """``{"per_id": {id: {auc, pauc, normal, anomaly}}, "mean": {...}}`` over the labelled clips."""
    per_id = {}
    for machine_id in sorted(set(machine_ids)):
        rows = [i for i, (m, a) in enumerate(zip(machine_ids, anomalous)) if m == machine_id and a is not None]
        labels = np.array([anomalous[i] for i in rows], dtype=np.int64)
        if len(set(labels.tolist())) < 2:
            continue  # an id without both normal and anomalous test clips has no AUC
        per_id[int(machine_id)] = {
            "auc": float(roc_auc(labels, scores[rows])), "pauc": float(partial_roc_auc(labels, scores[rows], MAX_FPR)),
            "normal": int((labels == 0).sum()), "anomaly": int(labels.sum())}
    if not per_id:
        raise cli.CLIError("no machine id has both normal and anomalous clips in this split: no AUC to report")
    mean = {key: float(np.mean([m[key] for m in per_id.values()])) for key in ("auc", "pauc")}
    harmonic = {f"{key}_harmonic": float(len(per_id) / sum(1 / max(m[key], 1e-12) for m in per_id.values()))
                for key in ("auc", "pauc")}
    return {"per_id": per_id, "mean": {**mean, **harmonic}}


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.data / f"{args.split}.tsv")
    metadata = read_machine_metadata(args.data, args.split)
    if len(metadata) != len(manifest):
        raise cli.CLIError(f"{args.data}: {args.split}.machine.tsv has {len(metadata)} rows but {args.split}.tsv "
                           f"{len(manifest)}; re-run scripts/prepare_machine_sounds.py")
    items = cli.manifest_items(manifest)
    model = cli.load(args, check_names=False, semantic_heads=True)
    if model.is_classifier and not model.network.single_label:
        raise cli.CLIError(f"{args.checkpoint}: a multi-label classifier; the machine-id detector needs one id per clip")
    rows = []
    for item, output, error in cli.map_batches(items, lambda paths: machine_log_probs(model, paths),
                                               args.batch_size, f"scoring {args.split}"):
        if error is not None:
            raise cli.CLIError(f"{item.path}: {error}; every clip of the split is needed for the AUC")
        rows.append(output)
    log_probs = np.stack(rows)  # (N, K)
    machine_ids = [row.machine_id for row in metadata]
    anomalous = [None if row.condition is None else row.condition == "anomaly" for row in metadata]
    scores = anomaly_scores(log_probs, machine_ids)
    metrics = per_machine_metrics(scores, machine_ids, anomalous)
    print(format_table(metrics))
    if args.scores is not None:
        write_scores(args.scores, items, metadata, scores)
    if args.out is not None:
        write_table(args.out, metrics)
        if not args.no_plots:
            plot_metrics(metrics, args.out.with_suffix(".png"))
    if args.json is not None:
        cli.write_json({"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                        "max_fpr": MAX_FPR, **metrics}, args.json)
    return 0


def format_table(metrics: Dict) -> str:
    lines = [f"{'machine id':>10} {'normal':>7} {'anomaly':>8} {'AUC':>7} {'pAUC':>7}"]
    for machine_id, m in metrics["per_id"].items():
        lines.append(f"{machine_id:>10} {m['normal']:>7} {m['anomaly']:>8} {100 * m['auc']:>6.2f}% {100 * m['pauc']:>6.2f}%")
    mean = metrics["mean"]
    lines.append(f"{'mean':>10} {'':>7} {'':>8} {100 * mean['auc']:>6.2f}% {100 * mean['pauc']:>6.2f}%")
    lines.append(f"{'harmonic':>10} {'':>7} {'':>8} {100 * mean['auc_harmonic']:>6.2f}% "
                 f"{100 * mean['pauc_harmonic']:>6.2f}%")
    return "\n".join(lines)


def write_table(path: Path, metrics: Dict) -> None:
    with cli.open_text(path) as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["machine_id", "normal", "anomaly", "auc", "pauc"])
        for machine_id, m in metrics["per_id"].items():
            writer.writerow([machine_id, m["normal"], m["anomaly"], f"{m['auc']:.6f}", f"{m['pauc']:.6f}"])
        writer.writerow(["mean", "", "", f"{metrics['mean']['auc']:.6f}", f"{metrics['mean']['pauc']:.6f}"])


def write_scores(path: Path, items, metadata, scores: np.ndarray) -> None:
    with cli.open_text(path) as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["relpath", "machine_id", "condition", "anomaly_score"])
        for item, row, score in zip(items, metadata, scores):
            writer.writerow([item.name, row.machine_id, row.condition or "", f"{score:.6f}"])


def plot_metrics(metrics: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(metrics["per_id"])
    x = np.arange(len(ids) + 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * len(x)), 3.2))
    for offset, key, label in ((-0.2, "auc", "AUC"), (0.2, "pauc", f"pAUC (FPR <= {MAX_FPR})")):
        values = [metrics["per_id"][i][key] for i in ids] + [metrics["mean"][key]]
        ax.bar(x + offset, values, width=0.4, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [f"id {i}" for i in ids] + ["mean"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
