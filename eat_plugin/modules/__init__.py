"""Network building blocks: attention (SDPA + exact eager path), post-LN blocks, the audio encoder, the CNN
decoder, the EMA teacher and batch augmentation.

Layer: imports the foundation modules only (``layout``, ...), never ``data`` or ``models``.
"""
