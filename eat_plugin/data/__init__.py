"""Data side of EAT: the fbank front end, manifests, datasets and augmentation.

Layer: imports the foundation modules only (``layout``, ``masking``, ``seeding``, ``console``, ...), never
``modules`` / ``models`` / ``tasks``, so the data pipeline can be read and tested on its own.
"""

from eat_plugin.data.fbank import NORM_STATS, AudioError, FbankFrontEnd, NormStats, read_audio  # noqa: F401
from eat_plugin.layout import SAMPLE_RATE, check_target_length  # noqa: F401
from eat_plugin.data.manifest import (  # noqa: F401
    Clip,
    LabelDescriptors,
    Manifest,
    ManifestError,
    read_label_descriptors,
    read_labels,
    read_manifest,
    write_label_descriptors,
    write_split,
)
