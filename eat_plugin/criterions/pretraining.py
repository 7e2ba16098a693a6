"""``eat_pretraining`` criterion: fairseq's ``model`` criterion plus EAT's logging and collapse check.

The model returns unreduced losses (``IMAGE_regression``, ``cls``, optional ``recon``); this criterion
weights and sums them (``loss_weights``, default 1 each), divides by ``sample_size`` (the number of
masked patches) through fairseq's trainer, logs every term and the variance statistics without the
user listing them, and stops training with a clear error when the teacher targets or the predictions
collapse (std below ``model.min_target_var`` / ``model.min_pred_var`` after ``var_check_after_updates``),
as the official model does.

With the machine-sound semantic heads (``machine_sounds`` task) it also logs each head's plain
cross-entropy (``machine_id_ce``, ``transform_ce``) and accuracy (``machine_id_accuracy``,
``transform_accuracy``), ``ssl_loss`` (the SSL terms alone, per masked patch), and ``selected_loss``: the
sum of the terms named in ``selection_losses``, for ``checkpoint.best_checkpoint_metric=selected_loss``
(e.g. the SSL terms only, so that an overfitting head cannot choose the checkpoint).
"""


from dataclasses import dataclass, field
from typing import List

from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.model_criterion import ModelCriterion, ModelCriterionConfig

PRETRAINING_LOG_KEYS = ["ema_decay", "target_var", "pred_var", "masked_pct"]
SEMANTIC_TERMS = ("machine_id", "transform")  # the model's semantic loss terms (not SSL)
SEMANTIC_LOG_KEYS = [f"{term}_{what}" for term in SEMANTIC_TERMS for what in ("ce", "weight")] + [f"_{term}_{n}" for term in SEMANTIC_TERMS
                                                                  for n in ("correct", "count")]


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
    selection_losses: List[str] = field(
        default_factory=list,
        metadata={"help": "loss terms (IMAGE_regression, cls, recon, machine_id, transform) summed into "
                          "selected_loss, for checkpoint.best_checkpoint_metric=selected_loss"},
    )


@register_criterion("eat_pretraining", dataclass=EATPretrainingCriterionConfig)
class EATPretrainingCriterion(ModelCriterion):
    def __init__(self, task, loss_weights=None, log_keys=None, can_sum=True, var_check_after_updates=5000,
                 selection_losses=None):
        log_keys = list(dict.fromkeys([*(log_keys or []), *PRETRAINING_LOG_KEYS, *SEMANTIC_LOG_KEYS]))
        super().__init__(task, loss_weights or {}, log_keys, can_sum)
        self.var_check_after_updates = var_check_after_updates
        self.selection_losses = list(selection_losses or [])

    def forward(self, model, sample, reduce=True):
        loss, sample_size, logging_output = super().forward(model, sample, reduce)
        if model.training and getattr(model, "num_updates", 0) > self.var_check_after_updates:
            check_variances(logging_output, model.cfg.min_target_var, model.cfg.min_pred_var, model.num_updates)
        terms = {k[len("loss_"):]: v for k, v in logging_output.items() if k.startswith("loss_")}
        if any(term in terms for term in SEMANTIC_TERMS):
            logging_output["_ssl_loss"] = sum(v for k, v in terms.items() if k not in SEMANTIC_TERMS)
        if self.selection_losses and not terms:  # a single term (fairseq then logs no loss_*): it is the loss
            logging_output["_selected_loss"] = float(loss)
        elif self.selection_losses:
            missing = [name for name in self.selection_losses if name not in terms]
            if missing:
                raise ValueError(f"criterion.selection_losses names {missing}, which the model does not compute; "
                                 f"its loss terms are {sorted(terms)}")
            logging_output["_selected_loss"] = sum(terms[name] for name in self.selection_losses)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        for key in ("ssl_loss", "selected_loss"):
            if any(f"_{key}" in log for log in logging_outputs) and sample_size > 0:
                metrics.log_scalar(key, sum(log.get(f"_{key}", 0) for log in logging_outputs) / sample_size,
                                   sample_size, round=3)
        log_semantic_accuracies(logging_outputs)


def log_semantic_accuracies(logging_outputs) -> None:
    """``{head}_accuracy`` (percent) of each semantic head from its logged ``_{head}_correct`` / ``_{head}_count``
    (both criteria: pre-training with the heads, fine-tuning with the transformation head)."""
    for term in SEMANTIC_TERMS:
        count = sum(log.get(f"_{term}_count", 0) for log in logging_outputs)
        if count > 0:
            correct = sum(log.get(f"_{term}_correct", 0) for log in logging_outputs)
            metrics.log_scalar(f"{term}_accuracy", 100.0 * float(correct) / float(count), count, round=2)


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
