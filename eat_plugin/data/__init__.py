"""Data side of EAT: the fbank front end, manifests, datasets and augmentation."""

from eat_plugin.data.fbank import (  # noqa: F401
    NORM_STATS,
    SAMPLE_RATE,
    AudioError,
    FbankFrontEnd,
    NormStats,
    check_target_length,
    read_audio,
)
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
