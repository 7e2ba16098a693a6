"""A fairseq training run's logged scalars, read from its JSON log lines or its TensorBoard events.

fairseq writes the same statistics to two places (``fairseq/logging/progress_bar.py``):

* with ``common.log_format: json``, one JSON object per log line, values formatted as strings
  (``"{:g}"``: 6 significant digits), in ``hydra_train.log`` (the hydra run dir) and ``common.log_file``::

      [2026-11-23 10:00:00,123][train_inner][INFO] - {"epoch": 1, "loss": "4.1", ..., "num_updates": "100"}
      [2026-11-23 10:00:09,456][eval][INFO] - {"epoch": 1, "eval_loss": "3.9", "eval_accuracy": "40.5", ...,
          "eval_num_updates": "100"}

  ``train_inner`` lines (every ``log_interval`` updates) carry bare names and ``num_updates``; the
  end-of-epoch ``train`` lines and the validation lines carry names prefixed with their tag (``train_``,
  or the validation subset, e.g. ``valid_`` / ``eval_``), ``{tag}_num_updates`` included. In a
  ``common.log_file`` the lines are bare JSON (no ``[tag]``), and fairseq adds one file handler per
  epoch, so the same line is repeated; both are handled (the prefix names the section; a repeated
  step keeps its last value, which is also what a resumed run should show).
* with ``common.tensorboard_logdir: DIR``, one sub-directory per tag (``DIR/train_inner``, ``DIR/train``,
  ``DIR/eval``) holding scalars under the bare names (``loss``, ``accuracy``, ``best_accuracy``), at
  step ``num_updates``, as float32.

Both readers return a :class:`TrainingLog`: ``series[section][metric] = (steps, values)`` with ``section``
``"train_inner"``, ``"train"`` or the validation subset, bare metric names, and steps = ``num_updates``.
TensorBoard values are rounded to the 6 significant digits of the JSON lines, so the two agree.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

Series = Tuple[np.ndarray, np.ndarray]  # steps (K,) int64 num_updates, values (K,) float64
TRAIN_SECTIONS = ("train_inner", "train")
EVENTS_PREFIX = "events.out.tfevents"
JSON_LOG_NAME = "hydra_train.log"
BOOKKEEPING = ("epoch", "update", "num_updates")  # JsonProgressBar's position fields, not metrics
MAXIMIZED_WORDS = ("accuracy", "acc", "map", "ap", "f1", "auc")

# "[time][tag][LEVEL] - {json}" (hydra_train.log) or bare "{json}" (common.log_file)
_LINE = re.compile(r"^(?:\[[^\]]*\]\[(?P<tag>[^\]]+)\]\[[A-Z]+\] - )?(?P<json>\{.*\})\s*$")


class TrainingLogError(ValueError):
    """No usable log: the message names the file or folder and what was expected."""


def maximized_by_name(metric: str) -> bool:
    """Whether higher is better for ``metric``: accuracy / acc / mAP / AP / f1 / auc; loss-like otherwise."""
    words = re.split(r"[_\W]+", metric.lower())
    return "accuracy" in metric.lower() or any(word in MAXIMIZED_WORDS for word in words)


@dataclass
class TrainingLog:
    """The scalars of one run and its best validation point.

    Attributes:
        series: ``{section: {metric: (steps, values)}}``, steps ascending, one value per step.
        source: the file or TensorBoard folder read.
        valid_subset: the validation section (the one with a ``best_*`` metric, else the first), or None.
        best_metric: the checkpoint metric (from the ``best_<metric>`` key, or given), or None.
        maximize: whether higher ``best_metric`` is better (given, or by name: :func:`maximized_by_name`).
        best: ``(step, value)`` of the validation where ``best_metric`` reached its optimum (the last such
            validation on ties: fairseq rewrites ``checkpoint_best.pt`` on equal values), or None.
    """

    series: Dict[str, Dict[str, Series]]
    source: Path
    valid_subset: Optional[str] = None
    best_metric: Optional[str] = None
    maximize: Optional[bool] = None
    best: Optional[Tuple[int, float]] = None
    validation_sections: List[str] = field(default_factory=list)

    def get(self, section: str, metric: str) -> Optional[Series]:
        return self.series.get(section, {}).get(metric)

    def metrics(self, section: str) -> List[str]:
        return list(self.series.get(section, {}))

    @classmethod
    def from_series(cls, series: Dict[str, Dict[str, Series]], source: Path, best_metric: Optional[str] = None,
                    maximize: Optional[bool] = None) -> "TrainingLog":
        """Fill in the validation subset, the checkpoint metric and its best point from ``series``."""
        validation = [s for s in series if s not in TRAIN_SECTIONS]
        with_best = [s for s in validation if any(m.startswith("best_") for m in series[s])]
        valid_subset = (with_best or validation or [None])[0]
        metrics = series.get(valid_subset, {}) if valid_subset else {}
        if best_metric is None:
            best_metric = next((m[len("best_"):] for m in metrics if m.startswith("best_") and m[5:] in metrics), None)
        elif valid_subset is None or best_metric not in metrics:
            where = f"validation '{valid_subset}' has {sorted(metrics)}" if valid_subset else "no validation section"
            raise TrainingLogError(f"{source}: metric {best_metric!r} not found ({where})")
        if best_metric is not None and maximize is None:
            maximize = maximized_by_name(best_metric)
        best = None
        if best_metric is not None:
            best = best_point(*metrics[best_metric], maximize=bool(maximize))
        return cls(series, Path(source), valid_subset, best_metric, maximize, best, validation)


def best_point(steps: np.ndarray, values: np.ndarray, maximize: bool) -> Optional[Tuple[int, float]]:
    """``(step, value)`` of the optimum of ``values`` (NaN ignored; the last one on ties), None if all NaN."""
    finite = ~np.isnan(values)
    if not finite.any():
        return None
    target = values[finite].max() if maximize else values[finite].min()
    index = int(np.flatnonzero(values == target)[-1])
    return int(steps[index]), float(values[index])


def _to_series(points: Dict[str, Dict[str, Dict[int, float]]]) -> Dict[str, Dict[str, Series]]:
    """``{section: {metric: {step: value}}}`` -> sorted arrays."""
    series: Dict[str, Dict[str, Series]] = {}
    for section, metrics in points.items():
        series[section] = {}
        for metric, by_step in metrics.items():
            steps = np.array(sorted(by_step), dtype=np.int64)
            series[section][metric] = (steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return series


def _number(value) -> Optional[float]:
    """A logged value as a float (fairseq logs strings); None for lists, booleans and text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_record(record: dict, tag: Optional[str] = None) -> Optional[Tuple[str, int, Dict[str, float]]]:
    """One JSON log object -> ``(section, num_updates, {metric: value})``, or None if it is not a stats line.

    ``train_inner`` objects carry ``num_updates``; end-of-epoch and validation ones ``{tag}_num_updates``
    and ``{tag}_``-prefixed names (``tag``: the ``[tag]`` of the line, if any, must agree).
    """
    if "num_updates" in record:
        section, prefix = tag or "train_inner", ""
    else:
        keys = [k for k in record if k.endswith("_num_updates")]
        if len(keys) != 1 or (tag is not None and keys[0] != f"{tag}_num_updates"):
            return None
        prefix = keys[0][: -len("num_updates")]
        section = prefix[:-1]
    step = _number(record[f"{prefix}num_updates"])
    if step is None or not math.isfinite(step):
        return None
    values = {}
    for key, value in record.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        number = _number(value)
        if name and name not in BOOKKEEPING and number is not None:
            values[name] = number
    return section, int(step), values


