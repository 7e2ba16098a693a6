"""``eat_classification`` criterion: fairseq's ``model`` criterion with the fine-tuning logging built in.

The official recipes use ``criterion._name: model`` and list what to log themselves
(``log_keys: [_predictions, _targets]`` for AudioSet, ``[correct]`` for ESC-50 / Speech Commands);
that keeps working with the ``mae_image_classification`` task. This criterion logs ``correct``,
``_predictions`` and ``_targets`` whenever the model returns them (on top of any ``log_keys`` given),
so no ``log_keys`` are needed. With the machine-sound transformation head (``model.lambda_transform``) it
also logs the head's plain cross-entropy ``transform_ce`` and ``transform_accuracy``, as the pre-training
criterion does.

The multi-label validation logs carry per-clip tensors; the ``mae_image_classification`` task turns
them into per-rank slots that fairseq's sum over ranks assembles (``predictions_to_slots``), so the
logs can always be summed (fairseq's other path, pickling them through ``all_gather_list``, needs a
GPU and a 16 KB budget per step).
"""

from dataclasses import dataclass, field
from typing import List

from fairseq.criterions import register_criterion
from fairseq.criterions.model_criterion import ModelCriterion, ModelCriterionConfig

from eat_plugin.criterions.pretraining import SEMANTIC_LOG_KEYS, log_semantic_accuracies

CLASSIFICATION_LOG_KEYS = ["correct", "_predictions", "_targets"]


@dataclass
class EATClassificationCriterionConfig(ModelCriterionConfig):
    log_keys: List[str] = field(
        default_factory=lambda: list(CLASSIFICATION_LOG_KEYS),
        metadata={"help": "model outputs logged when present (correct, _predictions, _targets are always logged)"},
    )


@register_criterion("eat_classification", dataclass=EATClassificationCriterionConfig)
class EATClassificationCriterion(ModelCriterion):
    def __init__(self, task, loss_weights=None, log_keys=None, can_sum=True):
        log_keys = list(dict.fromkeys([*(log_keys or []), *CLASSIFICATION_LOG_KEYS, *SEMANTIC_LOG_KEYS]))
        super().__init__(task, loss_weights or {}, log_keys, can_sum)
        self.multi_label = bool(getattr(task, "multi_label", False))

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        log_semantic_accuracies(logging_outputs)

