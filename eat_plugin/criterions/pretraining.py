"""``eat_pretraining`` criterion: fairseq's ``model`` criterion plus EAT's logging and collapse check.

The model returns unreduced losses (``IMAGE_regression``, ``cls``, optional ``recon``); this criterion
weights and sums them (``loss_weights``, default 1 each), divides by ``sample_size`` (the number of
masked patches) through fairseq's trainer, logs every term and the variance statistics without the
user listing them, and stops training with a clear error when the teacher targets or the predictions
collapse (std below ``model.min_target_var`` / ``model.min_pred_var`` after ``var_check_after_updates``),
as the official model does.
"""


from dataclasses import dataclass, field
from typing import List

from fairseq.criterions import register_criterion
from fairseq.criterions.model_criterion import ModelCriterion, ModelCriterionConfig

PRETRAINING_LOG_KEYS = ["ema_decay", "target_var", "pred_var", "masked_pct"]


class TrainingCollapseError(RuntimeError):
    """Targets or predictions lost their variance: the representation collapsed."""


@dataclass
class EATPretrainingCriterionConfig(ModelCriterionConfig):
    log_keys: List[str] = field(
        default_factory=lambda: list(PRETRAINING_LOG_KEYS),
        metadata={"help": "model outputs logged besides every loss term"},
    )
    var_check_after_updates: int = field(
        default=5000, metadata={"help": "check target/prediction variance from this update on (official: 5000)"}
    )


@register_criterion("eat_pretraining", dataclass=EATPretrainingCriterionConfig)
class EATPretrainingCriterion(ModelCriterion):
    def __init__(self, task, loss_weights=None, log_keys=None, can_sum=True, var_check_after_updates=5000):
        log_keys = list(dict.fromkeys([*(log_keys or []), *PRETRAINING_LOG_KEYS]))
        super().__init__(task, loss_weights or {}, log_keys, can_sum)
        self.var_check_after_updates = var_check_after_updates

    def forward(self, model, sample, reduce=True):
        loss, sample_size, logging_output = super().forward(model, sample, reduce)
        if model.training and getattr(model, "num_updates", 0) > self.var_check_after_updates:
            check_variances(logging_output, model.cfg.min_target_var, model.cfg.min_pred_var, model.num_updates)
        return loss, sample_size, logging_output


def check_variances(logging_output: dict, min_target_var: float, min_pred_var: float, num_updates: int) -> None:
    """Raise ``TrainingCollapseError`` if a logged std is below its floor (the official check)."""
    for key, floor, field_name in (("target_var", min_target_var, "min_target_var"),
                                   ("pred_var", min_pred_var, "min_pred_var")):
        value = logging_output.get(key)
        if value is not None and value < floor:
            raise TrainingCollapseError(
                f"pre-training collapsed at update {num_updates}: {key}={value:.4g} < model.{field_name}={floor}. "
                f"The {'teacher targets' if key == 'target_var' else 'predictions'} lost their variance; lower the "
                f"learning rate or raise the EMA decay, or set model.{field_name}: 0 to disable this check."
            )
