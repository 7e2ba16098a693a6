"""``adam_fused``: fairseq's Adam update computed with torch's multi-tensor kernels, as a fairseq optimizer.

fairseq's ``adam`` (``fairseq.optim.adam.Adam`` without apex) loops over the parameters in Python, a
handful of kernels per tensor. ``adam_fused`` computes the same update for a whole parameter group at once
and can stand in for it anywhere ``adam`` is used, e.g. as the per-group optimizer of fairseq's
``composite`` optimizer (``optimizer.groups.default.optimizer._name=adam_fused``). The config fields are
``adam``'s plus ``implementation``:

* ``loop``: fairseq's per-parameter code, op for op (bit-identical to ``adam``);
* ``foreach``: the same ops as ``torch._foreach_*`` calls over the group (bit-identical to ``adam`` on the
  CPU, where torch runs them tensor by tensor; on CUDA the multi-tensor kernels may round differently);
* ``fused``: torch's fused AdamW kernel (``torch._fused_adamw_``, CPU and CUDA), a few ulp from ``adam``;
* ``auto`` (default): ``fused`` where torch has that kernel for the device, else ``foreach``; on TPUs
  (``common.tpu``) ``loop``, the code fairseq runs there.

The update, fairseq's (AdamW-style decoupled weight decay, ``eps`` added to the *uncorrected* ``sqrt(v)``)::

    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g²;   bc1 = 1 - b1^t;   bc2 = 1 - b2^t
    p -= lr · wd · p;   p -= lr · sqrt(bc2) / bc1 · m / (sqrt(v) + eps)

torch's kernel computes ``p -= lr / bc1 · m / (sqrt(v) / sqrt(bc2) + eps')``; with ``eps' = eps / sqrt(bc2)``
(passed on every step) that is the same expression multiplied through by ``sqrt(bc2)``, so ``fused`` differs
from ``adam`` only by rounding: the kernel decays ``p`` as ``p · (1 - lr·wd)``, forms ``m`` with a lerp and
divides by ``sqrt(bc2)`` where fairseq multiplies the step size.

Everything else follows ``adam``: the optimizer state is ``{step (int), exp_avg, exp_avg_sq}`` per parameter
and the parameter-group keys are ``lr, betas, eps, weight_decay, amsgrad``, so checkpoints move between
``adam`` and ``adam_fused`` (any implementation) in both directions; fp16 / bf16 parameters
(``--memory-efficient-fp16`` / ``--memory-efficient-bf16``) are updated in fp32 with fp32 state, which a
checkpoint load keeps fp32; flat parameters (fairseq's ``FP16Optimizer``) work; ``average_params`` (BMUF)
averages ``exp_avg`` / ``exp_avg_sq`` over the ranks as ``adam`` does. Refused, with an error:
``use_old_adam: true`` (choose ``implementation: loop``), ``amsgrad`` groups, sparse gradients, a checkpoint
whose state is not Adam's, BMUF with ``fp16_adam_stats``.

``fp16_adam_stats: true`` (fairseq's field; its ``adam`` has it only with apex's FusedAdamV1 on a GPU, and its
``cpu_adam``) keeps the two moments in fp16 with a per-tensor scale, as those optimizers do: each step
dequantises ``m = m16 · s_m`` (and ``v``), runs the update above in fp32, then stores
``s = 1e-8 + max|m| / 65504`` and ``m16 = fp16(m / s)`` (state keys ``exp_avg_scale`` / ``exp_avg_sq_scale``
beside the moments, FusedAdamV1's). The state takes half the memory (EAT-base: 343 instead of 686 MiB); the
moments carry fp16's 11-bit precision relative to their tensor's largest entry, and entries below ~6e-8 of
it become 0. A run switches either way between fp32 and fp16 moments on resume (converted at the first step).
The fp32 copies live one chunk at a time (``CHUNK_NUMEL``), except for a flat parameter (fairseq's
``FP16Optimizer`` with flat grads), which is one tensor and so is dequantised whole.

Note: fairseq's trainer resumes an optimizer only if the top-level optimizer class is the one that wrote the
checkpoint. Inside ``composite`` (the recipes) the top level is always ``FairseqCompositeOptimizer``, so a
run started with ``adam`` resumes with ``adam_fused`` and back; a top-level ``optimizer._name`` switch
between ``adam`` and ``adam_fused`` is refused by the trainer ("Optimizer does not match").
"""

