"""eat-fairseq: EAT (Efficient Audio Transformer) as a fairseq user-dir plugin.

Usable both as an installed package (``import eat_plugin``) and as
``common.user_dir=/path/to/eat_plugin`` with fairseq's ``import_user_module``. fairseq auto-imports
only ``models/`` and ``tasks/`` of a user dir, so this module imports the criterions itself.

Layers (imports only point down; ``tests/test_layers.py`` checks every import):

==================  ====================================================================  ================
layer               what                                                                  may import
==================  ====================================================================  ================
foundation          ``layout`` (16 kHz, 128 mel, 16 x 16 patches), ``masking``,            foundation only
                    ``seeding``, ``semantic_tasks``, ``official_fields``, ``console``,
                    ``losses``, ``metrics``, ``diagnostics``, ``probing``, ``checkpoint*``,
                    ``safetensors_io``, ``training_log``, ``optim`` (the ``adam_fused``
                    optimizer)
``data``            audio I/O, the fbank front end, manifests, datasets, preparers         foundation
``modules``         attention, blocks, encoder, decoder, EMA, batch augmentation           foundation
``models``          the two registered models, their configs, checkpoint keys              + modules
``tasks``,          the registered tasks and criterions                                    + data, models
``criterions``
``api``, ``hf``,    the Python API, HF conversion, recipes, CLI plumbing, ONNX export,     all of the above
``cli``, ...        plots
``scripts/``        command-line tools (outside the package)                               the package
==================  ====================================================================  ================
"""

from eat_plugin.checkpoint import allow_fairseq_checkpoint_classes

allow_fairseq_checkpoint_classes()  # fairseq's own torch.load(weights_only=True) must accept its checkpoints
from eat_plugin.checkpoint_safety import install as _install_checkpoint_safety  # noqa: E402

_install_checkpoint_safety()  # atomic checkpoint writes, a clear error for a truncated one (idempotent)

from eat_plugin import criterions, data, models, optim, tasks  # noqa: E402,F401  (registers with fairseq)
from eat_plugin.api import EATModel, load_model  # noqa: E402,F401

__version__ = "0.1.0"
