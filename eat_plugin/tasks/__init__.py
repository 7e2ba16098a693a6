"""Registered fairseq tasks: ``mae_image_pretraining`` (here) and ``mae_image_classification`` (with the models)."""

from eat_plugin.tasks.pretraining import (  # noqa: F401
    ImageMaskingConfig,
    MaeImagePretrainingConfig,
    MaeImagePretrainingTask,
)
