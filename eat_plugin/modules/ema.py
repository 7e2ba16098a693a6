"""The EMA teacher: an fp32 master copy of the student's encoder, updated after every optimizer step.

Deliberately not an ``nn.Module`` attribute of the model: it stays out of ``parameters()`` (the
optimizer never sees it) and out of the regular state dict; the model saves the fp32 masters under
the single official key ``_ema``. ``θ_teacher <- d·θ_teacher + (1 - d)·θ_student`` for trainable
parameters; frozen ones (the fixed positions table) are copied.

When the teacher runs in fp32 (CPU, or fp32 training on a GPU) its parameters ARE the fp32 masters (one
tensor, not a model copy plus a master copy: 345 MB less for EAT-base); under fp16 / bf16 the teacher
holds the half-precision copy the masters are cast into after each step.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping

import torch
from torch import Tensor, nn


def annealed_decay(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Linear ramp from ``start`` (step 0) to ``end`` (step ``anneal_steps`` and after)."""
    if step >= anneal_steps:
        return end
    return end - (end - start) * (1 - step / anneal_steps)


class EMATeacher:
    """Teacher network ``model`` (run in eval mode, no grad) plus its fp32 master parameters.

    Args:
        model: a copy of the student's encoder whose ``state_dict()`` keys are the student's parameter
            names (``modality_encoders.IMAGE.*``, ``blocks.*``): these are the ``_ema`` keys.
        decay: initial EMA decay.
        log_norms: after each step, ``logs`` holds the L2 norms of the student parameters folded in
            (``model_norm``) and of the updated masters (``ema_norm``), as the official EMA module logs them.
    """

    def __init__(self, model: nn.Module, decay: float, log_norms: bool = False):
        self.model = model.requires_grad_(False).eval()
        self.decay = decay
        self.log_norms = log_norms
        self.logs: Dict[str, Tensor] = {}
        # fp32 parameters are their own masters (``.float()`` copies only half-precision ones)
        self.fp32_params: Dict[str, Tensor] = {name: p.detach().float() for name, p in self.model.named_parameters()}

    @torch.no_grad()
    def step(self, student: nn.Module) -> None:
        """Fold the student's current parameters into the masters, then refresh the teacher model."""
        masters, updates, frozen = [], [], []
        for name, param in student.named_parameters():
            master = self.fp32_params.get(name)
            if master is None:  # decoder, projection heads: not part of the teacher
                continue
            if param.requires_grad:
                masters.append(master)
                updates.append(param.detach().to(master.dtype))
            else:
                frozen.append((master, param))
        if masters:
            torch._foreach_lerp_(masters, updates, 1.0 - self.decay)  # m + (1-d)(p - m) = d·m + (1-d)·p
            if self.log_norms:
                self.logs = {"model_norm": _global_norm(updates), "ema_norm": _global_norm(masters)}
        for master, param in frozen:
            master.copy_(param.detach())
        self._copy_masters_to_model()

    @torch.no_grad()
    def restore(self, state: Mapping[str, Tensor]) -> None:
        """Load saved masters (the ``_ema`` dict); keys must be exactly the teacher's."""
        missing = sorted(set(self.fp32_params) - set(state))
        unexpected = sorted(set(state) - set(self.fp32_params))
        if missing or unexpected:
            raise KeyError(f"_ema teacher weights do not match the model: missing {missing}, unexpected {unexpected}")
        for name, master in self.fp32_params.items():
            if state[name].shape != master.shape:
                raise ValueError(f"_ema[{name!r}] has shape {tuple(state[name].shape)}, expected {tuple(master.shape)}")
            master.copy_(state[name].to(master.device, torch.float32))
        self._copy_masters_to_model()

    def apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Follow the student's ``.to()/.cuda()/.half()``: the model takes ``fn``; masters keep fp32."""
        self.model._apply(fn)
        device = next(self.model.parameters()).device
        self.fp32_params = {name: t.to(device) for name, t in self.fp32_params.items()}
        self._share_fp32_storage()

    def _share_fp32_storage(self) -> None:
        """Make every fp32 teacher parameter the master itself (values from the master)."""
        for name, param in self.model.named_parameters():
            master = self.fp32_params[name]
            if param.dtype == torch.float32 and param.device == master.device and param.data_ptr() != master.data_ptr():
                with torch.no_grad():
                    param.copy_(master)
                self.fp32_params[name] = param.detach()

    def _copy_masters_to_model(self) -> None:
        """Cast the masters into the teacher's half-precision parameters (shared fp32 ones need nothing)."""
        pairs = [(param, self.fp32_params[name]) for name, param in self.model.named_parameters()
                 if param.data_ptr() != self.fp32_params[name].data_ptr()]
        if pairs:
            torch._foreach_copy_([param for param, _ in pairs], [master for _, master in pairs])


def _global_norm(tensors) -> Tensor:
    """L2 norm of all ``tensors`` together, a 0-d tensor (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))
