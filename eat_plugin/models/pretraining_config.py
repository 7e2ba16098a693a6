"""Config of the pre-training model, field for field the official one (reference §2.1-2.4).

Released checkpoints carry these fields in their ``cfg`` and fairseq merges that cfg into the
dataclass when it loads them, so every official field exists here with its official default, even
those for features EAT never uses (ALiBi, shared decoders, ...). ``check_supported`` turns a
non-default value of an unimplemented feature into a clear error at build time.
"""


import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, auto
from typing import Any, Iterator, List, Optional, Tuple

import logging

from fairseq.dataclass import FairseqDataclass
from omegaconf import II, MISSING, DictConfig, OmegaConf

logger = logging.getLogger(__name__)


class Modality(Enum):
    AUDIO = auto()
    IMAGE = auto()  # the official (data2vec) name of the spectrogram modality; kept for checkpoints
    TEXT = auto()


@dataclass
class D2vDecoderConfig:
    decoder_dim: int = 384
    decoder_groups: int = 16
    decoder_kernel: int = 5
    decoder_layers: int = 5
    input_dropout: float = 0.1
    add_positions_masked: bool = False
    add_positions_all: bool = False
    decoder_residual: bool = True
    projection_layers: int = 1
    projection_ratio: float = 2.0


@dataclass
class D2vModalityConfig:
    type: Modality = MISSING
    prenet_depth: int = 4
    prenet_layerdrop: float = 0
    prenet_dropout: float = 0
    start_drop_path_rate: float = 0
    end_drop_path_rate: float = 0
    num_extra_tokens: int = 0
    init_extra_token_zero: bool = True
    mask_noise_std: float = 0.01
    mask_prob_min: Optional[float] = None
    mask_prob: float = 0.7
    inverse_mask: bool = False
    mask_prob_adjust: float = 0
    keep_masked_pct: float = 0
    mask_length: int = 5
    add_masks: bool = False
    remove_masks: bool = False
    mask_dropout: float = 0.0
    encoder_zero_mask: bool = True
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 64
    ema_local_encoder: bool = False
    local_grad_mult: float = 1.0
    use_alibi_encoder: bool = False
    alibi_scale: float = 1.0
    learned_alibi: bool = False
    alibi_max_pos: Optional[int] = None
    learned_alibi_scale: bool = False
    learned_alibi_scale_per_head: bool = False
    learned_alibi_scale_per_layer: bool = False
    num_alibi_heads: int = II("model.num_heads")
    model_depth: int = II("model.depth")
    decoder: Optional[D2vDecoderConfig] = field(default_factory=D2vDecoderConfig)


@dataclass
class D2vImageConfig(D2vModalityConfig):
    type: Modality = Modality.IMAGE
    input_size: int = 224
    in_chans: int = 3
    patch_size: int = 16
    embed_dim: int = 768
    alibi_dims: int = 2
    alibi_distance: str = "manhattan"
    fixed_positions: bool = True
    transformer_decoder: bool = False
    enc_dec_transformer: bool = False
    target_length: int = 1024  # frames of the training input
    max_length: int = 768  # time patches covered by the positions table


@dataclass
class D2vModalitiesConfig(FairseqDataclass):
    image: D2vImageConfig = field(default_factory=D2vImageConfig)


@dataclass
class Data2VecMultiConfig(FairseqDataclass):
    loss_beta: float = field(default=0, metadata={"help": "0: MSE; else smooth L1 with this beta"})
    loss_scale: Optional[float] = field(default=None, metadata={"help": "None: 1/sqrt(embed_dim)"})
    depth: int = 12
    start_drop_path_rate: float = 0
    end_drop_path_rate: float = 0
    num_heads: int = 12
    norm_eps: float = 1e-6
    norm_affine: bool = True
    encoder_dropout: float = 0.1
    post_mlp_drop: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.0
    layerdrop: float = 0.0
    embed_dim: int = 768
    mlp_ratio: float = 4
    layer_norm_first: bool = False
    average_top_k_layers: int = field(default=12, metadata={"help": "teacher blocks averaged into the target"})
    end_of_block_targets: bool = False
    clone_batch: int = field(default=16, metadata={"help": "masked student views per clip"})
    layer_norm_target_layer: bool = False
    batch_norm_target_layer: bool = False
    instance_norm_target_layer: bool = False
    instance_norm_targets: bool = False
    layer_norm_targets: bool = False
    ema_decay: float = 0.999
    ema_same_dtype: bool = True
    log_norms: bool = True
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = II("optimization.max_update")
    ema_encoder_only: bool = True
    max_update: int = II("optimization.max_update")
    modalities: D2vModalitiesConfig = field(default_factory=D2vModalitiesConfig)
    shared_decoder: Optional[D2vDecoderConfig] = None
    min_target_var: float = field(default=0.1, metadata={"help": "stop if the target std drops below this"})
    min_pred_var: float = field(default=0.01, metadata={"help": "stop if the prediction std drops below this"})
    supported_modality: Optional[Modality] = None
    mae_init: bool = False
    seed: int = II("common.seed")
    skip_ema: bool = False
    cls_loss: float = 0
    recon_loss: float = 0
    d2v_loss: float = 1
    decoder_group: bool = False
    # DINO-style utterance loss (an experiment of the official code; off in every EAT recipe)
    utterance_level: bool = False
    init_center_token_zero: bool = False
    center_exp: float = 0.9
    softmax_temperature_student: float = 0.1
    softmax_temperature_teacher: float = 0.05


