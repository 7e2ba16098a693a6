"""The one waveform -> normalised log-mel fbank path (reference §5.2).

Every consumer (datasets, inference, feature extraction, data-preparation statistics) goes through
:class:`FbankFrontEnd`, so training and inference see identical features.

Pipeline, in the official order:
    audio file -> float32 (S, C) -> down-mix to mono -> resample to 16 kHz -> remove DC
    -> Kaldi fbank (128 mel, 25 ms Hanning, 10 ms shift, htk_compat, no dither, no energy)
    -> zero-pad / crop to ``target_length`` frames -> (x - mean) / (2 * std)

Down-mixing happens BEFORE resampling. The official code resamples the ``(samples, channels)`` array
along its last axis (across the channels) and only then averages; we do not copy that bug.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from eat_plugin.console import InputError
from eat_plugin.layout import NUM_MEL_BINS, SAMPLE_RATE, check_target_length  # noqa: F401  (re-exported)

FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
WINDOW_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400
HOP_SAMPLES = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160


class AudioError(InputError, ValueError):
    """A clip that cannot be turned into features; the message names the file and the problem."""


@dataclass(frozen=True)
class NormStats:
    """Dataset-level fbank statistics; features are normalised as ``(x - mean) / (2 * std)``."""

    mean: float
    std: float


# Official constants (reference §5.2 step 6).
NORM_STATS = {
    "audioset": NormStats(-4.268, 4.569),
    "esc50": NormStats(-6.627, 5.359),
    "spcv2": NormStats(-6.846, 5.565),
}


def check_sample_rate(sample_rate, source: str = "audio") -> int:
    """Raise a clear error unless ``sample_rate`` is a positive integer number of Hz."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{source}: sample rate must be a positive integer in Hz, got {sample_rate!r}")
    return int(sample_rate)


def num_fbank_frames(num_samples_16k: int) -> int:
    """Frames Kaldi produces with ``snip_edges=True``: ``1 + (n - 400) // 160`` (0 if shorter)."""
    if num_samples_16k < WINDOW_SAMPLES:
        return 0
    return 1 + (num_samples_16k - WINDOW_SAMPLES) // HOP_SAMPLES


_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # placeholders written by streaming encoders


def _wav_data_sizes(log: str) -> Tuple[Optional[int], int]:
    """libsndfile's header log flags a WAV/AIFF data chunk larger than the file as ``data : N (should be M)``.

    soundfile then silently reads the M bytes that exist; we want a truncated file reported instead.
    """
    match = _DATA_CHUNK.search(log or "")
    if match is None or int(match.group(1)) in _STREAMING_SIZES:
        return None, 0
    return int(match.group(1)), int(match.group(2))


