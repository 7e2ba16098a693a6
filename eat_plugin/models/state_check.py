"""One message for a checkpoint of the wrong kind or size, instead of torch's wall of missing keys.

``check_state_matches(model, state)`` runs before every strict load of our two models (resuming,
fine-tuning from ``model.model_path``, the API): it says which kind of checkpoint was given
(pre-training ``data2vec_multi``, fine-tuned ``mae_image_classification`` or something else) when the
model expects the other, and for one of the right kind but another size names the first tensors whose
shapes differ with both shapes and the dimensions they imply (``embed_dim``, ``depth``, classes).
"""

from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Tuple

from torch import nn

from eat_plugin.models.keys import FINETUNED_PREFIX, PATCH_EMBEDDING

PRETRAINING_MARK = PATCH_EMBEDDING  # the patch conv of data2vec_multi
FINETUNED_MARK = "head.weight"
SHOWN = 3


class CheckpointMismatchError(RuntimeError):  # what torch's strict load_state_dict raises, one line instead
    """The checkpoint's weights are not this model's (another kind of model, or another size)."""


def checkpoint_kind(keys: Iterable[str]) -> str:
    """How ``check_state_matches`` names the kind of a state dict with these keys."""
    keys = set(keys)
    if FINETUNED_MARK in keys and any(k.startswith(FINETUNED_PREFIX) for k in keys):
        return "a fine-tuned (mae_image_classification) checkpoint"
    if PRETRAINING_MARK in keys:
        return "a pre-training (data2vec_multi) checkpoint"
    return "not an EAT checkpoint"


def _depth(keys: Iterable[str], prefix: str) -> int:
    blocks = {int(m.group(1)) for k in keys for m in [re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", k)] if m}
    return max(blocks) + 1 if blocks else 0


def check_state_matches(model: nn.Module, state: Mapping[str, object], expected_kind: str, source: str = "") -> None:
    """Raise ``CheckpointMismatchError`` unless ``state`` has exactly ``model``'s tensors and shapes.

    ``expected_kind``: how the model's own checkpoints are described (``checkpoint_kind``'s wording);
    ``source``: the file, for the message. ``_ema`` (the teacher) is compared only if the model has one.
    """
    own = model.state_dict()
    has_teacher = "_ema" in own
    own_keys = {k for k in own if k != "_ema"}
    given = {k for k in state if k != "_ema"}
    where = f"{source}: " if source else ""
    kind = checkpoint_kind(given)
    if kind != expected_kind:
        raise CheckpointMismatchError(
            f"{where}this is {kind}, but the model expects {expected_kind} ({len(given & own_keys)} of its "
            f"{len(own_keys)} tensors found)")
    missing, unexpected = sorted(own_keys - given), sorted(given - own_keys)
    shapes: List[Tuple[str, tuple, tuple]] = [
        (k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(own_keys & given)
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        if has_teacher and "_ema" not in state:
            raise CheckpointMismatchError(
                f"{where}the checkpoint has no EMA teacher ('_ema'), which resuming pre-training needs: it was saved "
                f"without one (remove_pretraining_modules / skip_ema); fine-tune from it instead")
        return
    prefix = FINETUNED_PREFIX if expected_kind.startswith("a fine-tuned") else ""
    details = []
    ours, theirs = _depth(own_keys, prefix), _depth(given, prefix)
    if ours != theirs:
        details.append(f"{theirs} transformer blocks in the checkpoint, {ours} in the model (depth)")
    if shapes:
        shown = "; ".join(f"{k}: checkpoint {a}, model {b}" for k, a, b in shapes[:SHOWN])
        more = f" and {len(shapes) - SHOWN} more" if len(shapes) > SHOWN else ""
        details.append(f"other shapes (another embed_dim, mlp ratio or class count): {shown}{more}")
    for name, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys and ours == theirs:
            details.append(f"{len(keys)} {name} tensors, e.g. {', '.join(keys[:SHOWN])}")
    raise CheckpointMismatchError(f"{where}the checkpoint is {kind} of another configuration than this model: "
                                  + "; ".join(details))