import ast
import logging
import math
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, List

import torch
import torch.distributed as dist
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "fused", "foreach", "loop")
LOW_PRECISION = (torch.float16, torch.bfloat16)
MOMENTS = ("exp_avg", "exp_avg_sq")
FLOAT16_MAX = 65504.0  # fp16_stats: a moment tensor is scaled so that its largest entry maps here
# tensors per multi-tensor call are taken in runs of at most this many elements: bounds the fp32 copies of
# fp16 / bf16 parameters and gradients and foreach's sqrt(v) buffer (64 MiB each in fp32); on the CPU 8 MiB,
# which glibc's allocator reuses instead of mapping fresh pages on every step (foreach 1.5x faster there)
CHUNK_NUMEL = {"cpu": 2 ** 21}
DEFAULT_CHUNK_NUMEL = 2 ** 24


@dataclass
class AdamFusedConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for Adam optimizer"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for Adam optimizer"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    use_old_adam: bool = field(default=False, metadata={
        "help": "fairseq adam's switch to its Python loop; refused here, set implementation: loop"})
    fp16_adam_stats: bool = field(default=False, metadata={
        "help": "keep exp_avg / exp_avg_sq in fp16 with a per-tensor scale (FusedAdamV1's scheme): half the "
                "optimizer-state memory, fp16 precision in the moments"})
    implementation: ChoiceEnum(list(IMPLEMENTATIONS)) = field(default="auto", metadata={
        "help": "fused: torch's fused AdamW kernel with fairseq's eps placement; foreach: torch._foreach_* ops; "
                "loop: fairseq's per-parameter code; auto: fused where torch has the kernel, else foreach"})
    tpu: bool = II("common.tpu")
    lr: List[float] = II("optimization.lr")


def parse_betas(betas) -> tuple:
    """``adam_betas`` as fairseq writes it: a list, a tuple or a string such as ``"(0.9, 0.98)"``."""
    if isinstance(betas, str):
        betas = ast.literal_eval(betas)
    elif OmegaConf.is_config(betas):
        betas = OmegaConf.to_container(betas)
    return tuple(float(b) for b in betas)


@register_optimizer("adam_fused", dataclass=AdamFusedConfig)
class FairseqAdamFused(FairseqOptimizer):
    """fairseq's Adam update (:class:`fairseq.optim.adam.FairseqAdam`, AdamW-style weight decay) on torch's
    multi-tensor kernels; see the module docstring."""

    def __init__(self, cfg: AdamFusedConfig, params):
        super().__init__(cfg)
        if getattr(cfg, "use_old_adam", False):
            raise ValueError("adam_fused: use_old_adam is fairseq adam's switch to its Python loop; "
                             "set implementation: loop instead")
        implementation = str(getattr(cfg.implementation, "value", cfg.implementation))
        if implementation == "auto" and getattr(cfg, "tpu", False):
            implementation = "loop"  # fairseq's adam runs its Python loop on TPUs
        self._optimizer = AdamFused(params, implementation=implementation,
                                    fp16_stats=bool(getattr(cfg, "fp16_adam_stats", False)), **self.optimizer_config)
        devices = {p.device for group in self._optimizer.param_groups for p in group["params"]}
        chosen = {str(d): self._optimizer._implementation_for(d) for d in devices}  # an unsupported choice fails here
        logger.info(f"adam_fused: implementation {implementation} ({chosen})")

    @property
    def optimizer_config(self):
        """The keyword arguments that override those stored in a checkpoint (as fairseq's adam)."""
        return {
            "lr": self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr,
            "betas": parse_betas(self.cfg.adam_betas),
            "eps": self.cfg.adam_eps,
            "weight_decay": self.cfg.weight_decay,
        }

    def average_params(self):
        """Average ``exp_avg`` / ``exp_avg_sq`` over the ranks (BMUF), as fairseq's adam does."""
        if self.optimizer.fp16_stats:
            raise NotImplementedError("adam_fused: BMUF's moment averaging with fp16_adam_stats (moments scaled "
                                      "per rank) is not supported; set fp16_adam_stats: false")
        total = float(dist.get_world_size())
        for state in self.optimizer.state.values():
            for key in MOMENTS:
                if key in state:
                    state[key] /= total
                    dist.all_reduce(state[key], op=dist.ReduceOp.SUM)


