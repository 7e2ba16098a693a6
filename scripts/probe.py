#!/usr/bin/env python3
"""Frozen-feature probes of an EAT checkpoint: which checkpoint and which layer work for your data.

Features are extracted once per split (cached under ``--cache``, resumable chunk by chunk, with a progress
bar), pooled per clip (mean of the patch tokens, or the CLS token) at each chosen transformer block (the
official ``layer_results``), then scored on the test split by

* a linear probe: L2-regularised logistic regression (multinomial for single-label data, one logistic per
  class for multi-label), the strength chosen on the validation split (``eat_plugin.probing``), and
* a cosine k-nearest-neighbour classifier, k chosen on the validation split,

per layer (a table and a picture of accuracy / mAP by layer) and, with ``--weighted``, on a learned
softmax-weighted sum of the layers. Several ``--data`` directories (ESC-50's five folds from
``prepare_esc50.py``) give the mean and the sample standard deviation over them, as the literature reports.

    python scripts/probe.py EAT-base_epoch30_pretrain.pt --data data/esc50/fold{1,2,3,4,5} --layers all \\
        --cache runs/probe_cache --out runs/probe

Splits: ``--train`` / ``--valid`` / ``--test`` (defaults train / valid / test; ESC-50 folds have no valid
split: then a seeded 20 % of train is held out to choose the regularisation and k, and the probe is refit on
all of train). Deterministic for a given ``--seed``; CPU or GPU (``--device``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

if __name__ == "__main__":  # keep the command line free of fairseq's import-time log and warning noise
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402

from eat_plugin import cli, probing  # noqa: E402
from eat_plugin.console import progress, run_cli  # noqa: E402
from eat_plugin.data.manifest import read_label_descriptors, read_labels, read_manifest  # noqa: E402
from eat_plugin.metrics import mean_average_precision  # noqa: E402

CHUNK = 64  # clips per cache file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_arguments(parser)
    parser.add_argument("--data", type=Path, nargs="+", required=True, metavar="DIR",
                        help="prepared data directories (manifests, .lbl, label_descriptors.csv); several: folds")
    parser.add_argument("--train", default="train")
    parser.add_argument("--valid", default="valid", help="split for choosing the probes' settings (default: valid; "
                                                          "a held-out 20 %% of train when the directory has none)")
    parser.add_argument("--test", default="test", help="split the probes are scored on (ESC-50 folds: eval)")
    parser.add_argument("--layers", default="last", metavar="last|all|I,J,...", help="blocks to probe (default: last)")
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean", help="utterance vector per clip")
    parser.add_argument("--weighted", action="store_true", help="also probe a learned weighted sum of the layers")
    parser.add_argument("--cache", type=Path, required=True, metavar="DIR", help="feature cache (resumable)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="probe.tsv, probe.png, probe.json")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def layer_spec(model, text: str) -> List[int]:
    """``last``, ``all`` or ``I,J,...`` -> block indices (``EATModel.block_indices``: negative from the end)."""
    try:
        return model.block_indices([-1] if text == "last" else "all" if text == "all" else
                                   [int(v) for v in text.split(",")])
    except ValueError as err:
        raise cli.CLIError(f"--layers {text}: {err}") from None


def feature_key(args: argparse.Namespace) -> str:
    """What the features depend on besides the data: the checkpoint file (path, size, time) and front end."""
    stat = args.checkpoint.stat()
    text = f"{args.checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{args.target_length}:{args.norm}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def split_features(model, data: Path, split: str, blocks: List[int], pooling: str, cache: Path) -> torch.Tensor:
    """``(N, L, D)`` pooled features of every clip of ``data/split.tsv``, through the chunked cache
    (``cache`` is already specific to the checkpoint: ``feature_key``)."""
    manifest = read_manifest(data / f"{split}.tsv")
    items = cli.manifest_items(manifest)
    name = f"{split}.{pooling}.{'-'.join(map(str, blocks))}"
    folder = cache / data.resolve().as_posix().strip("/").replace("/", "__") / name  # one folder per features
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    for start in progress(range(0, len(items), CHUNK), f"features {data.name}/{split}", unit="chunk"):
        path = folder / f"{start // CHUNK:05d}.pt"
        if not path.is_file():
            batch = [item.path for item in items[start:start + CHUNK]]
            tokens = model.embed(batch, granularity="all", layers=blocks)  # per clip (L, 1 + N, D)
            pooled = torch.stack([t[:, 0] if pooling == "cls" else t[:, 1:].mean(1) for t in tokens])  # (B, L, D)
            tmp = path.with_suffix(".tmp")
            torch.save(pooled, tmp)
            tmp.replace(path)
        chunks.append(torch.load(path, weights_only=True))
    return torch.cat(chunks)  # (N, L, D)


def split_labels(data: Path, split: str, descriptors) -> Tuple[List[List[int]], bool]:
    manifest = read_manifest(data / f"{split}.tsv")
    labels = read_labels(data / f"{split}.lbl", descriptors, manifest)
    return labels, any(len(clip) != 1 for clip in labels)


def as_targets(labels: List[List[int]], num_classes: int, multi_label: bool) -> torch.Tensor:
    if not multi_label:
        return torch.tensor([clip[0] for clip in labels])  # (N,)
    targets = torch.zeros(len(labels), num_classes)  # (N, C)
    for i, clip in enumerate(labels):
        targets[i, clip] = 1.0
    return targets


def metric_for(multi_label: bool):
    if multi_label:
        return lambda scores, targets: mean_average_precision(scores.numpy(), targets.numpy()).mean
    return probing.accuracy_metric


def probe_directory(model, data: Path, args, blocks: List[int]) -> Dict:
    """Per-layer (and weighted) linear / kNN test scores of one data directory."""
    descriptors = read_label_descriptors(data / "label_descriptors.csv")
    num_classes = len(descriptors)
    train_labels, multi_train = split_labels(data, args.train, descriptors)
    test_labels, multi_test = split_labels(data, args.test, descriptors)
    multi_label = multi_train or multi_test
    cache = args.cache / feature_key(args)
    train_x = split_features(model, data, args.train, blocks, args.pooling, cache)
    test_x = split_features(model, data, args.test, blocks, args.pooling, cache)
    train_y = as_targets(train_labels, num_classes, multi_label)  # (N,) or (N, C)
    test_y = as_targets(test_labels, num_classes, multi_label)
    if (data / f"{args.valid}.tsv").is_file():
        valid_labels, _ = split_labels(data, args.valid, descriptors)
        valid_x = split_features(model, data, args.valid, blocks, args.pooling, cache)
        choose = (train_x, train_y), (valid_x, as_targets(valid_labels, num_classes, multi_label))
    else:  # a seeded 20 % of train chooses the settings; the probe is then refit on all of train
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed))
        held, kept = order[: max(1, len(order) // 5)], order[max(1, len(order) // 5):]
        choose = (train_x[kept], train_y[kept]), (train_x[held], train_y[held])
    metric = metric_for(multi_label)
    rows = []
    for i, block in enumerate(blocks):
        (fit_x, fit_y), (val_x, val_y) = choose
        _, _, by_l2 = probing.select_l2((fit_x[:, i], fit_y), (val_x[:, i], val_y), num_classes, multi_label, metric)
        l2 = max(by_l2, key=lambda v: (by_l2[v], v))
        linear = probing.fit_linear_probe(train_x[:, i], train_y, num_classes, l2, multi_label)
        k, _, _ = probing.select_k((fit_x[:, i], fit_y), (val_x[:, i], val_y), num_classes, multi_label, metric)
        knn = probing.knn_scores(train_x[:, i], train_y, test_x[:, i], num_classes, k, multi_label)
        rows.append({"layer": block, "linear": metric(linear.scores(test_x[:, i]), test_y), "l2": l2,
                     "knn": metric(knn, test_y), "k": k})
    result = {"data": str(data), "metric": "mAP" if multi_label else "accuracy", "layers": rows,
              "train_clips": len(train_x), "test_clips": len(test_x)}
    if args.weighted and len(blocks) > 1:
        weights, probe = probing.weighted_layer_probe(train_x, train_y, num_classes, rows[-1]["l2"], multi_label,
                                                      seed=args.seed)
        scores = probe.scores(probing.weighted_sum(test_x, weights, train_x))
        result["weighted"] = {"linear": metric(scores, test_y), "weights": weights.tolist()}
    return result


def summarise(results: List[Dict]) -> Dict:
    """Mean and sample standard deviation (ddof=1) over the directories, per layer and probe."""
    summary = {"metric": results[0]["metric"], "directories": len(results), "layers": []}
    for i, row in enumerate(results[0]["layers"]):
        entry = {"layer": row["layer"]}
        for probe in ("linear", "knn"):
            values = np.array([r["layers"][i][probe] for r in results])
            entry[probe] = float(values.mean())
            entry[f"{probe}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        summary["layers"].append(entry)
    if all("weighted" in r for r in results):
        values = np.array([r["weighted"]["linear"] for r in results])
        summary["weighted"] = {"linear": float(values.mean()),
                               "linear_std": float(values.std(ddof=1)) if len(values) > 1 else None}
    return summary


def format_summary(summary: Dict) -> str:
    name = summary["metric"]
    lines = [f"{'layer':>6} {'linear ' + name:>16} {'kNN ' + name:>16}"]
    for row in summary["layers"]:
        spread = lambda key: f" +- {100 * row[key]:.1f}" if row.get(key) is not None else ""  # noqa: E731
        lines.append(f"{row['layer']:>6} {100 * row['linear']:>9.2f}%{spread('linear_std'):>7} "
                     f"{100 * row['knn']:>9.2f}%{spread('knn_std'):>7}")
    if "weighted" in summary:
        lines.append(f"{'sum':>6} {100 * summary['weighted']['linear']:>9.2f}%  (learned weighted sum of the layers)")
    return "\n".join(lines)


def write_outputs(out: Path, summary: Dict, results: List[Dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with cli.open_text(out / "probe.tsv") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["layer", "linear", "linear_std", "knn", "knn_std"])
        for row in summary["layers"]:
            writer.writerow([row["layer"], row["linear"], row["linear_std"], row["knn"], row["knn_std"]])
    (out / "probe.json").write_text(json.dumps({"summary": summary, "directories": results}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [row["layer"] for row in summary["layers"]]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(layers) + 2), 3.2))
    for probe, label in (("linear", "linear probe"), ("knn", "kNN (cosine)")):
        ax.errorbar(layers, [r[probe] for r in summary["layers"]],
                    yerr=[r[f"{probe}_std"] or 0 for r in summary["layers"]], marker="o", capsize=3, label=label)
    ax.set_xlabel("transformer block")
    ax.set_ylabel(summary["metric"])
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "probe.png", dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    for data in args.data:
        if not (data / "label_descriptors.csv").is_file():
            raise cli.CLIError(f"{data}: no label_descriptors.csv; expected a prepared data directory")
    torch.manual_seed(args.seed)
    model = cli.load(args, check_names=False)
    blocks = layer_spec(model, args.layers)
    results = [probe_directory(model, data, args, blocks) for data in args.data]
    summary = summarise(results)
    print(format_summary(summary))
    if args.out is not None:
        write_outputs(args.out, summary, results)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
