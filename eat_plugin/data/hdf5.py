"""Clips stored in HDF5 files, as the official AS-2M recipe reads them (reference §5.2 step 1).

With ``task.h5_format=true`` a train-manifest row names an HDF5 dataset instead of an audio file:
``<file.h5>/<key><TAB>num_samples``, e.g. ``as2m_part00.h5/Y--0PQM4-hqg`` (key ``Y--0PQM4-hqg`` in
``<root>/as2m_part00.h5``). The HDF5 file is the path up to the first component ending in ``.h5``,
``.hdf5`` or ``.hdf``; the rest is the key (it may name a nested group). A path with no such component
splits at its last ``/`` (the official rule). The arrays carry no rate: it is 32 kHz, as in the official
code. ``h5py`` is imported only here, and only when such a clip is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

from eat_plugin.data.fbank import AudioError

H5_SAMPLE_RATE = 32000  # the official code assumes 32 kHz for HDF5 clips
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def split_h5_path(relpath: str) -> Tuple[str, str]:
    """``"dir/file.h5/group/key"`` -> ``("dir/file.h5", "group/key")``.

    Raises:
        AudioError: the path has no key part.
    """
    parts = [p for p in relpath.split("/") if p]
    cut = next((i + 1 for i, p in enumerate(parts) if p.lower().endswith(H5_SUFFIXES)), len(parts) - 1)
    file_part, key_part = "/".join(parts[:cut]), "/".join(parts[cut:])
    if not file_part or not key_part:
        raise AudioError(
            f"{relpath!r}: with h5_format=true a manifest path must be '<file.h5>/<dataset key>', "
            f"e.g. 'audioset.h5/Y--0PQM4-hqg'"
        )
    return file_part, key_part


def _as_float32(data: np.ndarray, where: str) -> np.ndarray:
    """Float arrays as they are; integer PCM scaled to [-1, 1) as soundfile does for PCM files."""
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32, copy=False)
    if np.issubdtype(data.dtype, np.signedinteger):
        return (data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    raise AudioError(f"{where}: dtype {data.dtype} is not audio; expected float or signed integer PCM samples")


def read_h5_audio(h5_path: Union[str, Path], key: str) -> Tuple[np.ndarray, int]:
    """Read the clip stored at ``key`` in ``h5_path``.

    Returns:
        wave: float32 array ``(S, C)`` (a 1-D dataset becomes ``(S, 1)``).
        sample_rate: always ``H5_SAMPLE_RATE`` (32000).

    Raises:
        FileNotFoundError: no such file.
        AudioError: not an HDF5 file, no dataset at ``key``, not 1-D/2-D, empty, non-finite samples.
    """
    h5_path = Path(h5_path)
    where = f"{h5_path} key {key!r}"
    if not h5_path.is_file():
        raise FileNotFoundError(f"{h5_path}: HDF5 file not found (wanted key {key!r})")
    try:
        import h5py  # only the HDF5 path needs it
    except ImportError:
        raise AudioError(
            f"{where}: reading HDF5 clips (task.h5_format=true) needs h5py; install the pinned version "
            f"from requirements.lock"
        ) from None
    try:
        with h5py.File(h5_path, "r") as f:
            node = f.get(key)
            if not isinstance(node, h5py.Dataset):
                what = "is a group, not a dataset" if node is not None else "does not exist"
                raise AudioError(f"{where}: {what}; expected an array of samples at that key")
            data = node[()]
    except OSError as err:
        raise AudioError(f"{h5_path}: not a readable HDF5 file ({err})") from None
    wave = _as_float32(np.asarray(data), where)
    if wave.ndim == 1:
        wave = wave[:, None]  # (S, 1)
    if wave.ndim != 2:
        raise AudioError(f"{where}: expected samples of shape (S,) or (S, channels), got {wave.shape}")
    if wave.shape[0] == 0:
        raise AudioError(f"{where}: contains no samples")
    if not np.isfinite(wave).all():
        bad = int(wave.size - np.isfinite(wave).sum())
        raise AudioError(f"{where}: contains {bad} NaN/Inf samples; expected finite audio")
    return wave, H5_SAMPLE_RATE