def read_json_log(path: Path, best_metric: Optional[str] = None, maximize: Optional[bool] = None) -> TrainingLog:
    """Read fairseq's JSON log lines (``hydra_train.log``, a ``common.log_file``, any file of such lines)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingLogError(f"{path}: log file not found")
    points: Dict[str, Dict[str, Dict[int, float]]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _LINE.match(line.strip())
            if match is None:
                continue
            try:
                record = json.loads(match["json"])
            except json.JSONDecodeError:
                continue  # e.g. the config dump, a Python dict repr
            parsed = parse_record(record, match["tag"]) if isinstance(record, dict) else None
            if parsed is None:
                continue
            section, step, values = parsed
            for metric, value in values.items():
                points.setdefault(section, {}).setdefault(metric, {})[step] = value
    if not points:
        raise TrainingLogError(
            f"{path}: no fairseq JSON log lines; expected lines like "
            f"'[...][train_inner][INFO] - {{\"epoch\": 1, \"loss\": \"4.1\", ..., \"num_updates\": \"100\"}}' "
            f"(written with common.log_format=json)")
    return TrainingLog.from_series(_to_series(points), path, best_metric, maximize)


def _tag_dirs(logdir: Path) -> List[Path]:
    """Folders holding event files: ``logdir`` itself (one tag) or its direct sub-folders (fairseq's layout)."""
    if any(p.name.startswith(EVENTS_PREFIX) for p in logdir.iterdir() if p.is_file()):
        return [logdir]
    return sorted(d for d in logdir.iterdir() if d.is_dir() and any(p.name.startswith(EVENTS_PREFIX)
                                                                   for p in d.iterdir() if p.is_file()))


def read_tensorboard(logdir: Path, best_metric: Optional[str] = None, maximize: Optional[bool] = None) -> TrainingLog:
    """Read a ``common.tensorboard_logdir`` (sub-folder per tag) or one tag's folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    if not logdir.is_dir():
        raise TrainingLogError(f"{logdir}: TensorBoard folder not found")
    points: Dict[str, Dict[str, Dict[int, float]]] = {}
    for tag_dir in _tag_dirs(logdir):
        events = EventAccumulator(str(tag_dir), size_guidance={"scalars": 0})
        events.Reload()
        for name in events.Tags()["scalars"]:
            by_step = points.setdefault(tag_dir.name, {}).setdefault(name, {})
            for event in events.Scalars(name):  # float32: back to the JSON lines' 6 significant digits
                by_step[int(event.step)] = float(f"{event.value:.6g}")
    if not points:
        raise TrainingLogError(f"{logdir}: no TensorBoard scalars; expected fairseq's common.tensorboard_logdir "
                               f"with sub-folders train_inner/, train/, valid/ holding {EVENTS_PREFIX}.* files")
    order = {s: i for i, s in enumerate(TRAIN_SECTIONS)}  # train sections first, then validation by name
    ordered = {s: points[s] for s in sorted(points, key=lambda s: (order.get(s, len(order)), s))}
    return TrainingLog.from_series(_to_series(ordered), logdir, best_metric, maximize)


def _tensorboard_logdirs(root: Path) -> List[Path]:
    dirs = {p.parent if p.parent == root else p.parent.parent for p in root.rglob(f"{EVENTS_PREFIX}*") if p.is_file()}
    return sorted(dirs)


def _only(found: Iterable[Path], root: Path, what: str) -> Path:
    found = list(found)
    if len(found) > 1:
        raise TrainingLogError(f"{root}: {len(found)} {what} below this folder ({', '.join(map(str, found[:5]))}); "
                               f"pass the one to plot")
    return found[0]


def read_training_log(path: Path, source: str = "auto", best_metric: Optional[str] = None,
                      maximize: Optional[bool] = None) -> TrainingLog:
    """Read a run: a log file, a TensorBoard event file or folder, or a run folder containing one.

    Args:
        path: ``hydra_train.log`` / a ``common.log_file`` / a folder with one ``hydra_train.log`` below it,
            or a TensorBoard log folder / event file / a folder with one TensorBoard log folder below it.
        source: ``auto`` (the JSON log if a folder has one, else TensorBoard), ``json`` or ``tensorboard``.
        best_metric: the validation metric to find the best point of (default: the ``best_<metric>`` key).
        maximize: whether higher ``best_metric`` is better (default: by its name).
    """
    if source not in ("auto", "json", "tensorboard"):
        raise ValueError(f"source must be auto, json or tensorboard, got {source!r}")
    path = Path(path)
    if not path.exists():
        raise TrainingLogError(f"{path}: not found; expected a fairseq log file, a TensorBoard folder or a run folder")
    if path.is_file():
        if path.name.startswith(EVENTS_PREFIX):  # fairseq's layout: LOGDIR/TAG/events.out.tfevents.*
            return read_tensorboard(path.parent.parent, best_metric, maximize)
        if source == "tensorboard":
            raise TrainingLogError(f"{path}: not a TensorBoard event file ({EVENTS_PREFIX}.*)")
        return read_json_log(path, best_metric, maximize)
    logs = sorted(path.rglob(JSON_LOG_NAME)) if source != "tensorboard" else []
    if logs:
        return read_json_log(_only(logs, path, f"{JSON_LOG_NAME} files"), best_metric, maximize)
    logdirs = _tensorboard_logdirs(path) if source != "json" else []
    if logdirs:
        return read_tensorboard(_only(logdirs, path, "TensorBoard log folders"), best_metric, maximize)
    wanted = {"auto": f"no {JSON_LOG_NAME} and no TensorBoard event files", "json": f"no {JSON_LOG_NAME}",
              "tensorboard": "no TensorBoard event files"}[source]
    raise TrainingLogError(f"{path}: {wanted} below this folder")
