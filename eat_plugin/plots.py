"""Figures of a training run (:class:`eat_plugin.training_log.TrainingLog`) and of an evaluation.

matplotlib is imported only inside the functions that draw, and figures are built on the Agg canvas
directly (no pyplot, no global backend switch), so importing this module costs nothing and works on
machines without a display. Every function returns the ``Figure``: the plotted data can be read back
(``fig.axes[0].lines[i].get_xydata()``, ``ax.images[0].get_array()``, ``ax.patches[i].get_height()``),
and every curve is labelled with its metric name as fairseq logs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from eat_plugin.training_log import TRAIN_SECTIONS, TrainingLog

PRETRAINING_KEYS = ("target_var", "pred_var", "ema_decay", "masked_pct")  # eat_pretraining's extra log keys
PRETRAINING_TITLES = {"ema_decay": "ema_decay (teacher decay x 1000, as logged)",
                      "masked_pct": "masked_pct (fraction of masked patches)"}
# per-batch counters and timers: not validation metrics
BOOKKEEPING = {"ntokens", "nsentences", "sample_size", "wps", "ups", "wpb", "bsz", "wall", "train_wall", "gnorm",
               "clip", "loss_scale", "correct", "count", "oom"}
BEST_MARKER = "*"
ANNOTATE_MAX_CLASSES = 30


def new_figure(width: float, height: float):
    """A ``Figure`` on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _is_loss(metric: str) -> bool:
    return metric == "loss" or metric.startswith("loss_") or metric.endswith("_loss")


def train_section(log: TrainingLog) -> Optional[str]:
    """``train_inner`` (every log_interval updates) if logged, else the end-of-epoch ``train``."""
    return next((s for s in TRAIN_SECTIONS if s in log.series), None)


def _plot(ax, log: TrainingLog, section: str, metrics: Sequence[str], label_prefix: str = "") -> None:
    for metric in metrics:
        steps, values = log.series[section][metric]
        ax.plot(steps, values, label=label_prefix + metric, marker="." if len(steps) < 30 else None)


def _finish(ax, title: str, ylabel: str = "") -> None:
    ax.set_title(title)
    ax.set_xlabel("updates")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def losses_figure(log: TrainingLog):
    """Every training loss term (``loss``, ``loss_*``, ``*_loss``) vs updates; None if none was logged."""
    section = train_section(log)
    metrics = [m for m in log.metrics(section) if _is_loss(m)] if section else []
    if not metrics:
        return None
    metrics.sort(key=lambda m: m != "loss")  # the total first
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    _plot(ax, log, section, metrics)
    _finish(ax, f"training losses ({section})", "loss")
    return fig


def lr_figure(log: TrainingLog):
    """The learning rate(s): ``lr`` or one ``lr_<group>`` per optimizer group (identical curves once)."""
    section = train_section(log)
    metrics = [m for m in log.metrics(section) if m == "lr" or m.startswith("lr_")] if section else []
    metrics.sort(key=lambda m: m not in ("lr", "lr_default"))
    series = log.series.get(section, {})
    distinct: List[str] = []
    for metric in metrics:
        same = (d for d in distinct if all(np.array_equal(a, b) for a, b in zip(series[metric], series[d])))
        if next(same, None) is None:
            distinct.append(metric)
    if not distinct:
        return None
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    _plot(ax, log, section, distinct)
    omitted = len(metrics) - len(distinct)
    _finish(ax, "learning rate" + (f" ({omitted} groups with identical curves omitted)" if omitted else ""), "lr")
    return fig


def pretraining_figure(log: TrainingLog):
    """``target_var``, ``pred_var``, ``ema_decay``, ``masked_pct`` (eat_pretraining), one panel each; None if absent."""
    section = train_section(log)
    metrics = [m for m in PRETRAINING_KEYS if section and m in log.series[section]]
    if not metrics:
        return None
    cols = min(2, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig = new_figure(6 * cols, 3.5 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, metric in zip(axes, metrics):
        _plot(ax, log, section, [metric])
        _finish(ax, PRETRAINING_TITLES.get(metric, metric))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return fig


def validation_metrics(log: TrainingLog, section: str) -> Tuple[List[str], List[str]]:
    """``(scores, losses)`` logged for a validation ``section``: the checkpoint metric first; no counters."""
    names = [m for m in log.metrics(section) if m not in BOOKKEEPING and not m.startswith("best_")
             and not m.startswith("lr")]
    losses = [m for m in names if _is_loss(m)]
    scores = [m for m in names if not _is_loss(m)]
    scores.sort(key=lambda m: m != log.best_metric)
    losses.sort(key=lambda m: m != "loss")
    return scores, losses


def validation_figure(log: TrainingLog):
    """Validation metric(s) and loss vs updates, one panel per metric and one for the losses; the best
    checkpoint marked (line label ``best <metric>``) and annotated. Other validation subsets are drawn
    into the same panels, labelled ``<subset>_<metric>``. None without a validation section."""
    if log.valid_subset is None:
        return None
    scores, losses = validation_metrics(log, log.valid_subset)
    panels = [[m] for m in scores] + ([losses] if losses else [])
    if not panels:
        return None
    fig = new_figure(8, 3.5 * len(panels))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True)).ravel()
    for ax, metrics in zip(axes, panels):
        _plot(ax, log, log.valid_subset, metrics)
        for other in log.validation_sections:
            if other != log.valid_subset:
                _plot(ax, log, other, [m for m in metrics if m in log.series[other]], label_prefix=f"{other}_")
        if log.best is not None and log.best_metric in metrics:
            _mark_best(ax, log)
        _finish(ax, f"{', '.join(metrics)} on '{log.valid_subset}'", "loss" if metrics is losses else metrics[0])
    return fig


