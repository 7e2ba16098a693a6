"""``eat_classification`` criterion: fairseq's ``model`` criterion with the fine-tuning logging built in.

The official recipes use ``criterion._name: model`` and list what to log themselves
(``log_keys: [_predictions, _targets]`` for AudioSet, ``[correct]`` for ESC-50 / Speech Commands);
that keeps working with the ``mae_image_classification`` task. This criterion logs ``correct``,
``_predictions`` and ``_targets`` whenever the model returns them (on top of any ``log_keys`` given),
so no ``log_keys`` are needed.

``logging_outputs_can_be_summed()`` is false for a multi-label task: its validation logs carry
per-clip tensors that must be gathered, not summed, across workers (fairseq's trainer asks the
criterion instance, through ``task.logging_outputs_can_be_summed(criterion)``).
"""

from dataclasses import dataclass, field
from typing import List

from fairseq.criterions import register_criterion
from fairseq.criterions.model_criterion import ModelCriterion, ModelCriterionConfig

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
        log_keys = list(dict.fromkeys([*(log_keys or []), *CLASSIFICATION_LOG_KEYS]))
        super().__init__(task, loss_weights or {}, log_keys, can_sum)
        self.multi_label = bool(getattr(task, "multi_label", False))

    def logging_outputs_can_be_summed(self) -> bool:
        """False for multi-label tasks (per-clip tensors in the logs) or with ``can_sum: false``."""
        return self.can_sum and not self.multi_label

