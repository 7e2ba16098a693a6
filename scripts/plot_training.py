#!/usr/bin/env python
"""Plot a fairseq EAT run's curves as PNGs: training losses, learning rate, pre-training statistics,
validation metrics with the best checkpoint marked.

Reads fairseq's JSON log lines (``hydra_train.log`` in the hydra run dir, or a ``common.log_file``;
``common.log_format: json``) or its TensorBoard events (``common.tensorboard_logdir``), see
``eat_plugin.training_log``. Writes, into ``--out`` (default: the folder given, or the log file's folder):

    losses.png       every training loss term (loss, loss_*: e.g. loss_cls, loss_IMAGE_regression) vs updates
    lr.png           the learning rate of each optimizer group
    pretraining.png  target_var, pred_var, ema_decay, masked_pct (pre-training runs)
    validation.png   validation metric(s) and loss vs updates, best checkpoint marked and annotated

Figures whose data the run did not log (e.g. validation in a pre-training run) are skipped with a note.

Example:

    python scripts/plot_training.py checkpoints/esc50/hydra --out plots/esc50
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

if __name__ == "__main__":  # keep the command line free of fairseq's / tensorboard's import-time log noise
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from eat_plugin.plots import save_figure, training_figures  # noqa: E402
from eat_plugin.training_log import TrainingLog, TrainingLogError, read_training_log  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Plot a fairseq EAT run (JSON log lines or TensorBoard events) as PNGs: losses.png, lr.png, "
                    "pretraining.png, validation.png.")
    parser.add_argument("run", type=Path, metavar="RUN",
                        help="hydra_train.log or a common.log_file; a TensorBoard log folder (sub-folders "
                             "train_inner/, train/, valid/) or event file; or a folder with one of these below it")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder for the PNGs (default: RUN if a folder, else the folder of RUN)")
    parser.add_argument("--source", choices=("auto", "json", "tensorboard"), default="auto",
                        help="what to read in a folder (default: auto = hydra_train.log if any, else TensorBoard)")
    parser.add_argument("--metric", default=None, metavar="NAME",
                        help="validation metric whose best point is marked (default: the run's best_checkpoint_metric, "
                             "from its best_<NAME> log key)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--maximize", dest="maximize", action="store_const", const=True, default=None,
                           help="higher metric is better (default: by name; accuracy, mAP, AP, f1 are maximised)")
    direction.add_argument("--minimize", dest="maximize", action="store_const", const=False,
                           help="lower metric is better (default for loss-like names)")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (default: 100)")
    return parser


def describe(log: TrainingLog) -> str:
    parts = [f"{section}: {len(log.series[section])} metrics" for section in log.series]
    text = f"read {log.source} ({'; '.join(parts)})"
    if log.best is not None:
        step, value = log.best
        direction = "max" if log.maximize else "min"
        text += f"\nbest {log.valid_subset} {log.best_metric} ({direction}): {value:g} at update {step}"
    return text


def plot(log: TrainingLog, out: Path, dpi: int = 100) -> List[Path]:
    """Write the run's figures into ``out``; print what was written and what was skipped."""
    figures, skipped = training_figures(log)
    written = [save_figure(fig, out / name, dpi=dpi) for name, fig in figures.items()]
    for note in skipped:
        print(f"skipped {note}")
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        log = read_training_log(args.run, args.source, args.metric, args.maximize)
        print(describe(log))
        out = args.out if args.out is not None else (args.run if args.run.is_dir() else args.run.parent)
        plot(log, out, args.dpi)
    except (TrainingLogError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