def is_head_metric(metric: str) -> bool:
    """A classification head's plain loss or accuracy (the semantic heads: ``machine_id_ce``, ...)."""
    return metric.endswith("_ce") or (metric.endswith("_accuracy") and metric != "accuracy")


def train_valid_figure(log: TrainingLog):
    """Design note 003's section-5 curves: each head's cross-entropy and accuracy on the training batches and
    on the validation subset in one panel (overfitting: the train curve falls while the valid one rises);
    None when no such metric is logged in both."""
    section = train_section(log)
    if section is None or log.valid_subset is None:
        return None
    metrics = [m for m in log.metrics(section) if is_head_metric(m) and m in log.series[log.valid_subset]]
    if not metrics:
        return None
    fig = new_figure(8, 3.2 * len(metrics))
    axes = np.atleast_1d(fig.subplots(len(metrics), 1, sharex=True)).ravel()
    for ax, metric in zip(axes, metrics):
        _plot(ax, log, section, [metric], label_prefix=f"{section} ")
        _plot(ax, log, log.valid_subset, [metric], label_prefix=f"{log.valid_subset} ")
        _finish(ax, f"{metric}: training vs '{log.valid_subset}'", metric)
    return fig


def _mark_best(ax, log: TrainingLog) -> None:
    step, value = log.best
    direction = "max" if log.maximize else "min"
    ax.plot([step], [value], linestyle="none", marker=BEST_MARKER, markersize=14, color="tab:red",
            label=f"best {log.best_metric}")
    ax.annotate(f"best {log.best_metric} ({direction}) {value:g}\nat update {step}", xy=(step, value),
                xytext=(10, -25 if log.maximize else 15), textcoords="offset points", fontsize="small",
                arrowprops={"arrowstyle": "->", "color": "tab:red"})


def training_figures(log: TrainingLog) -> Tuple[Dict[str, object], List[str]]:
    """``({file name: Figure}, [why a figure was skipped])`` for ``losses.png``, ``lr.png``,
    ``pretraining.png`` and ``validation.png``, plus ``heads_train_valid.png`` when heads log their CE."""
    builders = {
        "losses.png": (losses_figure, "no training loss (loss, loss_*) in the train_inner / train sections"),
        "lr.png": (lr_figure, "no learning rate (lr, lr_*) in the train_inner / train sections"),
        "pretraining.png": (pretraining_figure, f"no pre-training statistics ({', '.join(PRETRAINING_KEYS)})"),
        "validation.png": (validation_figure, "no validation section (a [valid] / [eval] line or folder)"),
    }
    figures, skipped = {}, []
    for name, (build, reason) in builders.items():
        fig = build(log)
        if fig is None:
            skipped.append(f"{name}: {reason}")
        else:
            figures[name] = fig
    heads = train_valid_figure(log)  # only runs with classification heads (machine_sounds) log these
    if heads is not None:
        figures["heads_train_valid.png"] = heads
    return figures, skipped


# ---------------------------------------------------------------------------------------- evaluation


def confusion_matrix_figure(confusion: np.ndarray, class_names: Sequence[str], title: str = "confusion matrix"):
    """Counts as an image (row: true class, column: predicted class), class names on the axes, counts
    written in the cells for up to 30 classes."""
    confusion = np.asarray(confusion)
    num = len(class_names)
    if confusion.shape != (num, num):
        raise ValueError(f"confusion matrix {confusion.shape}: expected ({num}, {num}) for {num} class names")
    side = min(max(6.0, 0.28 * num + 3), 30.0)
    fig = new_figure(side + 1.5, side)
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="clips")
    ticks = np.arange(num)
    fontsize = "small" if num <= ANNOTATE_MAX_CLASSES else "x-small" if num <= 60 else "xx-small"
    ax.set_xticks(ticks, [str(n) for n in class_names], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [str(n) for n in class_names], fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if num <= ANNOTATE_MAX_CLASSES:
        dark = confusion.max() / 2 if confusion.size else 0
        for (row, col), count in np.ndenumerate(confusion):
            if count:
                ax.text(col, row, str(int(count)), ha="center", va="center", fontsize="x-small",
                        color="white" if count > dark else "black")
    return fig


def average_precision_figure(per_class_ap: np.ndarray, class_names: Sequence[str], max_classes: int = 50,
                             mAP: Optional[float] = None, title: str = "average precision per class"):
    """Per-class AP as bars, best first, the ``max_classes`` best classes (classes without positives,
    NaN, left out); a horizontal line at ``mAP`` if given."""
    per_class_ap = np.asarray(per_class_ap, dtype=np.float64)
    if len(per_class_ap) != len(class_names):
        raise ValueError(f"{len(per_class_ap)} APs for {len(class_names)} class names: expected one per class")
    scored = [c for c in np.argsort(-np.nan_to_num(per_class_ap, nan=-1.0), kind="stable")
              if not np.isnan(per_class_ap[c])]
    shown = scored[:max_classes]
    fig = new_figure(max(6.0, 0.22 * len(shown) + 2), 5)
    ax = fig.subplots()
    ax.bar(np.arange(len(shown)), per_class_ap[shown], color="tab:blue")
    ax.set_xticks(np.arange(len(shown)), [str(class_names[c]) for c in shown], rotation=90,
                  fontsize="small" if len(shown) <= 60 else "xx-small")
    ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("AP")
    more = f"; best {len(shown)} of {len(scored)} classes with positives" if len(shown) < len(scored) else ""
    ax.set_title(f"{title}{more}")
    if mAP is not None and not np.isnan(mAP):
        ax.axhline(mAP, color="tab:red", linestyle="--", label=f"mAP {mAP:.4f}")
        ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig
