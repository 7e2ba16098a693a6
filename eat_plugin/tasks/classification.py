"""The ``mae_image_classification`` task: labelled fbank clips and the fine-tuning metrics (reference §2.7, §4.6).

The config is the pre-training task's (every official field, the same normalisation, augmentation and
weighted-sampling rules) plus the two official label fields. Per split it reads

    {data}/{split}.tsv               the manifest
    {data}/{split}.{labels}          one ``key<TAB>id1,id2,...`` line per manifest row
    {data}/{label_descriptors}       ``index,id,"name"`` class table, read once at setup

and yields ``net_input = {"imgs": (B, 1, T, 128), "label": (B, C)}``.

Single- or multi-label (``label_type``): the official recipes leave it to their flags
(``label_type: flags``): ``esc50_eval`` / ``spcv2_eval`` select a single-label data set (exactly one
label per clip) as well as the statistics, otherwise clips are multi-label (AudioSet). ``single`` /
``multi`` say it directly, and ``auto`` reads ``multi_label`` from ``{data}/summary.json``, which every
preparer writes (``scripts/prepare_custom.py`` included). With an explicit type the task also tells the
model (``model.multi_label``: cross-entropy or BCE), fills ``model.num_classes: null`` from the class table
and resolves ``checkpoint.best_checkpoint_metric: auto`` to ``accuracy`` or ``mAP``; the resolved values
are written into the run's config, so its checkpoints do not need the summary to be read again.

Metrics, computed over the whole validation set (fairseq aggregates every validation batch):

* ``mAP``: when the logging outputs carry ``_predictions`` / ``_targets`` (AudioSet recipes); a
  fraction, like the official one.
* ``accuracy``: ``100 * sum(correct) / sum(sample_size)`` when they carry ``correct`` (ESC-50, SPCv2).

Both can be ``checkpoint.best_checkpoint_metric`` (with ``maximize_best_checkpoint_metric: true``).
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from fairseq import utils
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics
from fairseq.logging.meters import MetersDict
from fairseq.tasks import register_task
from omegaconf import open_dict

from eat_plugin.data.datasets import LabelledFbankDataset
from eat_plugin.data.manifest import LabelDescriptors, read_label_descriptors, read_labels, read_manifest
from eat_plugin.losses import class_weights_from_counts
from eat_plugin.metrics import accuracy, mean_average_precision
from eat_plugin.tasks.pretraining import MaeImagePretrainingConfig, MaeImagePretrainingTask, run_config

logger = logging.getLogger(__name__)

PREDICTION_KEYS = ("_predictions", "_targets")  # (B, C) tensors logged by the multi-label model in eval mode
SLOT_MASK = "_filled_slots"  # (W * B_max,) 1 where a slot holds a clip (see predictions_to_slots)


@dataclass
class MaeImageClassificationConfig(MaeImagePretrainingConfig):
    label_descriptors: str = field(
        default="label_descriptors.csv", metadata={"help": "class table 'index,id,name', relative to task.data"}
    )
    labels: str = field(default="lbl", metadata={"help": "label file extension: {data}/{split}.{labels}"})
    # --- eat_plugin addition (not in the official config) ---
    label_type: str = field(
        default="flags",
        metadata={"help": "flags (official: esc50_eval/spcv2_eval mean single-label, else multi-label), single, "
                          "multi, or auto ({data}/summary.json's multi_label, written by the preparers)"},
    )


LABEL_TYPES = ("flags", "single", "multi", "auto")
SUMMARY_FILE = "summary.json"
AUTO = "auto"  # task.label_type and checkpoint.best_checkpoint_metric value resolved by the task


def check_classification_config(cfg: MaeImageClassificationConfig) -> None:
    """What fine-tuning needs beyond the pre-training checks; errors name the ``task.*`` field."""
    if cfg.precompute_mask_config is not None:
        raise ValueError(
            "task.precompute_mask_config is set: fine-tuning does not mask its input in the dataset "
            "(model.mask_ratio / specaug set the SpecAugment masks); leave it unset (null)"
        )
    if cfg.key != "imgs":
        raise ValueError(
            f"task.key={cfg.key!r}: the classification model is called as forward(imgs, label); keep 'imgs'"
        )
    if not cfg.labels or "/" in cfg.labels:
        raise ValueError(f"task.labels={cfg.labels!r}: expected a file extension such as 'lbl'")
    if cfg.label_type not in LABEL_TYPES:
        raise ValueError(f"task.label_type={cfg.label_type!r}: expected one of {list(LABEL_TYPES)}")


def resolve_multi_label(cfg: MaeImageClassificationConfig) -> bool:
    """Whether clips may carry several labels, as ``task.label_type`` says (see the module docstring)."""
    if cfg.label_type == "flags":
        return not (cfg.esc50_eval or cfg.spcv2_eval)
    if cfg.label_type in ("single", "multi"):
        return cfg.label_type == "multi"
    path = Path(cfg.data) / SUMMARY_FILE
    if not path.is_file():
        raise ValueError(
            f"task.label_type=auto reads {path}, which does not exist: run scripts/prepare_custom.py (or another "
            f"preparer) into task.data, or set task.label_type=single / multi"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"task.label_type=auto: cannot read {path}: {err}") from None
    value = summary.get("multi_label") if isinstance(summary, dict) else None
    if not isinstance(value, bool):
        raise ValueError(
            f"task.label_type=auto: {path} has no boolean 'multi_label' (got {value!r}); re-run the preparer that "
            f"wrote it, or set task.label_type=single / multi"
        )
    return value


@register_task("mae_image_classification", dataclass=MaeImageClassificationConfig)
class MaeImageClassificationTask(MaeImagePretrainingTask):
    """Fbank clips with multi-hot (or one-hot) label vectors; ``mAP`` / ``accuracy`` validation metrics."""

    cfg: MaeImageClassificationConfig

    def __init__(self, cfg: MaeImageClassificationConfig):
        check_classification_config(cfg)
        super().__init__(cfg)
        self.label_descriptors: LabelDescriptors = read_label_descriptors(self.descriptors_path)
        self.multi_label: bool = resolve_multi_label(cfg)
        # the official task state: {label id: class index as a string}
        self.state.merge_state_dict({"labels": self.label_table()})
        self._record_resolved_choices()

    def _record_resolved_choices(self) -> None:
        """``label_type: auto`` -> single/multi and ``best_checkpoint_metric: auto`` -> the metric, in the run config.

        fairseq gives the task a merged copy of ``cfg.task`` whose parent is the run's config (the one the
        trainer saves and the checkpoint logic reads), so the choices are written there.
        """
        run = run_config(self.cfg)
        resolved_type = "multi" if self.multi_label else "single"
        if self.cfg.label_type == AUTO:
            logger.info(f"task.label_type=auto: {resolved_type}-label, from {Path(self.cfg.data) / SUMMARY_FILE}")
            for node in (self.cfg, run.task if run is not None else None):
                if node is not None:
                    with open_dict(node):
                        node.label_type = resolved_type
        if run is not None and run.checkpoint.get("best_checkpoint_metric") == AUTO:
            metric = self.validation_metric
            with open_dict(run.checkpoint):
                run.checkpoint.best_checkpoint_metric = metric
                run.checkpoint.maximize_best_checkpoint_metric = True
            logger.info(f"checkpoint.best_checkpoint_metric=auto: {metric} (maximised)")

    @property
    def validation_metric(self) -> str:
        """The metric ``reduce_metrics`` derives: ``mAP`` for multi-label data, ``accuracy`` otherwise."""
        return "mAP" if self.multi_label else "accuracy"

    @classmethod
    def setup_task(cls, cfg: MaeImageClassificationConfig, **kwargs) -> "MaeImageClassificationTask":
        return cls(cfg)

    # ------------------------------------------------------------------ labels
    @property
    def descriptors_path(self) -> Path:
        return Path(self.cfg.data) / self.cfg.label_descriptors

    @property
    def num_classes(self) -> int:
        return len(self.label_descriptors)

    def label_table(self) -> Dict[str, str]:
        return {label_id: str(index) for index, label_id in enumerate(self.label_descriptors.ids)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Merge a checkpoint's task state; warn if its class table is not this data set's."""
        stored = state_dict.get("labels")
        if stored is not None and dict(stored) != self.label_table():
            logger.warning(
                f"the checkpoint's class table ({len(stored)} labels) differs from {self.descriptors_path} "
                f"({self.num_classes} labels): class indices may mean different classes"
            )
        super().load_state_dict(state_dict)
        self.state.merge_state_dict({"labels": self.label_table()})  # the table in use is the data set's

    # ------------------------------------------------------------------ data
    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> LabelledFbankDataset:
        cfg = self.cfg
        dataset_kwargs = self.dataset_kwargs(split)
        self.datasets[split] = dataset = LabelledFbankDataset(
            manifest_path=dataset_kwargs.pop("manifest_path"),
            labels_path=Path(cfg.data) / f"{split}.{cfg.labels}",
            descriptors=self.label_descriptors,
            multi_label=self.multi_label,
            **dataset_kwargs,
        )
        kind = "multi-label" if self.multi_label else "single-label"
        logger.info(
            f"{split}: {len(dataset)} clips from {dataset.manifest.path}, {self.num_classes} classes ({kind}), "
            f"{dataset.front_end}"
        )
        return dataset

    # ------------------------------------------------------------------ model
    def build_model(self, cfg: Any, from_checkpoint: bool = False):
        """Fill / check ``model.num_classes`` and ``model.multi_label`` against the data, then fairseq's build."""
        self._configure_model(cfg)
        num_classes = getattr(cfg, "num_classes", None)
        if num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"model.num_classes={num_classes} but {self.descriptors_path} lists {self.num_classes} classes; "
                f"set model.num_classes={self.num_classes}"
            )
        warn_on_flag_mismatch(self.cfg, cfg)
        model = super().build_model(cfg, from_checkpoint)
        # fairseq builds the model from a merged COPY of cfg; the pre-training config the model stored
        # there must reach the config the trainer saves, so fine-tuned checkpoints reload without the
        # pre-training file (the data2vec / wav2vec fine-tuning tasks do the same).
        actualized = getattr(getattr(model, "cfg", None), "pretrained_model_args", None)
        if actualized is not None and getattr(cfg, "pretrained_model_args", None) is None:
            with open_dict(cfg):
                cfg.pretrained_model_args = actualized
        if getattr(cfg, "class_weights", "none") != "none":
            model.set_class_weights(self.class_weights(cfg.class_weights))
        return model

    def class_weights(self, kind: str) -> torch.Tensor:
        """``(C,)`` loss weights from the training split's class counts (``losses.class_weights_from_counts``)."""
        split = "train"
        manifest = read_manifest(Path(self.cfg.data) / f"{split}.tsv")
        labels = read_labels(Path(self.cfg.data) / f"{split}.{self.cfg.labels}", self.label_descriptors, manifest)
        counts = torch.zeros(self.num_classes)  # (C,)
        for clip in labels:
            counts[clip] += 1
        weights = class_weights_from_counts(counts, kind)  # (C,)
        shown = ", ".join(f"{name}: {w:.2f}" for name, w in zip(self.label_descriptors.names[:8], weights.tolist()))
        logger.info(f"model.class_weights={kind}: from {split} counts; {shown}{' ...' if self.num_classes > 8 else ''}")
        return weights

    def _configure_model(self, cfg: Any) -> None:
        """``model.num_classes: null`` -> the class table's size; an explicit label type -> ``model.multi_label``."""
        if getattr(cfg, "num_classes", 0) is None:
            with open_dict(cfg):
                cfg.num_classes = self.num_classes
            logger.info(f"model.num_classes: {self.num_classes}, from {self.descriptors_path}")
        if self.cfg.label_type == "flags":
            return
        stated = getattr(cfg, "multi_label", None)
        if stated is not None and bool(stated) != self.multi_label:
            raise ValueError(
                f"model.multi_label={stated} but task.label_type says the data is "
                f"{'multi' if self.multi_label else 'single'}-label; leave model.multi_label unset (null)"
            )
        with open_dict(cfg):
            cfg.multi_label = self.multi_label

    # ------------------------------------------------------------------ metrics
    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        return loss, sample_size, predictions_to_slots(logging_output, self.num_classes)

    def reduce_metrics(self, logging_outputs: List[Dict[str, Any]], criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        if any(SLOT_MASK in log for log in logging_outputs):
            log_predictions(logging_outputs, self.num_classes)
        elif any("correct" in log for log in logging_outputs):
            log_accuracy(logging_outputs)

    def post_validate(self, model, stats: Dict[str, Any], agg: MetersDict) -> None:
        """After a validation pass: say over how many clips (all ranks) and classes the metric was computed."""
        if "_total" in agg:
            logger.info(f"accuracy over {int(agg['_total'].sum)} clips")
        if PREDICTION_KEYS[0] not in agg or agg[PREDICTION_KEYS[0]].tensor is None:
            return
        result = map_of_meters(agg)
        c = len(result.per_class_ap)
        logger.info(
            f"mAP over {agg[PREDICTION_KEYS[0]].tensor.size(0)} clips and {c - result.num_skipped} of {c} classes; "
            f"{result.num_skipped} classes have no positives in the validation set"
        )


def warn_on_flag_mismatch(task_cfg: MaeImageClassificationConfig, model_cfg: Any) -> None:
    """The official recipes set these in both sections; a difference is most likely a forgotten override."""
    for name in ("esc50_eval", "spcv2_eval", "target_length"):
        model_value = getattr(model_cfg, name, None)
        if model_value is not None and model_value != getattr(task_cfg, name):
            logger.warning(
                f"task.{name}={getattr(task_cfg, name)!r} but model.{name}={model_value!r}; the official recipes "
                f"set both to the same value"
            )


def _rows(value: Any, num_classes: int) -> torch.Tensor:
    """A logged ``(B, C)`` tensor on the CPU (fairseq's ``model`` criterion turns a 1-element one into a float)."""
    tensor = torch.as_tensor(value).detach().float().cpu()
    return tensor if tensor.dim() == 2 else tensor.reshape(-1, num_classes)


def predictions_to_slots(logging_output: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    """A validation batch's ``(B, C)`` ``_predictions`` / ``_targets`` as ``(W * B_max, C)`` slot tensors.

    fairseq sums logging outputs over the ranks (and zeroes a rank's filler batch when the validation
    set does not divide evenly). Each rank writes its clips into its own block of slots, rows
    ``rank * B_max ...``, zeros elsewhere, and marks them in ``_filled_slots``; after the sum every rank
    holds every rank's clips of the step exactly once, so mAP is computed over the union of the ranks'
    predictions. ``B_max`` is the largest batch of the step over the ranks (one small all-reduce).
    """
    if PREDICTION_KEYS[0] not in logging_output:
        return logging_output
    for key in PREDICTION_KEYS:
        if key not in logging_output:
            raise ValueError(f"logging outputs carry {PREDICTION_KEYS[0]} but not {key}: list both "
                             f"{list(PREDICTION_KEYS)} in criterion.log_keys")
    logging_output = dict(logging_output)
    predictions, targets = (_rows(logging_output.pop(key), num_classes) for key in PREDICTION_KEYS)  # (B, C)
    world = distributed_utils.get_data_parallel_world_size()
    rank = distributed_utils.get_data_parallel_rank() if world > 1 else 0
    batch = torch.tensor([predictions.size(0)], device=logging_output["loss"].device)  # (1,)
    if world > 1:
        distributed_utils.all_reduce(batch, distributed_utils.get_data_parallel_group(), op="max")
    b_max = int(batch.item())
    for key, rows in zip(PREDICTION_KEYS, (predictions, targets)):
        slots = rows.new_zeros(world * b_max, num_classes)  # (W * B_max, C)
        slots[rank * b_max:rank * b_max + rows.size(0)] = rows
        logging_output[key] = slots
    filled = torch.zeros(world * b_max)  # (W * B_max,)
    filled[rank * b_max:rank * b_max + predictions.size(0)] = 1.0
    logging_output[SLOT_MASK] = filled
    return logging_output


def log_predictions(logging_outputs: Sequence[Dict[str, Any]], num_classes: int) -> None:
    """Concatenate the filled slots of ``_predictions`` / ``_targets`` over batches; derive ``mAP`` from the
    whole set."""
    logs = [log for log in logging_outputs if SLOT_MASK in log]
    filled = [torch.as_tensor(log[SLOT_MASK]).cpu() > 0.5 for log in logs]  # (W * B_max,) per batch
    for key in PREDICTION_KEYS:
        parts = [_rows(log[key], num_classes)[keep] for log, keep in zip(logs, filled)]  # (b, C) each
        metrics.log_concat_tensor(key, torch.cat(parts))  # (sum b, C)
    metrics.log_derived("mAP", lambda meters: map_of_meters(meters).mAP)


def map_of_meters(meters: MetersDict):
    """``mean_average_precision`` over the concatenated ``_predictions`` / ``_targets`` meters."""
    predictions, targets = (meters[key].tensor for key in PREDICTION_KEYS)  # (N, C) each
    return mean_average_precision(predictions.numpy(), targets.numpy())


def log_accuracy(logging_outputs: Sequence[Dict[str, Any]]) -> None:
    """Sum ``correct`` and ``sample_size`` (clips) over batches; derive ``accuracy`` in percent."""
    logs = [log for log in logging_outputs if "correct" in log]
    metrics.log_scalar("_correct", utils.item(sum(log["correct"] for log in logs)))
    metrics.log_scalar("_total", utils.item(sum(log.get("sample_size", 0) for log in logs)))
    metrics.log_derived("accuracy", lambda meters: accuracy(meters["_correct"].sum, meters["_total"].sum))