def open_audio(path: Union[str, Path]) -> sf.SoundFile:
    """Open ``path`` for reading after the checks that need only the header.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: empty file, not audio / corrupt header, truncated WAV/AIFF data, no samples,
            invalid sample rate.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes); expected an audio file soundfile can read")
    try:
        audio = sf.SoundFile(str(path))
    except sf.SoundFileError as err:
        raise AudioError(
            f"{path}: not audio or corrupt header ({err}); expected a file soundfile can read (wav, flac, ogg, ...)"
        ) from None
    try:
        declared_bytes, available_bytes = _wav_data_sizes(audio.extra_info)
        if declared_bytes is not None and declared_bytes > available_bytes:
            raise AudioError(
                f"{path}: truncated: header declares {declared_bytes} bytes of audio data, the file holds {available_bytes}"
            )
        if audio.frames <= 0:
            raise AudioError(f"{path}: contains no samples (a header without audio data)")
        check_sample_rate(audio.samplerate, str(path))
    except AudioError:
        audio.close()
        raise
    return audio


def read_audio(path: Union[str, Path]) -> Tuple[np.ndarray, int]:
    """Read an audio file with soundfile.

    Returns:
        wave: float32 array ``(S, C)`` (always 2-D; C = channels).
        sample_rate: the file's native rate in Hz.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: empty, undecodable, truncated or non-finite audio.
    """
    with open_audio(path) as audio:
        try:
            wave = audio.read(dtype="float32", always_2d=True)  # (S, C)
        except sf.SoundFileError as err:
            raise AudioError(f"{path}: audio data is corrupt or truncated ({err})") from None
        sample_rate = audio.samplerate
    if wave.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples (a header without audio data)")
    if not np.isfinite(wave).all():
        bad = int(np.size(wave) - np.isfinite(wave).sum())
        raise AudioError(f"{path}: contains {bad} NaN/Inf samples; expected finite audio")
    return wave, sample_rate


# Integer PCM as soundfile reads it: (x - offset) / scale lies in [-1, 1). int64 and the wider unsigned
# types are refused: no audio format stores them, so such an array is more likely a bug than PCM.
_PCM = {np.dtype(np.int8): (0, 2**7), np.dtype(np.uint8): (2**7, 2**7), np.dtype(np.int16): (0, 2**15),
        np.dtype(np.int32): (0, 2**31)}
# More channels than samples, and more than this many channels: a (channels, samples) array or a batch.
LAYOUT_CHANNELS = 64
MAX_KERNEL_ELEMENTS = 1 << 20  # above this, resample() evaluates the torchaudio kernel only where it is non-zero


def as_waveform(wave, source: str = "audio") -> torch.Tensor:
    """Any array of samples -> float32 tensor ``(S,)`` or ``(S, C)``, integer PCM scaled to [-1, 1).

    Raises:
        AudioError: not an array of float or int8/uint8/int16/int32 samples, not 1-D / 2-D channels-last
            (more than 64 channels and more channels than samples reads as channels first), no channels,
            or NaN/Inf samples.
    """
    if isinstance(wave, torch.Tensor) and wave.is_floating_point():
        wave = wave.detach().to("cpu", torch.float32)
    else:
        try:
            array = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave)
        except (TypeError, ValueError, RuntimeError) as err:
            raise AudioError(f"{source}: expected an array of audio samples, got {type(wave).__name__} ({err})") from None
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype in _PCM:
            offset, scale = _PCM[array.dtype]
            array = ((array.astype(np.float64) - offset) / scale).astype(np.float32)
        else:
            raise AudioError(f"{source}: expected float or int8/uint8/int16/int32 PCM samples, got dtype {array.dtype}")
        wave = torch.from_numpy(array)
    if wave.dim() not in (1, 2):
        raise AudioError(f"{source}: expected audio of shape (samples,) or (samples, channels), got {tuple(wave.shape)}")
    if wave.dim() == 2 and wave.size(1) == 0:
        raise AudioError(f"{source}: expected (samples, channels) with at least one channel, got {tuple(wave.shape)}")
    if wave.dim() == 2 and wave.size(1) > max(wave.size(0), LAYOUT_CHANNELS):
        raise AudioError(
            f"{source}: shape {tuple(wave.shape)} reads as {wave.size(1)} channels of {wave.size(0)} samples; "
            f"expected channels last, (samples, channels) (transpose a (channels, samples) array)"
        )
    if not all_finite(wave):
        bad = int(wave.numel() - torch.isfinite(wave).sum())
        raise AudioError(f"{source}: contains {bad} NaN/Inf samples; expected finite audio")
    return wave


def all_finite(wave: torch.Tensor) -> bool:
    """No NaN / Inf in ``wave``: its min and max are finite (NaN propagates through both). One pass without
    a mask tensor: 10x faster than ``torch.isfinite(wave).all()`` (21 vs 201 us for a 2-s 44.1 kHz clip)."""
    return wave.numel() == 0 or all(map(math.isfinite, torch.aminmax(wave)))


def resample(wave: torch.Tensor, sample_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``torchaudio.functional.resample`` (Hann-windowed sinc, width 6, rolloff 0.99) of ``(S,)`` float32.

    torchaudio builds a ``(new, orig + 2 * width)`` kernel for the reduced ratio ``orig : new``: a few
    thousand values for the usual rates, gigabytes for a rate such as 22051 Hz (22051 : 16000). Past
    ``MAX_KERNEL_ELEMENTS`` the same formula is evaluated only over each output sample's support.
    """
    if sample_rate == new_rate or wave.numel() == 0:
        return wave
    gcd = math.gcd(sample_rate, new_rate)
    orig, new = sample_rate // gcd, new_rate // gcd
    base = min(orig, new) * 0.99
    width = math.ceil(6 * orig / base)
    if new * (orig + 2 * width) <= MAX_KERNEL_ELEMENTS:
        return _torchaudio_resample(wave, sample_rate, new_rate)  # (S_new,)
    num_out = -(-new * wave.numel() // orig)
    padded = F.pad(wave, (width, width + 2))  # (S + 2 * width + 2,)
    offsets = torch.arange(-width, width + 2)  # (K,): covers every input within `width` of an output
    chunk = max(1, (1 << 20) // offsets.numel())  # output samples per step: about 4 MB per (M, K) temporary
    out = []
    for start in range(0, num_out, chunk):
        position = torch.arange(start, min(start + chunk, num_out)) * orig  # (M,): output k at input k * orig / new
        first, phase = position // new, position % new  # exact integers
        # tap j reads input first + j: (j - phase / new) / orig seconds-times-base from the output sample
        t = (offsets * (base / orig) - phase[:, None] * (base / (orig * new))).clamp_(-6.0, 6.0)  # (M, K) float32
        kernel = torch.sinc(t) * torch.cos(t * (math.pi / 12)).square_()  # Hann-windowed sinc
        out.append((padded[first[:, None] + (offsets + width)] * kernel).sum(1) * (base / orig))  # (M,)
    return torch.cat(out)  # (S_new,)


try:  # torchaudio's own two steps, so the kernel of a rate pair is built once instead of for every clip
    from torchaudio.functional.functional import _apply_sinc_resample_kernel, _get_sinc_resample_kernel
except ImportError:  # another torchaudio layout: the public function, kernel rebuilt per call
    _apply_sinc_resample_kernel = _get_sinc_resample_kernel = None


@functools.lru_cache(maxsize=32)
def _resample_kernel(orig_freq: int, new_freq: int) -> Tuple[torch.Tensor, int]:
    """``torchaudio.functional.resample``'s float32 CPU kernel and width for a rate pair (its defaults)."""
    gcd = math.gcd(orig_freq, new_freq)
    return _get_sinc_resample_kernel(orig_freq, new_freq, gcd, 6, 0.99, "sinc_interp_hann", None,
                                     torch.device("cpu"), torch.float32)


def _torchaudio_resample(wave: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """``torchaudio.functional.resample(wave, orig_freq, new_freq)`` of float32 CPU ``(S,)``, bit for bit, with
    the kernel cached per rate pair (a 2-s 44.1 kHz clip: 0.51 instead of 1.06 ms)."""
    if _get_sinc_resample_kernel is None or wave.dtype != torch.float32 or wave.device.type != "cpu":
        return torchaudio.functional.resample(wave, orig_freq=orig_freq, new_freq=new_freq)  # (S_new,)
    kernel, width = _resample_kernel(orig_freq, new_freq)
    return _apply_sinc_resample_kernel(wave, orig_freq, new_freq, math.gcd(orig_freq, new_freq), kernel, width)


def to_mono_16k(wave: Union[np.ndarray, torch.Tensor], sample_rate: int, source: str = "audio") -> torch.Tensor:
    """Down-mix to mono, then resample to 16 kHz.

    Args:
        wave: ``(S,)`` mono or ``(S, C)`` multichannel samples (soundfile's layout), float or integer
            PCM (int8 / uint8 / int16 / int32, scaled to [-1, 1) as soundfile reads them).
        sample_rate: rate of ``wave`` in Hz.
        source: name used in error messages (usually the file path).

    Returns:
        float32 tensor ``(S16,)`` at 16 kHz, ``S16 = ceil(S * 16000 / sample_rate)``.

    Raises:
        AudioError: invalid sample rate, dtype or shape, or NaN/Inf samples (see ``as_waveform``).
    """
    sample_rate = check_sample_rate(sample_rate, source)
    wave = as_waveform(wave, source)  # (S,) or (S, C)
    if wave.dim() == 2:  # (S, C): down-mix BEFORE resampling
        wave = wave[:, 0] if wave.size(1) == 1 else wave.mean(dim=1)  # (S,)
    return resample(wave, sample_rate)  # (S16,)


def wave_to_fbank(wave_16k: torch.Tensor, source: str = "audio") -> torch.Tensor:
    """DC removal + the official Kaldi fbank.

    Args:
        wave_16k: ``(S,)`` float32 mono waveform at 16 kHz.

    Returns:
        ``(n_frames, 128)`` log-mel energies, ``n_frames = 1 + (S - 400) // 160``.
    """
    if wave_16k.numel() < WINDOW_SAMPLES:
        raise AudioError(
            f"{source}: too short for one fbank window: {wave_16k.numel()} samples at 16 kHz, "
            f"need at least {WINDOW_SAMPLES} ({FRAME_LENGTH_MS:g} ms)"
        )
    wave_16k = wave_16k - wave_16k.mean()  # (S,)
    return torchaudio.compliance.kaldi.fbank(
        wave_16k.unsqueeze(0),
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
        frame_length=FRAME_LENGTH_MS,
    )  # (n_frames, 128)


def pad_or_crop(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    """Zero-pad at the end or crop (keeping the start) ``(n_frames, F)`` to ``(target_length, F)``."""
    n_frames = fbank.size(0)
    if n_frames < target_length:
        return F.pad(fbank, (0, 0, 0, target_length - n_frames))  # (T, F)
    return fbank[:target_length]  # (T, F)


def normalize(fbank: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """``(x - mean) / (2 * std)``, the AST/EAT convention."""
    return (fbank - stats.mean) / (2.0 * stats.std)


def resolve_norm_stats(norm: Union[str, NormStats, Tuple[float, float], None]) -> NormStats:
    """Accept a dataset name (``audioset``, ``esc50``, ``spcv2``), a ``NormStats``, ``(mean, std)`` or the
    text ``"NAME"`` / ``"MEAN,STD"`` (command lines); ``None`` is AudioSet. ``ValueError`` otherwise."""
    if norm is None:
        return NORM_STATS["audioset"]
    if isinstance(norm, str) and "," in norm:
        try:
            norm = tuple(float(v) for v in norm.split(","))
        except ValueError:
            raise ValueError(f"expected NAME or MEAN,STD (e.g. -4.268,4.569), got {norm!r}") from None
        if len(norm) != 2:
            raise ValueError(f"expected NAME or MEAN,STD (e.g. -4.268,4.569), got {','.join(map(str, norm))!r}")
    if isinstance(norm, NormStats):
        stats = norm
    elif isinstance(norm, str):
        if norm not in NORM_STATS:
            raise ValueError(f"unknown normalisation {norm!r}; expected one of {sorted(NORM_STATS)} or (mean, std)")
        stats = NORM_STATS[norm]
    else:
        mean, std = norm
        stats = NormStats(float(mean), float(std))
    if not (math.isfinite(stats.mean) and math.isfinite(stats.std) and stats.std > 0):
        raise ValueError(f"normalisation needs a finite mean and a positive std, got {stats}")
    return stats


def training_norm_stats(task: Any, prefix: str = "task") -> NormStats:
    """The statistics a training run normalises with, from its task config (a dataclass, a DictConfig or
    a checkpoint's plain dict; missing keys read as unset): ``norm_mean`` / ``norm_std`` when given, else
    ESC-50 with ``esc50_eval``, Speech Commands v2 with ``spcv2_eval``, else AudioSet (reference §5.2).

    The one rule for the tasks, the Python API, the scripts and the HF conversion. ``ValueError`` names
    ``{prefix}.<field>`` for a contradictory or invalid combination.
    """
    def get(key):
        return task.get(key) if hasattr(task, "get") else getattr(task, key, None)

    esc50, spcv2, mean, std = bool(get("esc50_eval")), bool(get("spcv2_eval")), get("norm_mean"), get("norm_std")
    if esc50 and spcv2:
        raise ValueError(f"{prefix}.esc50_eval and {prefix}.spcv2_eval are both true; set at most one")
    if (mean is None) != (std is None):
        missing = "norm_std" if std is None else "norm_mean"
        raise ValueError(f"{prefix}.{missing} is unset: give both {prefix}.norm_mean and {prefix}.norm_std, or neither")
    if mean is not None:
        if esc50 or spcv2:
            flag = "esc50_eval" if esc50 else "spcv2_eval"
            raise ValueError(f"{prefix}.norm_mean/norm_std and {prefix}.{flag} both choose the statistics; set one")
        if not math.isfinite(float(mean)):
            raise ValueError(f"{prefix}.norm_mean={mean!r}: expected a finite number")
        if not (math.isfinite(float(std)) and float(std) > 0):
            raise ValueError(f"{prefix}.norm_std={std!r}: expected a finite positive number")
        return NormStats(float(mean), float(std))
    return NORM_STATS["esc50" if esc50 else "spcv2" if spcv2 else "audioset"]


class FbankFrontEnd:
    """Waveform (any rate, any channel count) -> normalised fbank ``(1, target_length, 128)``.

    Args:
        target_length: output frames, a positive multiple of 16.
        norm: dataset statistics: a name in ``NORM_STATS``, a ``NormStats`` or ``(mean, std)``.
    """

    def __init__(self, target_length: int = 1024, norm: Union[str, NormStats, Tuple[float, float], None] = "audioset"):
        self.target_length = check_target_length(target_length)
        self.stats = resolve_norm_stats(norm)

    def __repr__(self) -> str:
        return f"FbankFrontEnd(target_length={self.target_length}, mean={self.stats.mean}, std={self.stats.std})"

    def features(self, wave_16k: torch.Tensor, source: str = "audio") -> torch.Tensor:
        """``(S,)`` 16 kHz mono -> ``(1, T, 128)`` normalised fbank."""
        fbank = wave_to_fbank(wave_16k, source)  # (n_frames, 128)
        fbank = pad_or_crop(fbank, self.target_length)  # (T, 128): padding BEFORE normalising
        return normalize(fbank, self.stats).unsqueeze(0)  # (1, T, 128)

    def __call__(self, wave: Union[np.ndarray, torch.Tensor], sample_rate: int, source: str = "audio") -> torch.Tensor:
        """``(S,)`` or ``(S, C)`` at ``sample_rate`` -> ``(1, T, 128)``."""
        return self.features(to_mono_16k(wave, sample_rate, source), source)

    def windows(self, wave: Union[np.ndarray, torch.Tensor], sample_rate: int, source: str = "audio") -> Tuple[torch.Tensor, int]:
        """A clip of any length as consecutive ``target_length``-frame windows (the last one zero-padded).

        Returns:
            ``(W, 1, T, 128)`` normalised windows and the clip's real frame count (``W = ceil(frames / T)``).
        """
        fbank = wave_to_fbank(to_mono_16k(wave, sample_rate, source), source)  # (n_frames, 128)
        n_frames = fbank.size(0)
        count = -(-n_frames // self.target_length)
        padded = pad_or_crop(fbank, count * self.target_length)  # (W*T, 128)
        windows = normalize(padded, self.stats).view(count, 1, self.target_length, fbank.size(1))  # (W, 1, T, 128)
        return windows, n_frames

    def from_file(self, path: Union[str, Path], expected_samples: Optional[int] = None) -> torch.Tensor:
        """Read ``path`` and return ``(1, T, 128)``; ``expected_samples`` checks a manifest's length."""
        wave, sample_rate = read_audio(path)  # (S, C)
        if expected_samples is not None and wave.shape[0] != expected_samples:
            raise AudioError(
                f"{path}: has {wave.shape[0]} samples but the manifest lists {expected_samples}; "
                f"the file changed or was truncated since the manifest was written"
            )
        return self(wave, sample_rate, str(path))
