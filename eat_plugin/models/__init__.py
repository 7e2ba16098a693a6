"""Registered fairseq models: ``data2vec_multi`` (pre-training); ``mae_image_classification`` arrives next."""

from eat_plugin.models.data2vec_multi import Data2VecMultiConfig, Data2VecMultiModel  # noqa: F401
