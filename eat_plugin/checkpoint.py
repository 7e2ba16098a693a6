"""Safe loading of fairseq checkpoints on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default: only tensors, plain containers and
explicitly allow-listed classes are unpickled, so a checkpoint cannot run code. fairseq checkpoints
may pickle a few harmless non-tensor objects (the legacy ``args`` Namespace, an OmegaConf ``cfg``,
numpy scalars in ``extra_state``). Importing ``eat_plugin`` allow-lists exactly those classes
(``torch.serialization.add_safe_globals``), so fairseq's own ``checkpoint_utils`` loader keeps working
WITHOUT turning the protection off. Anything else in a pickle is refused.
"""

from __future__ import annotations

import argparse
import collections
import pickle
import typing
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np
import omegaconf
import torch
from fairseq.distributed.utils import _TensorPlaceholder

from eat_plugin.checkpoint_cfg import from_official_layout


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint pickles objects outside the fairseq allow-list; it was not loaded."""


class NotACheckpointError(ValueError):
    """The file is not a torch checkpoint at all (or a corrupt / truncated one)."""


def _numpy_globals() -> List[Any]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                          "uint8", "bool")]
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


# Exactly what fairseq checkpoints contain besides tensors (checked against real files in the tests).
FAIRSEQ_CHECKPOINT_GLOBALS: List[Any] = [
    argparse.Namespace,  # legacy `args`
    omegaconf.DictConfig,  # `cfg` when saved as OmegaConf
    omegaconf.ListConfig,
    omegaconf.base.ContainerMetadata,
    omegaconf.base.Metadata,
    omegaconf.nodes.AnyNode,
    omegaconf.nodes.StringNode,
    omegaconf.nodes.IntegerNode,
    omegaconf.nodes.FloatNode,
    omegaconf.nodes.BooleanNode,
    typing.Any,  # OmegaConf metadata's key/element types
    dict,
    list,
    int,
    float,
    str,
    bool,
    collections.defaultdict,
    *_numpy_globals(),  # numpy scalars / arrays in extra_state (meters, iterator state)
    # fairseq's broadcast_object (a resume on several ranks: rank 0 loads the checkpoint and sends it with its
    # tensors replaced by these index markers, the other ranks torch.load it): a frozen dataclass of one int
    _TensorPlaceholder,
]


def allow_fairseq_checkpoint_classes() -> None:
    """Allow-list the classes above for ``torch.load(weights_only=True)`` in this process (idempotent)."""
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """``torch.load`` a fairseq checkpoint with ``weights_only=True`` and the fairseq allow-list.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        NotACheckpointError: the file is not a ``torch.save`` file (or is truncated / corrupt), or holds
            something other than a checkpoint dict.
        UnsafeCheckpointError: the file pickles any other class or function; nothing in it was run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    _check_torch_file(path)
    allow_fairseq_checkpoint_classes()
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(_refusal(path, err)) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile) as err:
        raise NotACheckpointError(
            f"{path}: corrupt or truncated torch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict):
        raise NotACheckpointError(
            f"{path}: holds a {type(state).__name__}, not a checkpoint dict (expected the dict fairseq / torch.save "
            f"writes, with 'model' and 'cfg')"
        )
    return from_official_layout(state)  # plugin task fields back into cfg.task (eat_plugin.checkpoint_cfg)


def _check_torch_file(path: Path) -> None:
    """Raise ``NotACheckpointError`` unless the file is a torch zip archive or a legacy pickle."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":  # zip (torch >= 1.6) or pickle protocol >= 2
        return
    what = "an empty file" if not head else f"a file starting with {head!r}"
    raise NotACheckpointError(
        f"{path}: not a torch checkpoint ({what}); expected a .pt file written by fairseq or torch.save"
    )


def _refusal(path: Path, err: Exception) -> str:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: fall back to torch's own message
        unsafe = []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in FAIRSEQ_CHECKPOINT_GLOBALS}
    refused = [g for g in unsafe if g not in allowed] or [str(err).splitlines()[-1][:300]]
    return (
        f"{path}: refused to load: the checkpoint pickles {', '.join(refused)}, which is not among the classes "
        f"fairseq checkpoints contain (tensors, containers, OmegaConf config, argparse.Namespace, numpy "
        f"scalars). Loading it could run arbitrary code, so nothing was unpickled."
    )
