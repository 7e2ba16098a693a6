"""Registered fairseq tasks: ``mae_image_pretraining`` and ``mae_image_classification``.

Layer: imports ``data``, ``models``, ``modules`` and the foundation; nothing above (api, hf, cli).
"""

from eat_plugin.tasks.pretraining import (  # noqa: F401
    ImageMaskingConfig,
    MaeImagePretrainingConfig,
    MaeImagePretrainingTask,
)
from eat_plugin.tasks.classification import (  # noqa: F401
    MaeImageClassificationConfig,
    MaeImageClassificationTask,
)
from eat_plugin.tasks.machine_sounds import (  # noqa: F401,E402
    MachineSoundsClassificationConfig, MachineSoundsClassificationTask, MachineSoundsConfig, MachineSoundsTask)
