"""EAT fine-tuning model, registered as ``mae_image_classification`` (the official name).

A pre-trained ``data2vec_multi`` backbone (teacher, decoder and clones removed) + pooling + LayerNorm
+ linear head. The pre-training config is stored in ``pretrained_model_args``, so a fine-tuned
checkpoint rebuilds its backbone without the pre-training file.

Step: mixup -> SpecAugment -> backbone -> pool (CLS / mean / lin-softmax) -> fc_norm -> head -> loss.

Machine sounds (design note 003, phase 2 on a fine-tuned encoder; plugin fields): with
``lambda_transform > 0`` the note's transformation head (``modules.semantic_heads``) classifies which of
the six transformations each clip got, from the mean of its patch tokens (or every patch), and adds
``lambda_transform x CE`` per clip to the classifier's loss; the ``machine_sounds_classification`` task
gives the labels (the machine ids) and the transformation ids. The head starts from the pre-training
checkpoint's transformation head when it has one.

Split-invariant randomness: given the clips' ids (the datasets' ``net_input["id"]``), each clip's
SpecAugment masks and stochastic-depth decisions are drawn from its own stream, keyed by the clip id and
one number drawn from the global RNG per step (fairseq reseeds that RNG from ``common.seed`` + update on
every rank), so they do not depend on which rank or batch the clip is in. Mixup's λ and box come from
the global RNG (the same on every rank); its partners are in the rank's own batch (``mixup_pairs``).
"""

import logging
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import II, MISSING, DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from eat_plugin.layout import NUM_MEL_BINS, check_target_length
from eat_plugin.losses import (CLASS_WEIGHT_KINDS, binary_cross_entropy, binary_focal_loss, cross_entropy, focal_loss,
                               label_vectors, soft_target_cross_entropy)
from eat_plugin.models.data2vec_multi import no_weight_decay, student_encoder
from eat_plugin.models.keys import SEMANTIC_HEADS
from eat_plugin.models.pretraining_config import Data2VecMultiConfig, config_from_dict
from eat_plugin.models.state_check import check_state_matches
from eat_plugin.modules.batch_augment import MIXUP_PAIRS, SPEC_AUGMENT_DRAWS, BatchMixup, spec_augment
from eat_plugin.modules.semantic_heads import SemanticHeads, head_loss
from eat_plugin.seeding import AUGMENT_STREAM, keyed_generator
from eat_plugin.semantic_tasks import NUM_TRANSFORMS

logger = logging.getLogger(__name__)

FINETUNED_KIND = "a fine-tuned (mae_image_classification) checkpoint"


class PredictionMode(Enum):
    MEAN_POOLING = auto()
    CLS_TOKEN = auto()
    LIN_SOFTMAX = auto()


