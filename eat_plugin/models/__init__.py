"""Registered fairseq models: ``data2vec_multi`` (pre-training) and ``mae_image_classification`` (fine-tuning).

Layer: imports ``modules`` and the foundation (``layout``, ``masking``, ``seeding``, ``losses``,
``official_fields``), never ``data`` or ``tasks``; checkpoint key names live in ``models.keys``, the path from
a stored checkpoint to a network in ``models.stored``.
"""

from eat_plugin.models.data2vec_multi import Data2VecMultiConfig, Data2VecMultiModel  # noqa: F401
from eat_plugin.models.mae_image_classification import (  # noqa: F401
    MaeImageClassificationConfig,
    MaeImageClassificationModel,
    PredictionMode,
)