# (path, value accepted) for features of the official config that this implementation does not have.
# Each entry lists the only value(s) we accept; anything else is refused at build time.
UNSUPPORTED: List[Tuple[str, Tuple[Any, ...], str]] = [
    ("layer_norm_first", (False,), "pre-LN blocks (EAT uses post-LN)"),
    ("ema_encoder_only", (False,), "a teacher over the blocks only (EAT recipes set ema_encoder_only: false)"),
    ("shared_decoder", (None,), "a decoder shared across modalities"),
    ("decoder_group", (False,), "grouped decoders"),
    ("modalities.image.type", (Modality.IMAGE,), "modalities other than the spectrogram ('IMAGE') encoder"),
    ("modalities.image.in_chans", (1,), "multi-channel input: the input is a (B, 1, T, 128) fbank"),
    ("modalities.image.patch_size", (16,), "patch sizes other than 16 (the 16x16 patch grid)"),
    ("modalities.image.fixed_positions", (True,), "learned positions (EAT uses the fixed sin-cos table)"),
    ("modalities.image.transformer_decoder", (False,), "the transformer decoder (EAT uses the CNN decoder)"),
    ("modalities.image.enc_dec_transformer", (False,), "the encoder-decoder transformer"),
    ("modalities.image.use_alibi_encoder", (False,), "ALiBi attention biases"),
    ("modalities.image.learned_alibi", (False,), "learned ALiBi"),
    ("modalities.image.learned_alibi_scale", (False,), "learned ALiBi scales"),
    ("modalities.image.learned_alibi_scale_per_head", (False,), "learned ALiBi scales"),
    ("modalities.image.learned_alibi_scale_per_layer", (False,), "learned ALiBi scales"),
    ("modalities.image.mask_prob_min", (None,), "random mask ratios"),
    ("modalities.image.keep_masked_pct", (0, 0.0), "keeping masked tokens in the encoder"),
    ("modalities.image.add_masks", (False,), "add_masks"),
    ("modalities.image.remove_masks", (False,), "remove_masks"),
    ("modalities.image.mask_dropout", (0, 0.0), "mask dropout"),
    ("modalities.image.mask_channel_prob", (0, 0.0), "channel masking"),
    ("modalities.image.decoder.add_positions_masked", (False,), "re-adding positions in the decoder"),
    ("modalities.image.decoder.add_positions_all", (False,), "re-adding positions in the decoder"),
]


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_supported(cfg: Data2VecMultiConfig) -> None:
    """Raise ``ValueError`` naming every field set to a feature this implementation does not have."""
    problems = []
    for path, accepted, what in UNSUPPORTED:
        value = _get(cfg, path)
        value = Modality[value] if path.endswith(".type") and isinstance(value, str) else value
        if value not in accepted:
            problems.append(f"model.{path}={value!r} ({what}; accepted: {', '.join(map(repr, accepted))})")
    image = cfg.modalities.image
    if image.embed_dim != cfg.embed_dim:
        problems.append(f"model.modalities.image.embed_dim={image.embed_dim} must equal model.embed_dim={cfg.embed_dim}")
    if image.decoder is None:
        problems.append("model.modalities.image.decoder is required for pre-training (the CNN decoder)")
    if problems:
        raise ValueError("unsupported model configuration:\n  " + "\n  ".join(problems))


def iter_field_paths(cfg_cls: type, prefix: str = "") -> Iterator[str]:
    """Every field path of a config dataclass (nested ones as ``a.b.c``), for tests and docs."""
    for f in fields(cfg_cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            yield from iter_field_paths(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"



# keys the official fine-tuning loader adds to a stored pre-training model config
OFFICIAL_OVERRIDE_KEYS = ("drop_path_rate", "mae_masking")


def config_from_dict(values: dict) -> DictConfig:
    """A stored ``data2vec_multi`` model config (a checkpoint's ``cfg.model``) as our typed config.

    Fields this config does not know are dropped (with a warning, except the official loader's own
    additions), so configs written by other versions of the official code still load.
    """
    values = dict(values)
    known = set(Data2VecMultiConfig.__dataclass_fields__)
    for key in sorted(k for k in values if k not in known):
        if key not in OFFICIAL_OVERRIDE_KEYS:
            logger.warning(f"ignoring unknown pre-training model config field {key!r}")
        values.pop(key)
    return OmegaConf.merge(OmegaConf.structured(Data2VecMultiConfig), values)