def fused_supported(device: torch.device) -> bool:
    if not hasattr(torch, "_fused_adamw_"):
        return False
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        devices = _get_fused_kernels_supported_devices()
    except ImportError:  # an older torch
        devices = ["cuda"]
    return device.type in devices


class AdamFused(torch.optim.Optimizer):
    """The torch optimizer behind ``adam_fused``: the update of :class:`fairseq.optim.adam.Adam`, its state
    and parameter-group layout, with the implementation chosen by ``implementation``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 implementation="auto", fp16_stats=False):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"adam_fused: implementation must be one of {IMPLEMENTATIONS}, not {implementation!r}")
        if amsgrad:
            raise NotImplementedError("adam_fused: amsgrad is not supported")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"adam_fused: betas must be in [0, 1), not {betas}")
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"adam_fused: lr, eps and weight_decay must be >= 0 (lr {lr}, eps {eps}, "
                             f"weight_decay {weight_decay})")
        # the same group keys as fairseq's Adam: state dicts move between the two
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=False))
        self.implementation = implementation
        self.fp16_stats = fp16_stats
        self._scratch = {}  # fp16_stats: device -> fp32 buffer for a chunk's dequantised moments (not state)

    @property
    def supports_memory_efficient_fp16(self):
        return True  # fp16 / bf16 parameters and gradients are updated in fp32, the state is fp32

    @property
    def supports_flat_params(self):
        return True

    # fairseq's MemoryEfficientFP16Optimizer re-inserts the saved state after load_state_dict unless this is
    # set; load_state_dict below keeps the fp32 state of fp16 / bf16 parameters itself
    disable_mem_eff_fp16_loading_hack = True

    # ------------------------------------------------------------------------------------------------ state

    def load_state_dict(self, state_dict):
        """torch's load (it casts the state to each parameter's dtype), then the fp32 state of fp16 / bf16
        parameters put back; a state that is not Adam's stops here with an error naming the parameter."""
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
            raise ValueError("adam_fused: the checkpoint's optimizer state has other parameter groups "
                             f"({[len(g['params']) for g in saved_groups]} parameters) than this model "
                             f"({[len(g['params']) for g in self.param_groups]}); resume with "
                             "checkpoint.reset_optimizer=true")
        params = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        for group in saved_groups:
            if group.get("amsgrad", False):
                raise NotImplementedError("adam_fused: the checkpoint's optimizer used amsgrad, not supported")
        for key, state in saved_state.items():
            p = params.get(key)
            if p is None:
                continue
            if "step" not in state or any(k not in state for k in MOMENTS):
                raise ValueError(f"adam_fused: the checkpoint's optimizer state for parameter {key} is not Adam's "
                                 f"(keys {sorted(state)}); resume with checkpoint.reset_optimizer=true")
            for k in MOMENTS:
                if tuple(state[k].shape) != tuple(p.shape):
                    raise ValueError(f"adam_fused: the checkpoint's {k} for parameter {key} has shape "
                                     f"{tuple(state[k].shape)}, the parameter {tuple(p.shape)}")
        super().load_state_dict(state_dict)
        for key, p in params.items():  # torch's load cast every state tensor to the parameter's dtype: undo that
            saved = saved_state.get(key)
            if saved is None:
                continue
            for k in MOMENTS:
                if k + "_scale" in saved:  # fp16 moments (fp16_adam_stats): keep them fp16, the scale fp32
                    self.state[p][k] = saved[k].to(device=p.device, dtype=torch.float16)
                    self.state[p][k + "_scale"] = torch.as_tensor(saved[k + "_scale"], dtype=torch.float32).to(p.device)
                elif p.dtype in LOW_PRECISION:
                    self.state[p][k] = saved[k].to(device=p.device, dtype=torch.float32)

    # ------------------------------------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("amsgrad", False):
                raise NotImplementedError("adam_fused: amsgrad is not supported")
            # parameters of a group in runs of (device, dtype, step): each run is one set of kernel calls
            runs = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
                work_dtype = torch.float32 if p.dtype in LOW_PRECISION else p.dtype
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    for k in MOMENTS:  # fp16_stats: fp16 zeros, scale 1 (FusedAdamV1's initial state)
                        state[k] = torch.zeros_like(p, dtype=torch.float16 if self.fp16_stats else work_dtype,
                                                    memory_format=torch.preserve_format)
                        if self.fp16_stats:
                            state[k + "_scale"] = torch.ones((), device=p.device)
                self._settle_state(state, p, work_dtype)
                state["step"] = int(state["step"]) + 1
                runs[(p.device, work_dtype, state["step"])].append(p)
            for (device, _, step), run in runs.items():
                implementation = self._implementation_for(device)
                for chunk in chunks(run, CHUNK_NUMEL.get(device.type, DEFAULT_CHUNK_NUMEL)):
                    self._update(chunk, group, step, implementation)
        return loss

    def _settle_state(self, state, p, work_dtype: torch.dtype) -> None:
        """Moments on the parameter's device, as this optimizer keeps them: ``work_dtype``, or fp16 + scale
        (``fp16_stats``); a state of the other kind (a resumed run that switched) is converted."""
        for k in MOMENTS:
            moment, scale = state[k], state.get(k + "_scale")
            if self.fp16_stats and scale is None:  # fp32 moments -> fp16 + scale
                moment = moment.to(device=p.device, dtype=torch.float32)
                scale = 1e-8 + largest_magnitude(moment) / FLOAT16_MAX  # () fp32
                state[k], state[k + "_scale"] = (moment / scale).half(), scale
            elif self.fp16_stats:
                if moment.device != p.device or moment.dtype != torch.float16:
                    state[k] = moment.to(device=p.device, dtype=torch.float16)
                state[k + "_scale"] = torch.as_tensor(scale, dtype=torch.float32).to(p.device)
            elif scale is not None:  # fp16 + scale -> plain moments
                state[k] = moment.to(device=p.device, dtype=torch.float32).mul_(scale).to(work_dtype)
                del state[k + "_scale"]
            elif moment.device != p.device or moment.dtype != work_dtype:  # e.g. a state loaded onto the CPU
                state[k] = moment.to(device=p.device, dtype=work_dtype)

    def _dequantised(self, params, states):
        """fp32 ``m16 · s`` of each moment: views of one scratch buffer per device (2 x the chunk's elements,
        kept between steps, so no fresh pages per step), or own tensors for non-contiguous parameters."""
        device, numel = params[0].device, sum(p.numel() for p in params if p.is_contiguous())
        buffers = self.__dict__.setdefault("_scratch", {})  # (absent after torch's __setstate__)
        scratch = buffers.get(device)
        if scratch is None or scratch.numel() < 2 * numel:
            scratch = buffers[device] = torch.empty(2 * numel, dtype=torch.float32, device=device)
        moments, offset = ([], []), 0
        for p, st in zip(params, states):
            for i, k in enumerate(MOMENTS):
                if p.is_contiguous():
                    out = scratch[offset:offset + p.numel()].view(p.shape)
                    offset += p.numel()
                else:
                    out = torch.empty_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                moments[i].append(out.copy_(st[k]).mul_(st[k + "_scale"]))
        return moments

    def _implementation_for(self, device: torch.device) -> str:
        if self.implementation == "auto":
            return "fused" if fused_supported(device) else "foreach"
        if self.implementation == "fused" and not fused_supported(device):
            raise RuntimeError(f"adam_fused: torch {torch.__version__} has no fused AdamW kernel for {device.type} "
                               "tensors; set implementation: foreach (or auto)")
        return self.implementation

    def _update(self, params, group, step: int, implementation: str):
        work = [p if p.dtype not in LOW_PRECISION else p.float() for p in params]
        grads = []
        for p, w in zip(params, work):
            g = p.grad if p.grad.dtype == w.dtype else p.grad.to(w.dtype)
            if implementation == "fused" and g.stride() != w.stride():
                g = torch.empty_like(w).copy_(g)  # the kernel wants one layout per parameter, state and grad
            grads.append(g)
        states = [self.state[p] for p in params]
        if self.fp16_stats:  # fp32 copies of this chunk's moments, in a scratch buffer reused every step
            exp_avgs, exp_avg_sqs = self._dequantised(params, states)
        else:
            exp_avgs = [st["exp_avg"] for st in states]
            exp_avg_sqs = [st["exp_avg_sq"] for st in states]
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        # fairseq's Adam: Python floats (double), from the integer step
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        if implementation == "fused":
            steps = [torch.full((), float(step), dtype=torch.float32, device=work[0].device)] * len(work)
            torch._fused_adamw_(work, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                                weight_decay=weight_decay, eps=eps / math.sqrt(bias_correction2),
                                amsgrad=False, maximize=False)
        else:
            step_size = lr * math.sqrt(bias_correction2) / bias_correction1
            if implementation == "foreach":
                torch._foreach_mul_(exp_avgs, beta1)
                torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
                torch._foreach_mul_(exp_avg_sqs, beta2)
                torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
                denom = torch._foreach_sqrt(exp_avg_sqs)
                torch._foreach_add_(denom, eps)
                if weight_decay != 0:
                    torch._foreach_add_(work, work, alpha=-weight_decay * lr)
                torch._foreach_addcdiv_(work, exp_avgs, denom, value=-step_size)
            else:  # loop: fairseq.optim.adam.Adam.step, op for op
                for p, g, exp_avg, exp_avg_sq in zip(work, grads, exp_avgs, exp_avg_sqs):
                    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = exp_avg_sq.sqrt().add_(eps)
                    if weight_decay != 0:
                        p.add_(p, alpha=-weight_decay * lr)
                    p.addcdiv_(exp_avg, denom, value=-step_size)
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)
        if self.fp16_stats:  # FusedAdamV1's requantisation: scale from the largest entry, then fp16
            for st, moments in zip(states, zip(exp_avgs, exp_avg_sqs)):
                for k, moment in zip(MOMENTS, moments):
                    scale = 1e-8 + largest_magnitude(moment) / FLOAT16_MAX  # () fp32
                    torch.div(moment, scale, out=st[k])  # divided in fp32, rounded once into the fp16 state
                    st[k + "_scale"] = scale


def largest_magnitude(t: torch.Tensor) -> torch.Tensor:
    """``max |t|`` as a 0-d tensor in one pass without an ``abs`` copy (NaN propagates, as through ``abs().max()``)."""
    low, high = torch.aminmax(t)
    return torch.maximum(-low, high)


def chunks(params, limit: int):
    """``params`` in consecutive runs of at most ``limit`` elements (a larger tensor on its own)."""
    run, numel = [], 0
    for p in params:
        if run and numel + p.numel() > limit:
            yield run
            run, numel = [], 0
        run.append(p)
        numel += p.numel()
    if run:
        yield run
