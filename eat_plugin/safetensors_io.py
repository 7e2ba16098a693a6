"""safetensors reader and writer (own implementation, no ``safetensors`` dependency).

Implements the subset of the format that EAT weights need:

* layout: u64 little-endian header length | UTF-8 JSON header | tensor bytes, back to back;
* header: ``{name: {"dtype", "shape", "data_offsets": [begin, end)}}`` with offsets into the data
  section, and an optional ``"__metadata__"`` (str -> str); written padded with spaces to a multiple
  of 8 bytes, tensors in name order;
* dtypes F32, F16, BF16 and I64 only; little-endian hosts only;
* reading checks that the tensors tile the data section exactly (no gap, overlap or trailing bytes)
  and returns own, aligned copies (no memory mapping); malformed files raise ``ValueError``.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

PathLike = Union[str, Path]

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian bytes; this big-endian host is not supported")


def save_safetensors(tensors: Mapping[str, Tensor], path: PathLike,
                     metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``tensors`` (F32/F16/BF16/I64) as a safetensors file, in name order.

    Header: ``{name: {"dtype", "shape", "data_offsets": [begin, end)}}`` with offsets into the data
    section, plus ``"__metadata__"`` (str -> str); padded with spaces to a multiple of 8 bytes.
    """
    _require_little_endian()
    header: Dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if name == "__metadata__" or not isinstance(tensor, Tensor) or tensor.dtype not in _DTYPE_NAMES:
            what = getattr(tensor, "dtype", type(tensor).__name__)
            raise ValueError(f"cannot store {name!r} ({what}) in safetensors: expected a tensor of "
                             f"{', '.join(map(str, _DTYPE_NAMES))}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)


def read_safetensors(path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Read a safetensors file -> ``(tensors, metadata)``; malformed files raise ``ValueError``."""
    _require_little_endian()
    raw = bytearray(Path(path).read_bytes())
    if len(raw) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than the 8-byte header length)")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > len(raw) - 8:
        raise ValueError(f"{path}: header length {size} exceeds the file size {len(raw)}")
    try:
        header = json.loads(raw[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable safetensors header: {err}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    start, data_size = 8 + size, len(raw) - 8 - size
    tensors, spans = {}, []
    for name, info in header.items():
        tensors[name], span = _decode_tensor(raw, start, data_size, name, info, path)
        spans.append(span)
    _check_spans(sorted(spans), data_size, path)
    return tensors, dict(metadata)


def load_safetensors(path: PathLike) -> Dict[str, Tensor]:
    """The tensors of a safetensors file (see ``read_safetensors``)."""
    return read_safetensors(path)[0]


def _decode_tensor(raw: bytearray, start: int, data_size: int, name: str, info: Any,
                   path) -> Tuple[Tensor, Tuple[int, int]]:
    """One header entry -> its tensor (an own, aligned copy) and its byte span in the data section."""
    if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - set(info):
        raise ValueError(f"{path}: header entry {name!r} needs dtype, shape and data_offsets, got {info!r}")
    dtype = SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']!r}; "
                         f"supported: {', '.join(SAFETENSORS_DTYPES)}")
    shape = [int(n) for n in info["shape"]]
    begin, end = (int(n) for n in info["data_offsets"])
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if not 0 <= begin <= end <= data_size or end - begin != nbytes:
        raise ValueError(f"{path}: tensor {name!r} ({info['dtype']} {shape}) needs {nbytes} bytes but its "
                         f"data_offsets are [{begin}, {end}) in a data section of {data_size} bytes")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype), (begin, end)
    data = torch.frombuffer(raw, dtype=torch.uint8, count=nbytes, offset=start + begin).clone()
    return data.view(dtype).reshape(shape), (begin, end)


def _check_spans(spans: Sequence[Tuple[int, int]], data_size: int, path) -> None:
    """The tensors must tile the data section exactly: no gap, no overlap, nothing after."""
    position = 0
    for begin, end in spans:
        if begin != position:
            raise ValueError(f"{path}: tensor data is not contiguous (a tensor starts at byte {begin}, "
                             f"expected {position})")
        position = end
    if position != data_size:
        raise ValueError(f"{path}: {data_size - position} bytes after the last tensor")
