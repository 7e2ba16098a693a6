"""Config of the pre-training model, field for field the official one (reference §2.1-2.4).

Released checkpoints carry these fields in their ``cfg`` and fairseq merges that cfg into the
dataclass when it loads them, so every official field exists here with its official default, even
those for features EAT never uses (ALiBi, shared decoders, ...). ``check_supported`` turns a
non-default value of an unimplemented feature into a clear error at build time.
"""


import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, auto
from typing import Any, Iterator, Optional, Tuple

import logging

from fairseq.dataclass import FairseqDataclass
from omegaconf import II, MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eat_plugin.official_fields import PRETRAINING, check_refused

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
    # --- eat_plugin addition (not in the official config) ---
    cls_loss_scale: str = field(
        default="local_sample_size",
        metadata={"help": "what the CLS loss is multiplied by: local_sample_size (official: this rank's masked patch "
                          "count, so the term's weight falls as 1 / world size) or global_sample_size (local count x "
                          "world size: the same model on any number of ranks; exact when every rank's batch has "
                          "the same size)"},
    )
    checkpoint_activations: bool = field(
        default=False,
        metadata={"help": "activation checkpointing: keep only each student block's and decoder layer's input and "
                          "recompute the layer in the backward (less memory for one more forward of those layers; "
                          "same losses and gradients)"},
    )
    torch_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile every transformer block (student and teacher) and decoder layer, in place "
                          "(parameter names unchanged; same losses up to float rounding). The first steps compile "
                          "(seconds per layer kind). On a CPU it does not pay (EAT-base, 2 threads: 1-2 % slower); it "
                          "is for GPUs, where it fuses the element-wise work around the matrix products"},
    )
    # machine-sound semantic heads (design note 003; off unless a lambda is > 0)
    num_machine_ids: int = field(
        default=0, metadata={"help": "machine-id head outputs; the machine_sounds task raises it to the largest "
                                     "machine id of the training data + 1"})
    lambda_machine_id: float = field(default=0.0, metadata={"help": "weight of the machine-id cross-entropy"})
    lambda_transform: float = field(default=0.0, metadata={"help": "weight of the transformation cross-entropy"})
    semantic_start_update: int = field(
        default=0, metadata={"help": "the semantic terms are exactly 0 before this update (phase 1: SSL only)"})
    semantic_head_dropout: float = field(default=0.3, metadata={"help": "dropout inside both heads"})
    semantic_label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of both heads' CE"})
    semantic_lr_scale: float = field(
        default=1.0, metadata={"help": "learning rate of the head parameters relative to the rest"})
    transform_head_per_patch: bool = field(
        default=False, metadata={"help": "classify the transformation per patch (label repeated over patches)"})
    semantic_weighting: str = field(
        default="fixed", metadata={"help": "fixed: lambda x CE per head; uncertainty: exp(-s) x CE + s with a learned "
                                           "log-variance s per head (Kendall et al.; lambda > 0 only switches it on)"})
    semantic_focal_gamma: float = field(
        default=0.0, metadata={"help": "> 0: the heads' loss is the focal loss with this gamma (note 002); 0: CE"})


CLS_LOSS_SCALES = ("local_sample_size", "global_sample_size")
SEMANTIC_WEIGHTINGS = ("fixed", "uncertainty")


def check_supported(cfg: Data2VecMultiConfig) -> None:
    """Raise ``ValueError`` naming every refused field (``official_fields``) and every value out of range."""
    check_refused(PRETRAINING, cfg, "model")
    problems = [f"model.{path}={value!r}: expected {expected}" for path, value, expected in _out_of_range(cfg)]
    if problems:
        raise ValueError("invalid model configuration:\n  " + "\n  ".join(problems))


