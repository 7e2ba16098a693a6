"""Registered fairseq models (``data2vec_multi``, ``mae_image_classification``): added by the model issues."""