@dataclass
class MaeImageClassificationConfig(FairseqDataclass):
    """Every field of the official config (reference §2.5), official defaults."""

    model_path: str = field(default=MISSING, metadata={"help": "pre-trained data2vec_multi checkpoint"})
    no_pretrained_weights: bool = field(default=False, metadata={"help": "same architecture, random init"})
    linear_classifier: bool = field(default=False, metadata={"help": "freeze the backbone (linear probing)"})
    num_classes: Optional[int] = field(
        default=1000, metadata={"help": "classes of the head; null: the task's class table (label_descriptors.csv)"}
    )
    mixup: float = field(default=0.0, metadata={"help": "mixup Beta alpha (0: off)"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix Beta alpha (0: off)"})
    label_smoothing: float = 0.0
    drop_path_rate: float = field(default=0.1, metadata={"help": "block i gets linspace(0, rate, depth)[i]"})
    layer_decay: float = field(default=0.65, metadata={"help": "block i lr x layer_decay^(depth - i)"})
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.0
    mixup_mode: str = "batch"
    pretrained_model_args: Any = None
    data: str = II("task.data")
    norm_eps: Optional[float] = None
    remove_alibi: bool = False
    encoder_dropout: float = 0
    post_mlp_drop: float = 0
    attention_dropout: float = 0
    activation_dropout: float = 0.0
    dropout_input: float = 0.0
    layerdrop: float = 0.0
    prenet_layerdrop: float = 0
    prenet_dropout: float = 0
    use_fc_norm: bool = True
    prediction_mode: PredictionMode = PredictionMode.CLS_TOKEN
    no_decay_blocks: bool = True
    audio_mae: bool = False
    esc50_eval: bool = False
    spcv2_eval: bool = False
    target_length: int = 1024
    specaug: bool = False
    freqm: int = 25
    timem: int = 200
    mask_ratio: float = field(default=0.0, metadata={"help": "!= 0: freqm = 128 x ratio, timem = T x ratio"})
    # --- eat_plugin additions (not in the official config) ---
    mixup_pairs: str = field(
        default="flip",
        metadata={"help": f"mixup partners: {' | '.join(MIXUP_PAIRS)}. flip (official): row i with row B-1-i; "
                          "adjacent: rows 2k and 2k+1, which makes N ranks x b clips train as 1 x N*b (b even)"},
    )
    focal_gamma: float = field(
        default=0.0, metadata={"help": "> 0: focal loss (multi-class, or the binary form for multi-label data) with "
                                       "this gamma instead of cross-entropy / BCE (note 002); 0: the official loss"})
    focal_alpha: Optional[float] = field(
        default=None, metadata={"help": "focal loss alpha: the positive-class weight of the binary form (0.25 in "
                                        "RetinaNet); a scalar factor of the multi-class form; null: none"})
    class_weights: str = field(
        default="none", metadata={"help": f"single-label: weight each class's loss by its training count: none | "
                                          f"{' | '.join(CLASS_WEIGHT_KINDS)} (the task computes them from the "
                                          f"train split's labels; mean 1 over the classes present)"})
    checkpoint_activations: bool = field(
        default=False,
        metadata={"help": "activation checkpointing of the encoder blocks: keep only each block's input and "
                          "recompute the block in the backward (less memory, one more forward; same gradients)"},
    )
    torch_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile every encoder block, in place (same logits up to float rounding; the first "
                          "steps compile). For GPUs: on a CPU it does not pay"},
    )
    multi_label: Optional[bool] = field(
        default=None,
        metadata={"help": "BCE (true) or cross-entropy (false) loss; null: the official rule (multi-label when "
                          "audio_mae and not esc50_eval / spcv2_eval). The task sets it from task.label_type"},
    )
    # machine-sound transformation head (design note 003; off unless lambda_transform > 0)
    lambda_transform: float = field(
        default=0.0, metadata={"help": "> 0: note 003's transformation head beside the classifier, its CE weighted by "
                                       "this (per clip, against the classifier's loss per clip); needs the "
                                       "machine_sounds_classification task's transformation ids"})
    transform_head_per_patch: bool = field(
        default=False, metadata={"help": "classify the transformation per patch (label repeated over patches)"})
    semantic_head_dropout: float = field(default=0.3, metadata={"help": "dropout inside the transformation head"})
    semantic_label_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing of the transformation head's CE"})
    semantic_lr_scale: float = field(
        default=1.0, metadata={"help": "learning rate of the transformation head relative to the rest"})
    semantic_focal_gamma: float = field(
        default=0.0, metadata={"help": "> 0: the transformation head's loss is the focal loss with this gamma; 0: CE"})


def check_loss_options(cfg: MaeImageClassificationConfig) -> None:
    """The loss-toolbox fields: valid values, and combinations that have one meaning only."""
    problems = []
    if cfg.focal_gamma < 0:
        problems.append(f"model.focal_gamma={cfg.focal_gamma}: expected >= 0 (0: cross-entropy)")
    if cfg.focal_alpha is not None and not 0 < cfg.focal_alpha <= 1:
        problems.append(f"model.focal_alpha={cfg.focal_alpha}: expected in (0, 1] or null")
    if cfg.class_weights not in ("none", *CLASS_WEIGHT_KINDS):
        problems.append(f"model.class_weights={cfg.class_weights!r}: expected none or one of "
                        f"{', '.join(CLASS_WEIGHT_KINDS)}")
    if cfg.focal_gamma > 0 and (cfg.mixup > 0 or cfg.cutmix > 0) and is_single_label(cfg):
        problems.append("model.focal_gamma > 0 with mixup / cutmix: the multi-class focal loss needs one class "
                        "per clip, mixup gives mixed targets; set model.mixup=0 or model.focal_gamma=0")
    if cfg.class_weights != "none" and not is_single_label(cfg):
        problems.append("model.class_weights is for single-label data (multi-label BCE weighs every class anyway)")
    if cfg.lambda_transform < 0:
        problems.append(f"model.lambda_transform={cfg.lambda_transform}: expected >= 0 (0: no transformation head)")
    if cfg.lambda_transform > 0 and (cfg.mixup > 0 or cfg.cutmix > 0):
        problems.append("model.lambda_transform > 0 with mixup / cutmix: a mixed clip has two transformations; set "
                        "model.mixup=0 and model.cutmix=0, or model.lambda_transform=0")
    if not 0 <= cfg.semantic_head_dropout < 1:
        problems.append(f"model.semantic_head_dropout={cfg.semantic_head_dropout}: expected a probability in [0, 1)")
    if not 0 <= cfg.semantic_label_smoothing < 1:
        problems.append(f"model.semantic_label_smoothing={cfg.semantic_label_smoothing}: expected a smoothing in [0, 1)")
    if not cfg.semantic_lr_scale > 0:
        problems.append(f"model.semantic_lr_scale={cfg.semantic_lr_scale}: expected a learning-rate scale > 0")
    if cfg.semantic_focal_gamma < 0:
        problems.append(f"model.semantic_focal_gamma={cfg.semantic_focal_gamma}: expected >= 0 (0: cross-entropy)")
    if problems:
        raise ValueError("invalid loss options:\n  " + "\n  ".join(problems))


@register_model("mae_image_classification", dataclass=MaeImageClassificationConfig)
class MaeImageClassificationModel(BaseFairseqModel):
    def __init__(self, cfg: MaeImageClassificationConfig):
        super().__init__()
        check_target_length(cfg.target_length, "model.target_length")
        if cfg.num_classes is None or cfg.num_classes < 1:
            raise ValueError(
                f"model.num_classes={cfg.num_classes}: expected a positive class count (null is filled in by the "
                f"mae_image_classification task from label_descriptors.csv)"
            )
        self.cfg = cfg
        check_loss_options(cfg)
        args, state = pretrained_args(cfg)
        weights = state["model"] if state is not None and not cfg.no_pretrained_weights else None
        # official attribute name: checkpoint keys are `model.*`
        self.model = student_encoder(backbone_config(cfg, args), weights)
        dim = self.model.cfg.embed_dim
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if cfg.use_fc_norm else None
        self.head = nn.Linear(dim, cfg.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.semantic_heads = self._make_transform_head(dim, weights)
        self.mixup = (BatchMixup(cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob, cfg.mixup_mode,
                                 cfg.mixup_pairs)
                      if cfg.mixup > 0 or cfg.cutmix > 0 else None)
        self.freqm = NUM_MEL_BINS * cfg.mask_ratio if cfg.mask_ratio else cfg.freqm
        self.timem = cfg.target_length * cfg.mask_ratio if cfg.mask_ratio else cfg.timem
        self.prediction_mode = _prediction_mode(cfg.prediction_mode)
        self.single_label = is_single_label(cfg)
        self.register_buffer("class_weight", None, persistent=False)  # (C,) set by the task (class_weights)
        if cfg.linear_classifier:
            self.model.requires_grad_(False)
        self._set_optim_overrides()

    @classmethod
    def build_model(cls, cfg: MaeImageClassificationConfig, task=None) -> "MaeImageClassificationModel":
        return cls(cfg)

    def _make_transform_head(self, dim: int, weights: Optional[Mapping[str, Tensor]]) -> Optional[SemanticHeads]:
        """Note 003's transformation head (``lambda_transform > 0``): the pre-training checkpoint's own
        (``semantic_heads.transform.*``) when it has one of this size, else a fresh one (logged)."""
        if self.cfg.lambda_transform <= 0:
            return None
        heads = SemanticHeads(dim, 0, NUM_TRANSFORMS, self.cfg.semantic_head_dropout)
        prefix = SEMANTIC_HEADS + "transform."
        stored = {k[len(prefix):]: v for k, v in (weights or {}).items() if k.startswith(prefix)}
        fresh = heads.transform.state_dict()
        if stored and {k: tuple(v.shape) for k, v in stored.items()} == {k: tuple(v.shape) for k, v in fresh.items()}:
            heads.transform.load_state_dict(stored)
            logger.info("transformation head: from the pre-training checkpoint's")
        elif stored:
            logger.warning("transformation head: the pre-training checkpoint's has other sizes; starting fresh")
        else:
            logger.info("transformation head: fresh (the pre-training checkpoint has none)")
        return heads

    def _set_optim_overrides(self) -> None:
        """Layer-wise lr decay over the blocks; no weight decay for 1-D / bias / fc_norm / head bias."""
        if self.cfg.layer_decay < 1:
            encoder = next(iter(self.model.modality_encoders.values()))
            blocks = list(encoder.context_encoder.blocks) + list(self.model.blocks)
            scales = layer_scales(len(blocks), self.cfg.layer_decay)  # block i -> decay^(L - i)
            for name, param in self.model.named_parameters():
                param.optim_overrides = {"optimizer": {"weight_decay_scale": 0} if param.ndim == 1 or name.endswith(".bias") else {}}
            for block, scale in zip(blocks, scales):
                if scale == 1.0:
                    continue
                for param in block.parameters():
                    if self.cfg.no_decay_blocks:
                        param.optim_overrides["optimizer"]["lr_scale"] = scale
                    else:  # the official behaviour: the override is replaced, so 1-D params get weight decay
                        param.optim_overrides = {"optimizer": {"lr_scale": scale}}
        for param in [*(self.fc_norm.parameters() if self.fc_norm is not None else []), self.head.bias]:
            param.optim_overrides = no_weight_decay()
        if self.semantic_heads is not None:
            for param in self.semantic_heads.parameters():
                param.optim_overrides = {"optimizer": {
                    "lr_scale": self.cfg.semantic_lr_scale, **({"weight_decay_scale": 0} if param.ndim == 1 else {})}}

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's load, after one clear check that the weights are this model's (kind and size)."""
        if strict:
            self.upgrade_state_dict(state_dict)
            check_state_matches(self, state_dict, FINETUNED_KIND)
        return super().load_state_dict(state_dict, strict, model_cfg, args)

    # ------------------------------------------------------------------ features
    def extract_features(self, source: Tensor, padding_mask: Optional[Tensor] = None, mask: bool = False,
                         remove_extra_tokens: bool = True) -> Dict:
        """The backbone's features (works on fine-tuned models too; see official EAT issue #5)."""
        return self.model.extract_features(source, padding_mask=padding_mask, mask=mask,
                                           remove_extra_tokens=remove_extra_tokens)

    def pooled_features(self, imgs: Tensor, path_draws: Optional[Tensor] = None) -> Tensor:
        """``(B, 1, T, 128)`` -> pooled backbone features ``(B, D)``; ``path_draws`` ``(B, depth, 2)``."""
        return self._pool(self._tokens(imgs, path_draws))

    def _tokens(self, imgs: Tensor, path_draws: Optional[Tensor] = None) -> Tensor:
        """``(B, 1, T, 128)`` -> the backbone's output tokens ``(B, E + N, D)`` (extra tokens first)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.linear_classifier):
            return self.model.extract_features(imgs, mask=False, remove_extra_tokens=False,
                                               path_draws=path_draws)["x"]  # (B, E + N, D)

    def _patches(self, tokens: Tensor) -> Tensor:
        """``(B, E + N, D)`` -> the patch tokens ``(B, N, D)``."""
        return tokens[:, next(iter(self.model.modality_encoders.values())).num_extra_tokens:]  # (B, N, D)

    def _pool(self, tokens: Tensor) -> Tensor:
        """``(B, E + N, D)`` -> ``(B, D)``: the CLS token, or the patches' mean / linear-softmax pooling."""
        if self.prediction_mode == PredictionMode.CLS_TOKEN:
            return tokens[:, 0]  # (B, D)
        patches = self._patches(tokens)  # (B, N, D)
        if self.prediction_mode == PredictionMode.MEAN_POOLING:
            return patches.mean(dim=1)  # (B, D)
        return _linear_softmax_pool(patches)  # (B, D)

    # ------------------------------------------------------------------ step
    def forward(self, imgs: Tensor, label: Optional[Tensor] = None, id: Optional[Tensor] = None,
                transformation_id: Optional[Tensor] = None):
        """Logits ``(B, C)`` without labels; with labels, the loss dict fairseq's criterion reads.

        ``label``: class indices ``(B,)`` or label vectors ``(B, C)`` (the datasets give multi-hot vectors).
        ``id``: the clips' dataset indices ``(B,)`` (the datasets' ``net_input["id"]``): with them the
        per-clip draws are keyed by clip (module docstring); without them they come from the global RNG.
        ``transformation_id``: ``(B,)`` labels of the transformation head (``lambda_transform > 0``).
        """
        labels = label
        spec_draws, path_draws = self._clip_draws(id, imgs) if self.training and id is not None else (None, None)
        if self.training and self.mixup is not None and labels is not None:
            imgs, labels = self.mixup(imgs, label_vectors(labels, self.cfg.num_classes))
        if self.training and self.cfg.specaug:
            imgs = spec_augment(imgs, self.freqm, self.timem, spec_draws)
        tokens = self._tokens(imgs, path_draws)  # (B, E + N, D)
        x = self._pool(tokens)  # (B, D)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        logits = self.head(x)  # (B, C)
        if labels is None:
            return logits
        result = self._loss(torch.nan_to_num(logits), labels)
        if self.semantic_heads is not None:
            self._add_transform_term(result, self._patches(tokens), transformation_id)
        return result

    def _add_transform_term(self, result: Dict[str, Any], patches: Tensor, transformation_id: Optional[Tensor]) -> None:
        """``lambda_transform x`` the transformation head's loss per clip into ``result["losses"]`` (fairseq
        divides the sum by the clip count, as the classifier's), with its CE and accuracy logs.
        ``patches``: ``(B, N, D)``."""
        if transformation_id is None:
            raise ValueError("model.lambda_transform > 0 needs the clips' transformation ids in net_input (the "
                             "machine_sounds_classification task provides them)")
        cfg = self.cfg
        logits = self.semantic_heads.transform_logits(patches, cfg.transform_head_per_patch)  # (B[*N], 6)
        smoothing = cfg.semantic_label_smoothing if self.training else 0.0
        loss, logs = head_loss("transform", logits, transformation_id, smoothing, cfg.semantic_focal_gamma)  # (B[*N],)
        result["losses"]["transform"] = loss.view(patches.size(0), -1).mean(dim=1) * cfg.lambda_transform  # (B,)
        result.update(logs)

    def _clip_draws(self, clip_ids, imgs: Tensor):
        """Per-clip U[0, 1) draws: SpecAugment ``(B, 4)`` and stochastic depth ``(B, depth, 2)``, on the device."""
        step_key = int(torch.randint(0, 2**62, ()))  # global RNG: fairseq reseeds it per update, on every rank
        depth = len(self.model.blocks)
        per_clip = SPEC_AUGMENT_DRAWS + 2 * depth
        draws = torch.stack([torch.rand(per_clip, generator=keyed_generator(step_key, int(clip), AUGMENT_STREAM))
                             for clip in clip_ids])  # (B, 4 + 2 * depth)
        draws = draws.to(imgs.device, non_blocking=True)
        return draws[:, :SPEC_AUGMENT_DRAWS], draws[:, SPEC_AUGMENT_DRAWS:].view(-1, depth, 2)

    def set_class_weights(self, weights: Tensor) -> None:
        """``(C,)`` per-class loss weights (``model.class_weights``; the task computes them from the data)."""
        if weights.shape != (self.cfg.num_classes,):
            raise ValueError(f"class weights of shape {tuple(weights.shape)}; expected ({self.cfg.num_classes},)")
        self.class_weight = weights.float().to(self.head.weight.device)

    def _loss(self, logits: Tensor, labels: Tensor) -> Dict[str, Any]:
        cfg = self.cfg
        if not self.single_label:  # AudioSet: multi-label BCE, normalised by the positive label mass
            labels = label_vectors(labels, cfg.num_classes)
            elementwise = (binary_focal_loss(logits, labels, cfg.focal_gamma, cfg.focal_alpha) if cfg.focal_gamma > 0
                           else binary_cross_entropy(logits, labels))  # (B, C)
            result = {"losses": {"main": elementwise}, "sample_size": labels.sum()}
            if not self.training:
                result["_predictions"] = torch.sigmoid(logits)
                result["_targets"] = labels
            return result
        if self.training and self.mixup is not None and not cfg.spcv2_eval:
            loss = soft_target_cross_entropy(logits, label_vectors(labels, cfg.num_classes))  # (B, C)
        elif self.mixup is not None and cfg.spcv2_eval:
            loss = binary_cross_entropy(logits, label_vectors(labels, cfg.num_classes))  # (B, C)
        elif cfg.focal_gamma > 0:
            alpha = self.class_weight if self.class_weight is not None else cfg.focal_alpha
            loss = focal_loss(logits, _class_indices(labels), cfg.focal_gamma, alpha,
                              cfg.label_smoothing if self.training else 0.0)  # (B,)
        else:
            loss = cross_entropy(logits, labels, cfg.label_smoothing if self.training else 0.0,
                                 weight=self.class_weight if self.training else None)  # (B,)
        result = {"losses": {"regression": loss}, "sample_size": logits.size(0)}
        if not self.training:
            with torch.no_grad():
                truth = labels.argmax(-1) if labels.dim() == 2 else labels
                result["correct"] = (logits.argmax(-1) == truth).sum()
        return result


def _class_indices(labels: Tensor) -> Tensor:
    """``(B,)`` class indices from indices or one-hot vectors ``(B, C)``."""
    return labels.argmax(-1) if labels.dim() == 2 else labels.long()


def is_single_label(cfg: MaeImageClassificationConfig) -> bool:
    """Cross-entropy model? ``multi_label`` when set, else the official rule."""
    if cfg.multi_label is not None:
        return not cfg.multi_label
    return not cfg.audio_mae or cfg.esc50_eval or cfg.spcv2_eval


def layer_scales(num_blocks: int, layer_decay: float):
    """lr scale of block i (0-based): ``layer_decay ** (num_blocks - i)`` (the official indexing)."""
    return [layer_decay ** (num_blocks - i) for i in range(num_blocks)]


def _prediction_mode(value) -> PredictionMode:
    if isinstance(value, PredictionMode):
        return value
    name = str(value).split(".")[-1]
    if name not in PredictionMode.__members__:
        raise ValueError(f"model.prediction_mode={value!r}: expected one of {list(PredictionMode.__members__)}")
    return PredictionMode[name]


def _linear_softmax_pool(x: Tensor) -> Tensor:
    """The official LIN_SOFTMAX pooling over patches (CLS removed): ``(B, N, D)`` -> ``(B, D)``."""
    dtype = x.dtype
    x = torch.nn.functional.logsigmoid(x.float())
    x = torch.logsumexp(x + x, dim=1) - torch.logsumexp(x + 1e-6, dim=1)
    x = x.clamp(max=0)
    x = x - torch.log(-torch.expm1(x))
    return torch.nan_to_num(x, nan=0, posinf=0, neginf=0).to(dtype)


# ---------------------------------------------------------------------------------------------------
# Backbone construction from the pre-training checkpoint / its stored config


def pretrained_args(cfg: MaeImageClassificationConfig):
    """The pre-training run's config and, on first build, its checkpoint state.

    Returns ``(args, state)``: ``state`` is None when the config is already stored in
    ``cfg.pretrained_model_args`` (reloading a fine-tuned checkpoint, no pre-training file needed).
    """
    if cfg.pretrained_model_args is not None:
        return cfg.pretrained_model_args, None
    if _missing(cfg, "model_path"):
        raise ValueError("model.model_path must name the pre-trained checkpoint (or set model.pretrained_model_args)")
    state = checkpoint_utils.load_checkpoint_to_cpu(cfg.model_path, {})
    args = state.get("cfg")
    if args is None:
        raise ValueError(f"{cfg.model_path}: checkpoint has no 'cfg'; expected a fairseq checkpoint of data2vec_multi")
    args = OmegaConf.create(OmegaConf.to_container(args)) if not isinstance(args, DictConfig) else args
    with open_dict(args):
        args.criterion = None
        args.lr_scheduler = None
    with open_dict(cfg):
        cfg.pretrained_model_args = args  # saved with the fine-tuned checkpoint
    return args, state


def _missing(cfg, key: str) -> bool:
    if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, key):
        return True
    return getattr(cfg, key, None) in (None, "", MISSING)


def backbone_config(cfg: MaeImageClassificationConfig, args) -> Data2VecMultiConfig:
    """The pre-training model config with the fine-tuning overrides (reference §4.1 step 3)."""
    model_args = OmegaConf.to_container(args.model if "model" in args else args, resolve=True)
    name = model_args.get("_name", "data2vec_multi")
    if name != "data2vec_multi":
        raise ValueError(f"{cfg.model_path}: the pre-trained model is {name!r}; expected 'data2vec_multi'")
    drop_path = np.linspace(0, cfg.drop_path_rate, model_args.get("depth", 12))
    image = model_args.setdefault("modalities", {}).setdefault("image", {})
    model_args.update(
        start_drop_path_rate=float(drop_path[0]), end_drop_path_rate=float(drop_path[-1]),
        encoder_dropout=cfg.encoder_dropout, post_mlp_drop=cfg.post_mlp_drop,
        attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        dropout_input=cfg.dropout_input, layerdrop=cfg.layerdrop, checkpoint_activations=cfg.checkpoint_activations,
        torch_compile=cfg.torch_compile,
    )
    if cfg.norm_eps is not None:
        model_args["norm_eps"] = cfg.norm_eps
    image.update(start_drop_path_rate=float(drop_path[0]), end_drop_path_rate=float(drop_path[-1]),
                 prenet_layerdrop=cfg.prenet_layerdrop, prenet_dropout=cfg.prenet_dropout,
                 target_length=cfg.target_length)
    if cfg.remove_alibi:
        image["use_alibi_encoder"] = False
    return config_from_dict(model_args)


def classifier_config(model_cfg: Mapping[str, Any]) -> MaeImageClassificationConfig:
    """A stored ``mae_image_classification`` model cfg as the typed config; keys this version does not
    declare are dropped (as fairseq does when it builds a model)."""
    known = set(MaeImageClassificationConfig.__dataclass_fields__)
    values = {k: v for k, v in model_cfg.items() if k in known}
    values.setdefault("data", "")
    return OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig), values)
