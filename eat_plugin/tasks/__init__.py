"""Registered fairseq tasks (``mae_image_pretraining``, ``mae_image_classification``): added with the models."""