def _out_of_range(cfg: Data2VecMultiConfig) -> Iterator[Tuple[str, Any, str]]:
    """``(field, value, what was expected)`` for each numeric option the model cannot be built with."""
    image = cfg.modalities.image
    if cfg.depth < 1:
        yield "depth", cfg.depth, "at least 1 block"
    if cfg.num_heads < 1 or cfg.embed_dim % cfg.num_heads:
        yield "embed_dim", cfg.embed_dim, f"a multiple of model.num_heads={cfg.num_heads}"
    if cfg.embed_dim % 4:
        yield "embed_dim", cfg.embed_dim, "a multiple of 4 (the 2-D sin-cos position table)"
    if image.embed_dim != cfg.embed_dim:
        yield "modalities.image.embed_dim", image.embed_dim, f"model.embed_dim={cfg.embed_dim}"
    if cfg.cls_loss_scale not in CLS_LOSS_SCALES:
        yield "cls_loss_scale", cfg.cls_loss_scale, f"one of {list(CLS_LOSS_SCALES)}"
    yield from _semantic_out_of_range(cfg)
    if not 1 <= cfg.average_top_k_layers <= cfg.depth:
        yield "average_top_k_layers", cfg.average_top_k_layers, f"between 1 and model.depth={cfg.depth}"
    if cfg.clone_batch < 1:
        yield "clone_batch", cfg.clone_batch, "at least 1 masked view per clip"
    if not 0 < image.mask_prob < 1:
        yield "modalities.image.mask_prob", image.mask_prob, "a fraction strictly between 0 and 1"
    if image.mask_length < 1:
        yield "modalities.image.mask_length", image.mask_length, "a block side of at least 1 patch"
    if image.mask_noise_std < 0:
        yield "modalities.image.mask_noise_std", image.mask_noise_std, "a non-negative std"
    if image.target_length > image.max_length * image.patch_size:
        yield ("modalities.image.target_length", image.target_length,
               f"at most max_length * 16 = {image.max_length * image.patch_size} frames (the positions table)")
    for name in ("encoder_dropout", "post_mlp_drop", "attention_dropout", "activation_dropout", "dropout_input",
                 "layerdrop", "start_drop_path_rate", "end_drop_path_rate"):
        if not 0 <= getattr(cfg, name) < 1:
            yield name, getattr(cfg, name), "a probability in [0, 1)"
    for name in ("ema_decay", "ema_end_decay"):
        if not 0 <= getattr(cfg, name) <= 1:
            yield name, getattr(cfg, name), "a decay in [0, 1]"
    decoder = image.decoder
    if decoder is None:
        yield "modalities.image.decoder", None, "the CNN decoder's config (pre-training needs it)"
        return
    if decoder.decoder_groups < 1 or decoder.decoder_dim % decoder.decoder_groups or cfg.embed_dim % decoder.decoder_groups:
        yield ("modalities.image.decoder.decoder_groups", decoder.decoder_groups,
               f"a divisor of decoder_dim={decoder.decoder_dim} and model.embed_dim={cfg.embed_dim}")
    if decoder.decoder_layers < 1 or decoder.decoder_kernel < 1:
        yield "modalities.image.decoder.decoder_layers", decoder.decoder_layers, "at least 1 layer of kernel >= 1"
    if not 0 <= decoder.input_dropout < 1:
        yield "modalities.image.decoder.input_dropout", decoder.input_dropout, "a probability in [0, 1)"


def _semantic_out_of_range(cfg: Data2VecMultiConfig) -> Iterator[Tuple[str, Any, str]]:
    for name in ("lambda_machine_id", "lambda_transform", "semantic_start_update", "num_machine_ids",
                 "semantic_focal_gamma"):
        if getattr(cfg, name) < 0:
            yield name, getattr(cfg, name), "a non-negative value"
    if cfg.lambda_machine_id > 0 and cfg.num_machine_ids < 1:
        yield ("num_machine_ids", cfg.num_machine_ids,
               "at least 1 with lambda_machine_id > 0 (the machine_sounds task sets it from the data)")
    if not 0 <= cfg.semantic_head_dropout < 1:
        yield "semantic_head_dropout", cfg.semantic_head_dropout, "a probability in [0, 1)"
    if not 0 <= cfg.semantic_label_smoothing < 1:
        yield "semantic_label_smoothing", cfg.semantic_label_smoothing, "a smoothing in [0, 1)"
    if cfg.semantic_weighting not in SEMANTIC_WEIGHTINGS:
        yield "semantic_weighting", cfg.semantic_weighting, f"one of {list(SEMANTIC_WEIGHTINGS)}"
    if not cfg.semantic_lr_scale > 0:
        yield "semantic_lr_scale", cfg.semantic_lr_scale, "a learning-rate scale > 0"


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


def plain_config(cfg: Any) -> Any:
    """The model config as a plain ``Data2VecMultiConfig`` instance, its interpolations (``seed:
    ${common.seed}``, ``max_update: ${optimization.max_update}``, ...) resolved once, at build time.

    The training step reads about 30 fields every update: from a ``DictConfig`` each read costs ~30 us and
    resolving an interpolation through the run's config ~0.3 ms (a tiny CPU update: ~3 ms of 37). A config
    whose interpolations cannot be resolved here (built outside a run) stays as it is.
    """
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Data2VecMultiConfig),
                                                   OmegaConf.to_container(cfg, resolve=True)))
    except OmegaConfBaseException:
        return cfg
