"""The label spaces of the machine-sound semantic tasks (design note 003), shared by data and models.

``machine_id``: the integer id of a machine (``id_04`` -> 4; DCASE 2021+ sections), class index == id.
``transform``: which of the six waveform transformations a clip got (``data.augment.apply_transform``).
Imports nothing from the plugin.
"""

SEMANTIC_TRANSFORMS = ("identity", "time_reversal", "pitch_shift", "gain", "time_shift", "added_noise")
NUM_TRANSFORMS = len(SEMANTIC_TRANSFORMS)
