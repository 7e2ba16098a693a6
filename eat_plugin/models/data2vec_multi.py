"""EAT pre-training model, registered as ``data2vec_multi`` (the official name; checkpoints refer to it).

One training step (``forward``):
    patches  = embed(source)                       (B, N, D)   patch conv + fixed positions
    masks    = inverse block masks                 (R, N)      R = B * clone_batch
    student  = encode(visible patches of each row) (R, E + N_keep, D)   only visible tokens
    pred     = CNN decoder(student + noise tokens) (R, N, D)
    targets  = EMA teacher on the full clip, once (B, N, D)   averaged, normalised FFN outputs
    losses   = regression at masked patches + CLS vs utterance target (+ optional recon / DINO)

Parameter paths are the official ones (reference §9.1), so checkpoints load in either implementation.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from torch import Tensor, nn

from eat_plugin.layout import FREQ_PATCHES, check_target_length
from eat_plugin.losses import (UncertaintyWeighting, compute_var, dino_loss, normalized_pixels, regression_loss,
                               teacher_targets)
from eat_plugin.models.keys import MODALITY, SEMANTIC_HEADS, upgrade_legacy_keys
from eat_plugin.models.pretraining_config import Data2VecMultiConfig, Modality, check_supported, plain_config
from eat_plugin.models.state_check import check_state_matches, checkpoint_kind
from eat_plugin.modules.block import PostLNBlock, run_layer
from eat_plugin.modules.decoder import CNNDecoder
from eat_plugin.modules.ema import EMATeacher, annealed_decay
from eat_plugin.modules.encoder import AudioEncoder
from eat_plugin.modules.semantic_heads import SemanticHeads, head_loss
from eat_plugin.masking import MaskInfo, compute_block_mask_2d, make_mask_info, num_visible_patches
from eat_plugin.seeding import NOISE_STREAM, keyed_generator
from eat_plugin.semantic_tasks import NUM_TRANSFORMS

logger = logging.getLogger(__name__)

PRETRAINING_KIND = "a pre-training (data2vec_multi) checkpoint"


def no_weight_decay() -> dict:
    """A fresh fairseq composite-optimizer override: no weight decay for this parameter."""
    return {"optimizer": {"weight_decay_scale": 0}}


def make_block(cfg: Data2VecMultiConfig, drop_path: float) -> PostLNBlock:
    return PostLNBlock(
        cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, drop=cfg.encoder_dropout, attn_drop=cfg.attention_dropout,
        mlp_drop=cfg.activation_dropout, post_mlp_drop=cfg.post_mlp_drop, drop_path=drop_path,
        norm_eps=cfg.norm_eps, norm_affine=cfg.norm_affine, ffn_targets=not cfg.end_of_block_targets,
    )


def build_audio_encoder(cfg: Data2VecMultiConfig) -> AudioEncoder:
    image = cfg.modalities.image
    prenet_dpr = np.linspace(image.start_drop_path_rate, image.end_drop_path_rate, image.prenet_depth)
    decoder = CNNDecoder(
        cfg.embed_dim, image.decoder.decoder_dim, image.decoder.decoder_groups, image.decoder.decoder_kernel,
        image.decoder.decoder_layers, image.target_length // image.patch_size, FREQ_PATCHES,
        residual=image.decoder.decoder_residual, checkpoint=cfg.checkpoint_activations,
    )
    return AudioEncoder(
        cfg.embed_dim, image.target_length, image.max_length, image.patch_size, image.num_extra_tokens,
        image.init_extra_token_zero, [make_block(cfg, float(p)) for p in prenet_dpr], cfg.norm_eps,
        cfg.norm_affine, image.prenet_dropout, image.prenet_layerdrop, image.local_grad_mult, decoder,
    )


def run_blocks(blocks: nn.ModuleList, x: Tensor, layerdrop: float, training: bool,
               path_draws: Optional[Tensor] = None, checkpoint: bool = False) -> Tuple[Tensor, List[Tensor]]:
    """Transformer blocks over ``(R, T, D)``; returns the output and each block's target ``(R, T, D)``.

    ``path_draws``: optional ``(R, L, 2)`` U[0, 1) stochastic-depth draws, block i reads ``[:, i]``.
    ``checkpoint``: keep only each block's input and recompute the block in the backward (when training
    with gradients; the recomputation replays the same dropout / drop-path draws).
    """
    layer_results = []
    for i, block in enumerate(blocks):
        if not training or layerdrop == 0 or float(torch.rand(())) > layerdrop:
            draws = None if path_draws is None else path_draws[:, i]  # (R, 2)
            x, target = run_layer(block, x, checkpoint and training, path_draws=draws)
            layer_results.append(target)
    return x, layer_results


class TeacherEncoder(nn.Module):
    """The EMA teacher's network: the student's encoder without the decoder, same parameter names."""

    def __init__(self, encoder: AudioEncoder, blocks: nn.ModuleList):
        super().__init__()
        self.modality_encoders = nn.ModuleDict({MODALITY: encoder})
        self.blocks = blocks

    def forward(self, source: Tensor) -> List[Tensor]:
        """``(B, 1, T, 128)`` -> per-block targets ``(B, E + N, D)``."""
        x = self.modality_encoders[MODALITY].contextualize(self.modality_encoders[MODALITY].embed(source))
        return run_blocks(self.blocks, x, 0.0, False)[1]


@register_model("data2vec_multi", dataclass=Data2VecMultiConfig)
class Data2VecMultiModel(BaseFairseqModel):
    """EAT student (+ EMA teacher). See the module docstring for the step."""

    def __init__(self, cfg: Data2VecMultiConfig, skip_ema: bool = False):
        super().__init__()
        check_supported(cfg)
        check_target_length(cfg.modalities.image.target_length, "model.modalities.image.target_length")
        self.cfg = cfg = plain_config(cfg)  # read every step: plain attributes, interpolations resolved once
        self.clone_batch = cfg.clone_batch
        self.num_updates = 0
        self.modality_encoders = nn.ModuleDict({MODALITY: build_audio_encoder(cfg)})
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        # official: F.dropout on the student output before the mask tokens go in; the CLS loss sees it too
        self.decoder_input_dropout = nn.Dropout(cfg.modalities.image.decoder.input_dropout)
        drop_path = np.linspace(cfg.start_drop_path_rate, cfg.end_drop_path_rate, cfg.depth)
        self.blocks = nn.ModuleList([make_block(cfg, float(p)) for p in drop_path])
        patch_pixels = cfg.modalities.image.patch_size**2  # official: Linear(D, D // 3) = 256 for D = 768
        self.recon_proj = nn.Linear(cfg.embed_dim, patch_pixels) if cfg.recon_loss > 0 else None
        self.cls_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim) if cfg.utterance_level else None
        self.center = self._make_center() if cfg.utterance_level else None
        self.semantic_heads = self._make_semantic_heads()
        self._init_weights()
        self.teacher: Optional[EMATeacher] = None
        if not (cfg.skip_ema or skip_ema):
            self.teacher = EMATeacher(self._teacher_network(), cfg.ema_decay, log_norms=cfg.log_norms)
        if cfg.torch_compile:
            self._compile_layers()

    @classmethod
    def build_model(cls, cfg: Data2VecMultiConfig, task=None) -> "Data2VecMultiModel":
        return cls(cfg)

    # ------------------------------------------------------------------ construction
    def _make_center(self) -> nn.Parameter:
        center = torch.zeros(1, self.cfg.embed_dim)
        if not self.cfg.init_center_token_zero:
            nn.init.trunc_normal_(center, std=0.02)
        return nn.Parameter(center, requires_grad=False)

    def _make_semantic_heads(self) -> Optional[SemanticHeads]:
        """Note 003's machine-id / transform heads, when their lambda is > 0 (plugin fields)."""
        cfg = self.cfg
        if cfg.lambda_machine_id <= 0 and cfg.lambda_transform <= 0:
            return None
        heads = SemanticHeads(cfg.embed_dim, cfg.num_machine_ids if cfg.lambda_machine_id > 0 else 0,
                              NUM_TRANSFORMS if cfg.lambda_transform > 0 else 0, cfg.semantic_head_dropout)
        if cfg.semantic_weighting == "uncertainty":  # one learned log-variance per head, trained with the heads
            heads.weighting = UncertaintyWeighting([name for name in ("machine_id", "transform")
                                                    if getattr(heads, name) is not None])
        return heads

    def _init_weights(self) -> None:
        if self.cfg.mae_init:
            self.apply(_mae_init)
        else:
            self.apply(init_bert_params)  # Linear ~ N(0, 0.02), bias 0; convs keep their init
        for encoder in self.modality_encoders.values():
            encoder.reset_parameters()  # the decoder's output projection back to PyTorch's default
        for name, param in self.named_parameters():
            if param.ndim == 1 or name.endswith(".bias") or "alibi_scale" in name:
                param.optim_overrides = no_weight_decay()  # read by fairseq's composite optimizer
        if self.semantic_heads is not None and self.cfg.semantic_lr_scale != 1.0:
            for param in self.semantic_heads.parameters():
                overrides = getattr(param, "optim_overrides", {"optimizer": {}})
                overrides["optimizer"]["lr_scale"] = self.cfg.semantic_lr_scale
                param.optim_overrides = overrides

    def _compile_layers(self) -> None:
        """``torch.compile`` in place (``nn.Module.compile``: parameter names, ``.to()`` and the EMA's in-place
        updates unchanged) of each student and teacher block and each decoder layer; one graph per layer kind
        and mode, shared by the layers of that kind (their parameters are graph inputs)."""
        decoder = self.modality_encoders[MODALITY].decoder
        layers = [*self.blocks, *(decoder.blocks if decoder is not None else [])]
        if self.teacher is not None:
            layers += list(self.teacher.model.blocks)
        for layer in layers:
            layer.compile()

    def _teacher_network(self) -> TeacherEncoder:
        encoder = copy.deepcopy(self.modality_encoders[MODALITY])
        encoder.decoder = None
        return TeacherEncoder(encoder, copy.deepcopy(self.blocks))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.teacher is not None:  # the teacher follows .to() / .cuda() / .half(); masters stay fp32
            self.teacher.apply(fn)
        return self

    # ------------------------------------------------------------------ state dict: teacher under `_ema`
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self.teacher is not None:
            state[prefix + "_ema"] = self.teacher.fp32_params
        return state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "_ema"
        if self.teacher is not None:
            if key in state_dict:
                self.teacher.restore(state_dict.pop(key))
            else:
                missing_keys.append(key)
        else:
            state_dict.pop(key, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's load, after one clear check that the weights are this model's (kind and size)."""
        if strict:
            self.upgrade_state_dict(state_dict)
            self._add_fresh_semantic_heads(state_dict)
            check_state_matches(self, state_dict, PRETRAINING_KIND)
        return super().load_state_dict(state_dict, strict, model_cfg, args)

    def _add_fresh_semantic_heads(self, state_dict: Dict[str, Tensor]) -> None:
        """A pre-training checkpoint without any ``semantic_heads.*`` (plain EAT, e.g. a released one) into a
        model with heads: the heads keep their initialisation (logged). Anything else loads strictly."""
        if self.semantic_heads is None or any(key.startswith(SEMANTIC_HEADS) for key in state_dict):
            return
        if checkpoint_kind(state_dict) != PRETRAINING_KIND:
            return  # check_state_matches names what it is
        for key, tensor in self.semantic_heads.state_dict(prefix=SEMANTIC_HEADS).items():
            state_dict[key] = tensor.detach().clone()
        logger.info("the checkpoint has no semantic heads: they start from their initialisation")

    def upgrade_state_dict_named(self, state_dict, name):
        upgrade_legacy_keys(state_dict, f"{name}." if name else "")
        super().upgrade_state_dict_named(state_dict, name)

    # ------------------------------------------------------------------ EMA schedule
    def set_num_updates(self, num_updates: int) -> None:
        """fairseq calls this at the START of each train step with the updates done so far; the teacher
        then folds in the student of that update (decay annealed linearly, reference §3.9)."""
        super().set_num_updates(num_updates)
        if num_updates < self.num_updates - 1:
            # The trainer counts from a smaller number than the checkpoint it loaded: a run started from a
            # checkpoint with checkpoint.reset_optimizer / reset_lr_scheduler (e.g. continuing a released
            # model). The schedules (EMA decay, semantic_start_update) follow the trainer's count; the
            # official guard would freeze the teacher until the old count came round again.
            logger.info("update counter reset from %d to %d: the EMA schedule restarts", self.num_updates,
                        num_updates)
            self.num_updates = num_updates
            return
        if self.num_updates == 0 and num_updates > 1:
            # Loading / resuming. A checkpoint saved after update n holds a teacher that has folded in the
            # student up to update n-1 (the step for n happens at the start of the next train step). The
            # official guard sets n here and so loses that step; recording n-1 leaves it to the first train
            # step, which makes a resumed run identical to an unbroken one.
            self.num_updates = num_updates - 1
            return
        if self.teacher is not None and self.training and num_updates > self.num_updates:
            cfg = self.cfg
            if cfg.ema_decay != cfg.ema_end_decay:
                self.teacher.decay = annealed_decay(num_updates, cfg.ema_decay, cfg.ema_end_decay,
                                                    cfg.ema_anneal_end_step)
            if self.teacher.decay < 1:
                self.teacher.step(self)
        self.num_updates = max(self.num_updates, num_updates)

    # ------------------------------------------------------------------ features
    def extract_features(self, source: Tensor, mode=None, padding_mask: Optional[Tensor] = None, mask: bool = False,
                         remove_extra_tokens: bool = True, precomputed_mask: Optional[Tensor] = None,
                         path_draws: Optional[Tensor] = None) -> Dict:
        """Student features: ``{"x": (B, [E+]N, D), "padding_mask", "layer_results": [(B, E+N, D)], "mask"}``.

        ``path_draws``: optional ``(B, depth, 2)`` U[0, 1) stochastic-depth draws (training only; the
        fine-tuning model draws them per clip); without them drop path uses the global RNG.
        """
        return self.forward(source, mode=mode, padding_mask=padding_mask, mask=mask, features_only=True,
                            remove_extra_tokens=remove_extra_tokens, precomputed_mask=precomputed_mask,
                            path_draws=path_draws)

    def _features(self, source: Tensor, mask: bool, remove_extra_tokens: bool,
                  precomputed_mask: Optional[Tensor], force_remove_masked: bool,
                  path_draws: Optional[Tensor] = None) -> Dict:
        encoder = self.modality_encoders[MODALITY]
        patches = encoder.embed(source)  # (B, N, D)
        info = self._mask_info(precomputed_mask, source.size(0), patches.size(1), source.device) if mask else None
        if info is not None and force_remove_masked:
            patches = patches.gather(1, info.ids_keep.unsqueeze(-1).expand(-1, -1, patches.size(-1)))  # (B, N_keep, D)
        elif info is not None and self.cfg.modalities.image.encoder_zero_mask:
            patches = patches * (~info.mask).unsqueeze(-1).to(patches.dtype)  # masked tokens zeroed
        x = self.dropout_input(encoder.contextualize(patches))  # (B, E + N', D)
        x, layer_results = run_blocks(self.blocks, x, self.cfg.layerdrop, self.training, path_draws,
                                      self.cfg.checkpoint_activations)
        if remove_extra_tokens:
            x = x[:, encoder.num_extra_tokens:]  # (B, N', D)
        return {"x": x, "padding_mask": None, "layer_results": layer_results, "mask": info}

    # ------------------------------------------------------------------ training step
    def forward(self, source: Tensor, target=None, id=None, mode=None, padding_mask: Optional[Tensor] = None,
                mask: bool = True, features_only: bool = False, force_remove_masked: bool = False,
                remove_extra_tokens: bool = True, precomputed_mask: Optional[Tensor] = None,
                path_draws: Optional[Tensor] = None, machine_id: Optional[Tensor] = None,
                transformation_id: Optional[Tensor] = None) -> Dict:
        """Pre-training losses for a batch ``source`` ``(B, 1, T, 128)`` (or features, see ``extract_features``).

        ``precomputed_mask``: ``(B * clone_batch, N)``, 1 = masked, row ``b * clone_batch + c`` = clone c
        of clip b (the dataset's masks); computed here when absent.
        ``id``: the clips' dataset indices (the datasets' ``net_input["id"]``). With them the mask-token
        noise of each clip is drawn from ``(seed, update, id)`` alone, so it does not depend on how a batch
        is split over ranks; without them it comes from the global RNG (the official behaviour).
        ``machine_id`` / ``transformation_id``: ``(B,)`` labels of the semantic heads (``MachineSoundDataset``).
        """
        _check_mode_and_padding(mode, padding_mask)
        if features_only:
            return self._features(source, mask, remove_extra_tokens, precomputed_mask, force_remove_masked, path_draws)
        if self.teacher is None:
            raise RuntimeError("this model has no EMA teacher (skip_ema, or remove_pretraining_modules was called); "
                               "use extract_features() for features")
        encoder = self.modality_encoders[MODALITY]
        batch, rows = source.size(0), source.size(0) * self.clone_batch
        patches = encoder.embed(source)  # (B, N, D)
        info = self._mask_info(precomputed_mask, rows, patches.size(1), source.device)
        clip_of_row = torch.arange(batch, device=source.device).repeat_interleave(self.clone_batch)  # (R,)
        student = self.decoder_input_dropout(self._encode_visible(patches, info, clip_of_row))  # (R, E + N_keep, D)
        pred = self._decode(student, info, id)  # (R, N, D)
        targets = self._teacher_targets(source)  # (B, N, D)
        result = self._losses(source, student, pred, targets, info, clip_of_row)
        if self.semantic_heads is not None:
            self._add_semantic_terms(result, student[:, encoder.num_extra_tokens:], machine_id, transformation_id)
        return result

    def _mask_info(self, precomputed_mask: Optional[Tensor], rows: int, num_patches: int, device) -> MaskInfo:
        image = self.cfg.modalities.image
        if precomputed_mask is None:
            grid = (num_patches // FREQ_PATCHES, FREQ_PATCHES)  # (time, frequency) patches
            precomputed_mask = compute_block_mask_2d((rows, num_patches), image.mask_prob, image.mask_length,
                                                     image.mask_prob_adjust, image.inverse_mask, True, grid)
        elif tuple(precomputed_mask.shape) != (rows, num_patches):
            raise ValueError(f"precomputed_mask must be (batch * clone_batch, patches) = ({rows}, {num_patches}), "
                             f"got {tuple(precomputed_mask.shape)}")
        visible = num_visible_patches(num_patches, image.mask_prob, image.inverse_mask)
        return make_mask_info(precomputed_mask.to(device, non_blocking=True), visible)

    def _encode_visible(self, patches: Tensor, info: MaskInfo, clip_of_row: Tensor) -> Tensor:
        """Gather each row's visible patches straight from its clip (no clone copies), then encode."""
        visible = patches[clip_of_row.unsqueeze(1), info.ids_keep]  # (R, N_keep, D)
        x = self.dropout_input(self.modality_encoders[MODALITY].contextualize(visible))  # (R, E + N_keep, D)
        return run_blocks(self.blocks, x, self.cfg.layerdrop, self.training,
                          checkpoint=self.cfg.checkpoint_activations)[0]  # (R, E + N_keep, D)

    def _decode(self, student: Tensor, info: MaskInfo, clip_ids: Optional[Sequence[int]]) -> Tensor:
        """Visible outputs back in place, N(0, mask_noise_std) noise at masked patches, then the CNN decoder."""
        encoder = self.modality_encoders[MODALITY]
        visible = student[:, encoder.num_extra_tokens:]  # (R, N_keep, D)
        rows = visible.size(0)
        full = self._mask_token_noise(visible, rows, info.num_patches, clip_ids)  # (R, N, D)
        row_index = torch.arange(rows, device=visible.device).unsqueeze(1)  # (R, 1)
        full = full.index_put((row_index, info.ids_keep), visible)  # (R, N, D)
        return encoder.decoder(full)  # (R, N, D)

    def _mask_token_noise(self, like: Tensor, rows: int, num_patches: int,
                          clip_ids: Optional[Sequence[int]]) -> Tensor:
        """``(R, N, D)`` N(0, mask_noise_std) noise; clip b's clones from its own ``(seed, update, id)`` stream."""
        std = self.cfg.modalities.image.mask_noise_std
        if std <= 0:
            return like.new_zeros(rows, num_patches, like.size(-1))  # (R, N, D)
        full = like.new_empty(rows, num_patches, like.size(-1))  # (R, N, D): every element is drawn below
        if clip_ids is None:
            return full.normal_(0, std)
        clones = full.view(len(clip_ids), self.clone_batch, num_patches, -1)  # (B, clones, N, D)
        for clip, noise in zip(clip_ids, clones):
            stream = keyed_generator(self.cfg.seed, self.num_updates, clip, NOISE_STREAM, device=like.device)
            noise.normal_(0, std, generator=stream)
        return full

    @torch.no_grad()
    def _teacher_targets(self, source: Tensor) -> Tensor:
        """EMA teacher on the unmasked clip (once per clip, not per clone) -> targets ``(B, N, D)`` fp32."""
        extra = self.modality_encoders[MODALITY].num_extra_tokens
        layer_results = self.teacher.model(source)  # per block (B, E + N, D)
        cfg = self.cfg
        return teacher_targets(
            [y[:, extra:] for y in layer_results], cfg.average_top_k_layers, cfg.instance_norm_target_layer,
            cfg.batch_norm_target_layer, cfg.layer_norm_target_layer, cfg.layer_norm_targets,
            cfg.instance_norm_targets,
        )

    def _losses(self, source: Tensor, student: Tensor, pred: Tensor, targets: Tensor, info: MaskInfo,
                clip_of_row: Tensor) -> Dict:
        cfg = self.cfg
        clip_index = clip_of_row.unsqueeze(1)  # (R, 1)
        pred_masked, target_masked = self._gather_masked(pred, targets, info, clip_of_row)  # (M, D) each
        sample_size = pred_masked.size(0)
        losses: Dict[str, Tensor] = {}
        if cfg.cls_loss > 0:
            losses["cls"] = self._utterance_loss(student, targets) * (cfg.cls_loss * self._cls_scale(sample_size))
        if cfg.recon_loss > 0:
            pixels = normalized_pixels(self.modality_encoders[MODALITY].patchify(source))  # (B, N, P)
            recon = self.recon_proj(pred_masked)  # (M, P)
            losses["recon"] = regression_loss(recon, pixels[clip_index, info.ids_masked], cfg.loss_beta,
                                              cfg.loss_scale) * cfg.recon_loss  # (M, P)
        if cfg.d2v_loss > 0:
            losses[f"{MODALITY}_regression"] = regression_loss(pred_masked, target_masked, cfg.loss_beta,
                                                               cfg.loss_scale) * cfg.d2v_loss  # (M, D)
        with torch.no_grad():
            return {
                "losses": losses,
                "sample_size": sample_size,
                "masked_pct": 1 - info.num_visible / info.num_patches,
                "pred_var": compute_var(pred_masked.float()),
                "target_var": compute_var(target_masked),
                "ema_decay": self.teacher.decay * 1000,
                **self.teacher.logs,  # model_norm / ema_norm after the first EMA step (log_norms)
            }

    def _add_semantic_terms(self, result: Dict, visible: Tensor, machine_id: Optional[Tensor],
                            transformation_id: Optional[Tensor]) -> None:
        """Note 003's terms into ``result``: ``lambda * mean CE``, scaled like the CLS loss (so after fairseq's
        division by the sample size they weigh ``lambda`` against the mean SSL loss); exactly 0 before
        ``semantic_start_update``. ``visible``: ``(R, N_keep, D)`` student patch latents."""
        cfg, heads = self.cfg, self.semantic_heads
        scale = self._cls_scale(result["sample_size"]) * float(self.num_updates >= cfg.semantic_start_update)
        patches = visible.reshape(visible.size(0) // self.clone_batch, -1, visible.size(-1))  # (B, clones * N_keep, D)
        for name, head, labels, weight in (("machine_id", heads.machine_id, machine_id, cfg.lambda_machine_id),
                                           ("transform", heads.transform, transformation_id, cfg.lambda_transform)):
            if head is None:
                continue
            if labels is None:
                raise ValueError(f"model.lambda_{name} > 0 needs the clips' {name} labels in net_input (the "
                                 f"machine_sounds task provides them)")
            if name == "machine_id":
                logits = heads.machine_logits(patches)  # (B, K)
            else:
                logits = heads.transform_logits(patches, cfg.transform_head_per_patch)  # (B[*N], 6)
            smoothing = cfg.semantic_label_smoothing if self.training else 0.0
            loss, logs = head_loss(name, logits, labels, smoothing, cfg.semantic_focal_gamma)  # (B[*N],)
            result.update(logs)
            weighting = getattr(heads, "weighting", None)
            if weighting is None:
                result["losses"][name] = loss.mean() * (weight * scale)
            else:  # exp(-s) L + s, scaled like every term (so that fairseq's division leaves it per clip)
                log_var = weighting.log_vars[weighting.names.index(name)]
                result["losses"][name] = (torch.exp(-log_var) * loss.mean() + log_var) * scale
                result[f"{name}_weight"] = torch.exp(-log_var).detach()

    def _cls_scale(self, sample_size: int) -> int:
        """The CLS loss multiplier: the local masked-patch count (official), or it times the world size."""
        if self.cfg.cls_loss_scale == "global_sample_size" and dist.is_available() and dist.is_initialized():
            return sample_size * dist.get_world_size()
        return sample_size

    def _gather_masked(self, pred: Tensor, targets: Tensor, info: MaskInfo, clip_of_row: Tensor) -> Tuple[Tensor, Tensor]:
        """Predictions and targets at the masked patches, in the official boolean-mask order (row, patch).

        Targets are gathered from their clip directly: no ``(R, N, D)`` copy per clone.
        """
        dim = pred.size(-1)
        row_index = torch.arange(pred.size(0), device=pred.device).unsqueeze(1)  # (R, 1)
        pred_masked = pred[row_index, info.ids_masked].reshape(-1, dim)  # (M, D)
        target_masked = targets[clip_of_row.unsqueeze(1), info.ids_masked].reshape(-1, dim)  # (M, D)
        return pred_masked, target_masked

    def _utterance_loss(self, student: Tensor, targets: Tensor) -> Tensor:
        """Student CLS vs the clip's mean target: ``(R, D)`` regression, or the DINO scalar."""
        extra = self.modality_encoders[MODALITY].num_extra_tokens
        if extra == 0:
            raise ValueError("cls_loss > 0 needs an extra (CLS) token: set model.modalities.image.num_extra_tokens: 1")
        cls_pred = student[:, extra - 1]  # (R, D)
        cls_target = targets.mean(dim=1).repeat_interleave(self.clone_batch, 0)  # (R, D)
        if not self.cfg.utterance_level:
            return regression_loss(cls_pred, cls_target, self.cfg.loss_beta, self.cfg.loss_scale)  # (R, D)
        loss = dino_loss(self.cls_proj(cls_pred), cls_target, self.center, self.cfg.softmax_temperature_student,
                         self.cfg.softmax_temperature_teacher)
        with torch.no_grad():  # centre EMA
            self.center.mul_(self.cfg.center_exp).add_(cls_target.mean(0, keepdim=True), alpha=1 - self.cfg.center_exp)
        return loss

    # ------------------------------------------------------------------ fine-tuning
    def remove_pretraining_modules(self, modality=None, keep_decoder: bool = False,
                                   keep_semantic_heads: bool = False) -> None:
        """Drop the teacher, the decoder (unless ``keep_decoder``), the extra heads (the semantic heads unless
        ``keep_semantic_heads``: anomaly scoring reads the machine-id head); one view per clip."""
        self.teacher = None
        if not keep_semantic_heads:
            self.semantic_heads = None
        self.clone_batch = 1
        self.recon_proj = None
        self.cls_proj = None
        self.center = None
        if not keep_decoder:
            for encoder in self.modality_encoders.values():
                encoder.decoder = None


def student_encoder(cfg: Data2VecMultiConfig, weights: Optional[Mapping[str, Any]] = None,
                    keep_semantic_heads: bool = False) -> Data2VecMultiModel:
    """The pre-trained student without teacher, decoder and pre-training heads (features, fine-tuning);
    with ``keep_semantic_heads`` the machine-sound heads stay (anomaly scores).

    ``weights``: a pre-training state dict, loaded strictly (legacy key names renamed, ``_ema`` dropped;
    ``CheckpointMismatchError`` for another kind or size); ``None`` keeps the fresh initialisation.
    """
    model = Data2VecMultiModel(cfg, skip_ema=True)
    if weights is not None:
        model.load_state_dict(dict(weights), strict=True)
    model.remove_pretraining_modules(keep_semantic_heads=keep_semantic_heads)
    return model


def _check_mode_and_padding(mode, padding_mask: Optional[Tensor]) -> None:
    if mode is not None and str(getattr(mode, "name", mode)) != MODALITY:
        raise ValueError(f"mode={mode!r}: this model has only the {MODALITY!r} (spectrogram) encoder")
    if padding_mask is not None and padding_mask.any():
        raise ValueError("padding masks are not supported: clips are zero-padded or cropped to target_length "
                         "by the front end, as in the official EAT")


def _mae_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


__all__ = ["Data2VecMultiModel", "Data2VecMultiConfig", "Modality"]
