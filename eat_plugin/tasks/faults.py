"""Training faults the tasks report: a non-finite loss or gradient, and clips skipped as undecodable.

A NaN or Inf stops the run with an error naming the update and every clip of its batch (id and file):

* gradients: fairseq's trainer raises ``FloatingPointError("gradients are Nan/Inf")`` when the gradient
  norm is not finite (in fp16 it first lowers the loss scale and skips the batch, and raises
  ``FloatingPointError("Minimum loss scale reached ...")`` only when the scale cannot go lower: that
  handling is unchanged). Before re-raising, the trainer re-runs the batch with its ``NanDetector`` (which
  logs the first module with a NaN/Inf output); the task's ``train_step`` sees that re-run (the error is
  being handled) and rewrites the message of that same exception to name the update and the clips.
* the loss: a non-finite loss whose gradients stayed finite would otherwise train on; the value the
  criterion has just logged for the step (already a host number, fairseq syncs for it) is checked in
  ``reduce_metrics``.

Nothing is copied to the host on a healthy step: the task keeps references to the batches' id tensors and
reads them only when it reports a fault. With ``task.skip_bad_clips`` it logs ``bad_clips``, the number
of distinct training clips skipped so far (counted across DataLoader workers, ``FbankDataset.bad_clips``).
"""

import math
import sys
from typing import Any, List, Optional, Tuple

import torch
from fairseq.logging import metrics

MAX_LISTED_CLIPS = 50  # clips named in the error; the rest are counted
BAD_CLIPS_KEY = "bad_clips"


def _run_config(cfg: Any) -> Optional[Any]:
    """The whole run's config that the task section ``cfg`` sits in, when fairseq built it that way."""
    parent = getattr(cfg, "_get_parent", lambda: None)()
    return parent if parent is not None and "dataset" in parent else None


def _step_token() -> Optional[float]:
    """Identifies the trainer's ``train_step`` call in progress (it restarts the ``train_wall`` stopwatch).

    Tells a new step from the next micro-batch of the same update (``update_freq``) and from a step
    retried at the same update number after an fp16 overflow. None outside fairseq's trainer.
    """
    return getattr(metrics.get_meter("train", "train_wall"), "start_time", None)


def _in_train_step() -> bool:
    """Whether the trainer's ``train_step`` (its ``train`` aggregation) is active, i.e. not validation."""
    train = metrics.get_meters("train")
    return train is not None and any(agg is train for agg in metrics.get_active_aggregators())


def _is_finite(value: Any) -> bool:
    if torch.is_tensor(value):
        return bool(torch.isfinite(value).all())
    return math.isfinite(float(value))


class TrainingFaults:
    """Per-task state: the batches of the training step in progress (``train_step`` -> ``reduce_metrics``)."""

    def __init__(self, task):
        self.task = task
        self._token: Optional[Tuple[int, Optional[float]]] = None
        self._batches: List[Tuple[Any, bool]] = []  # (ids (B,) tensor, is fairseq's dummy batch)
        self._update_num = 0
        self._loss_unchecked = False

    # ------------------------------------------------------------------ hooks called by the task
    def before_train_step(self, sample: dict, update_num: int, ignore_grad: bool) -> None:
        token = (update_num, _step_token())
        handling = sys.exc_info()[1]
        if isinstance(handling, FloatingPointError) and token == self._token:
            # the trainer's NanDetector re-run of the step that just failed (same train_step call)
            self.annotate(handling, sample, update_num)
            return
        if token != self._token:
            self._token, self._batches = token, []
        self._batches.append((sample.get("id"), ignore_grad))  # a reference: no host copy
        self._update_num = update_num
        self._loss_unchecked = True
        if getattr(self.task.cfg, "skip_bad_clips", False):
            dataset = self.train_dataset()
            if dataset is not None and hasattr(dataset, "num_bad_clips"):
                metrics.log_scalar(BAD_CLIPS_KEY, dataset.num_bad_clips, weight=0, priority=790, round=0)

    def after_reduce_metrics(self) -> None:
        """After the criterion logged the step's loss: raise if it is not finite (training steps only)."""
        if not self._loss_unchecked or not _in_train_step():
            return
        self._loss_unchecked = False
        aggregators = metrics.get_active_aggregators()
        meter = aggregators[-1].get("loss") if aggregators else None  # the trainer's per-step aggregation
        value = getattr(meter, "val", None)
        if value is None or _is_finite(value):
            return
        reason = f"the loss is {float(value)} (the gradients were finite)"
        raise FloatingPointError(self.message(reason, self._update_num, self._batches))

    def annotate(self, err: FloatingPointError, sample: dict, update_num: int) -> None:
        """Rewrite fairseq's error (re-raised by its trainer after the re-run) to name the update's clips."""
        if not hasattr(err, "eat_batches"):
            err.eat_reason = str(err)
            err.eat_batches = []
        err.eat_batches.append((sample.get("id"), False))
        hint = (
            "fairseq re-ran the batch with its NanDetector: the warnings above name the first module whose "
            "output was NaN/Inf"
        )
        err.args = (self.message(err.eat_reason, update_num, err.eat_batches, hint),)

    # ------------------------------------------------------------------ messages
    def train_dataset(self):
        """The dataset the training batches index: ``dataset.train_subset``, else the one ``train*`` split."""
        datasets = getattr(self.task, "datasets", {})
        run = _run_config(self.task.cfg)
        split = run.dataset.get("train_subset") if run is not None else None
        if split in datasets:
            return datasets[split]
        train = [d for name, d in datasets.items() if name.startswith("train")]
        return train[0] if len(train) == 1 else None

    def describe_clips(self, batches: List[Tuple[Any, bool]]) -> str:
        dataset = self.train_dataset()
        rows = []
        for ids, dummy in batches:
            ids = [] if ids is None else torch.as_tensor(ids).flatten().tolist()
            note = " (fairseq's stand-in for an empty batch; its loss is multiplied by 0)" if dummy else ""
            for i in ids:
                path = dataset.audio_path(i) if hasattr(dataset, "audio_path") else "(path unknown)"
                rows.append(f"  id {i}: {path}{note}")
        if not rows:
            return "the batch has no clip ids"
        source = getattr(getattr(dataset, "manifest", None), "path", None)
        head = f"the batch: {len(rows)} clips" + (f" of {source}" if source is not None else "")
        more = [f"  ... and {len(rows) - MAX_LISTED_CLIPS} more"] if len(rows) > MAX_LISTED_CLIPS else []
        return "\n".join([head + ":", *rows[:MAX_LISTED_CLIPS], *more])

    def message(self, reason: str, update_num: int, batches, hint: str = "") -> str:
        lines = [
            f"training stopped at update {update_num + 1}: {reason.rstrip('.')}.",
            self.describe_clips(batches),
        ]
        if hint:
            lines.append(hint + ".")
        lines.append(
            "Usual causes: a learning rate too high (optimization.lr, warmup), an fp16 run that diverged, or "
            "extreme input; resume from the last checkpoint after changing it."
        )
        return "\n".join(lines)
