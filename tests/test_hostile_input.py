"""Hostile input, property-based: the front end, the manifest / label readers, the datasets, the Python API.

Every generated case must either give the right answer, checked against an expectation that does not
come from the code under test (closed forms: the Kaldi log floor, ``ceil(S * 16000 / rate)`` samples,
``1 + (n - 400) // 160`` frames, the band-limited tone at the new sample times; or a simpler input that
must give the same result: mono for equal channels, ``q / 32768`` for int16 ``q``, the clean file for a
BOM / CRLF one), or raise the documented error (``AudioError`` / ``ManifestError`` / ``ValueError``)
naming the input and what was expected. Never a crash inside torch / numpy, never a silent wrong value.

Hypothesis draws the structure (rates, lengths, channels, dtypes, positions, line ends); the samples come
from numpy generators seeded by the drawn seed, so examples stay small. ``derandomize=True``: the same
examples every run (no flaky CI) and no example database (Hypothesis still keeps a cache in .hypothesis/,
which it git-ignores itself).
"""

import math
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import eat_plugin
from conftest import write_wav
from eat_plugin.api import EATModel
from eat_plugin.data.datasets import FbankDataset, LabelledFbankDataset
from eat_plugin.data.fbank import NORM_STATS, AudioError, FbankFrontEnd, read_audio, to_mono_16k, wave_to_fbank
from eat_plugin.data.manifest import (
    Clip,
    ManifestError,
    read_label_descriptors,
    read_labels,
    read_manifest,
    write_label_descriptors,
    write_split,
)
from helpers import TARGET_LENGTH, save_finetuned, save_pretrained

PROPERTY = settings(deadline=None, derandomize=True, database=None, max_examples=20,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FLOOR = math.log(np.finfo(np.float32).eps)  # Kaldi fbank: log(max(energy, float32 eps)); silence gives exactly this
STATS = NORM_STATS["audioset"]
FLOOR_NORM = (FLOOR - STATS.mean) / (2 * STATS.std)  # a silent frame, normalised
PAD_NORM = (0.0 - STATS.mean) / (2 * STATS.std)  # a padding frame (zero-padded before normalising)
PCM = {"int8": (0, 2**7), "uint8": (128, 2**7), "int16": (0, 2**15), "int32": (0, 2**31)}  # offset, full scale
STANDARD_RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000, 384000]
# 1 Hz .. 384 kHz, with the awkward ones named: 7919 (prime), 22051 / 383999 (ratio to 16 kHz irreducible:
# torchaudio's kernel alone would take 1.4 / 24 GB).
RATES = st.one_of(st.sampled_from([1, 2, 7, 100, 7919, 22051, 383999, *STANDARD_RATES]), st.integers(1, 384_000))
SEEDS = st.integers(0, 2**32 - 1)


def samples_16k(num_samples: int, rate: int) -> int:
    """Resampled length: ``ceil(S * 16000 / rate)``."""
    return -(-num_samples * 16000 // rate)


def frames_of(num_samples_16k: int) -> int:
    """Kaldi frames with snip_edges: 25 ms windows every 10 ms."""
    return 0 if num_samples_16k < 400 else 1 + (num_samples_16k - 400) // 160


def pcm(wave: np.ndarray, dtype: str) -> np.ndarray:
    """Float samples in [-1, 1] -> integer PCM of ``dtype`` (clipped, rounded)."""
    offset, scale = PCM[dtype]
    info = np.iinfo(dtype)
    return np.clip(np.round(wave * scale) + offset, info.min, info.max).astype(dtype)


def pcm_value(q: np.ndarray) -> np.ndarray:
    """What integer PCM means: ``(q - offset) / full scale``, in float64."""
    offset, scale = PCM[q.dtype.name]
    return (q.astype(np.float64) - offset) / scale


def noise(num_samples: int, seed: int, channels: int = 0) -> np.ndarray:
    """Broadband float32 noise in (-1, 1): energy in every mel band."""
    rng = np.random.default_rng(seed)
    shape = (num_samples, channels) if channels else (num_samples,)
    return np.clip(0.25 * rng.standard_normal(shape), -0.99, 0.99).astype(np.float32)


@contextmanager
def scratch():
    """A fresh directory per hypothesis example (function-scoped tmp_path is shared between examples)."""
    path = Path(tempfile.mkdtemp(prefix="eat_hostile_"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ============================================================================================ front end


@settings(PROPERTY, max_examples=25)
@given(rate=RATES, seconds=st.floats(0.03, 0.12), channels=st.integers(1, 8),
       dtype=st.sampled_from(["float32", "float64", "float16", *PCM]))
@example(rate=1, seconds=0.03, channels=1, dtype="float32")  # 1 sample at 1 Hz: one second at 16 kHz
@example(rate=383999, seconds=0.12, channels=8, dtype="int16")
def test_silence_at_any_rate_is_the_kaldi_floor_with_the_closed_form_length(rate, seconds, channels, dtype):
    num_samples = max(1, math.ceil(seconds * rate))
    zero = PCM[dtype][0] if dtype in PCM else 0  # uint8 silence is 128
    wave = np.full((num_samples, channels), zero, dtype=dtype)
    mono = to_mono_16k(wave, rate, "silence.wav")
    assert mono.shape == (samples_16k(num_samples, rate),) and torch.count_nonzero(mono) == 0

    windows, n_frames = FbankFrontEnd(64).windows(wave, rate, "silence.wav")  # (W, 1, 64, 128)
    assert n_frames == frames_of(samples_16k(num_samples, rate))
    assert windows.shape == (-(-n_frames // 64), 1, 64, 128)
    flat = windows.reshape(-1, 128)
    torch.testing.assert_close(flat[:n_frames], torch.full((n_frames, 128), FLOOR_NORM), rtol=0, atol=1e-6)
    torch.testing.assert_close(flat[n_frames:], torch.full_like(flat[n_frames:], PAD_NORM), rtol=0, atol=1e-6)


@settings(PROPERTY, max_examples=20)
@given(level=st.floats(-1.0, 1.0), channels=st.integers(1, 8), num_samples=st.integers(400, 20000),
       dtype=st.sampled_from(["float32", "float64", *PCM]))
@example(level=1.0, channels=2, num_samples=16000, dtype="float32")  # clipped at full scale
@example(level=-1.0, channels=1, num_samples=400, dtype="int16")  # -32768: the most negative code
def test_dc_and_clipped_full_scale_dc_give_the_floor(level, channels, num_samples, dtype):
    wave = np.full((num_samples, channels), level, dtype=np.float64)
    wave = pcm(wave, dtype) if dtype in PCM else wave.astype(dtype)
    fbank = wave_to_fbank(to_mono_16k(wave, 16000, "dc.wav"), "dc.wav")  # DC removal leaves silence
    assert fbank.shape == (frames_of(num_samples), 128)
    torch.testing.assert_close(fbank, torch.full_like(fbank, FLOOR), rtol=0, atol=1e-5)


def empty_mel_filters() -> np.ndarray:
    """``(128,)`` bool: HTK mel triangles (20 Hz - 8 kHz, 512-point FFT at 16 kHz) that hold no FFT bin.

    The lowest filters are narrower than the 31.25 Hz bin spacing, so their energy is 0 for any input.
    """
    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    low, delta = mel(20.0), (mel(8000.0) - mel(20.0)) / 129
    bins = mel(np.arange(256) * 16000 / 512)  # (256,)
    left = low + np.arange(128) * delta  # (128,); the right edge is two steps further
    return ~((bins[None] > left[:, None]) & (bins[None] < left[:, None] + 2 * delta)).any(1)


@settings(PROPERTY, max_examples=15)
@given(seed=SEEDS, gain=st.floats(0.01, 100.0))
def test_a_gain_shifts_every_log_mel_value_by_2_ln_gain_and_loud_float_is_not_clipped(seed, gain):
    wave = noise(4000, seed)
    reference = wave_to_fbank(to_mono_16k(wave, 16000))  # (23, 128)
    scaled = wave_to_fbank(to_mono_16k((wave.astype(np.float64) * gain).astype(np.float32), 16000))
    empty = torch.from_numpy(empty_mel_filters())
    assert 0 < int(empty.sum()) < 20
    torch.testing.assert_close(scaled[:, empty], torch.full_like(scaled[:, empty], FLOOR), rtol=0, atol=1e-5)
    above = reference > FLOOR + 1e-3  # energy above the floor: log(E * gain^2), floored again
    assert above[:, ~empty].float().mean() > 0.99
    expected = (reference + 2 * math.log(gain)).clamp(min=FLOOR)
    torch.testing.assert_close(scaled[above], expected[above], rtol=0, atol=2e-3)


@settings(PROPERTY, max_examples=20)
@given(seed=SEEDS, rate=st.sampled_from(STANDARD_RATES + [22051]), channels=st.integers(1, 8),
       dtype=st.sampled_from(list(PCM)), as_tensor=st.booleans())
def test_integer_pcm_means_its_full_scale_value(seed, rate, channels, dtype, as_tensor):
    """int8 / uint8 / int16 / int32 arrays give the fbank of ``(q - offset) / full scale`` (soundfile's reading)."""
    q = pcm(noise(rate // 10, seed, channels), dtype)  # 0.1 s, (S, C)
    if as_tensor and dtype != "uint8":  # torch has no uint8 audio convention worth testing twice
        q = torch.from_numpy(q)
    front_end = FbankFrontEnd(16)
    expected = front_end.windows(pcm_value(np.asarray(q)).astype(np.float32), rate)[0]
    torch.testing.assert_close(front_end.windows(q, rate)[0], expected, rtol=0, atol=1e-6)


@settings(PROPERTY, max_examples=10)
@given(seed=SEEDS, gain=st.floats(0.5, 4.0), rate=st.sampled_from([16000, 22050, 44100, 48000]))
def test_int16_and_float32_of_one_clipped_signal_agree_within_1e_3(seed, gain, rate):
    """The same signal (gain > 1 clips it) as an int16 file and as float32: fbank within 1e-3 (normalised).

    The gap is int16 quantisation (~1e-5 of full scale) and the 32767 / 32768 scale: far below 1e-3.
    """
    wave = np.clip(noise(rate // 5, seed) * gain, -1.0, 32767 / 32768).astype(np.float32)
    with scratch() as tmp:
        path = write_wav(tmp / "clip.wav", wave, rate, subtype="PCM_16")
        front_end = FbankFrontEnd(32)
        torch.testing.assert_close(front_end.from_file(path), front_end(wave, rate), rtol=0, atol=1e-3)
        q, _ = sf.read(str(path), dtype="int16")
        torch.testing.assert_close(front_end(q, rate), front_end.from_file(path), rtol=0, atol=1e-6)


@settings(PROPERTY, max_examples=15)
@given(seed=SEEDS, rate=st.sampled_from(STANDARD_RATES + [22051]), channels=st.integers(2, 8),
       fmt=st.sampled_from([("wav", "PCM_16"), ("wav", "FLOAT"), ("flac", "PCM_24"), ("wav", "PCM_U8")]))
def test_equal_channels_down_mix_to_the_mono_result(seed, rate, channels, fmt):
    """Within 1e-4 (normalised): the mean of C equal float32 values may be 1 ulp off the value."""
    suffix, subtype = fmt
    mono = noise(rate // 10, seed)
    front_end = FbankFrontEnd(16)
    torch.testing.assert_close(front_end(np.repeat(mono[:, None], channels, 1), rate), front_end(mono, rate),
                               rtol=0, atol=1e-4)
    with scratch() as tmp:
        one = write_wav(tmp / f"mono.{suffix}", mono, rate, subtype=subtype)
        many = write_wav(tmp / f"multi.{suffix}", np.repeat(mono[:, None], channels, 1), rate, subtype=subtype)
        assert read_audio(many)[0].shape == (len(mono), channels)
        torch.testing.assert_close(front_end.from_file(many), front_end.from_file(one), rtol=0, atol=1e-4)


@settings(PROPERTY, max_examples=25)
@given(rate=st.one_of(st.sampled_from([50, 999, 7919, 22051, 383999, *STANDARD_RATES]), st.integers(50, 384_000)),
       relative=st.floats(0.05, 0.35), seed=SEEDS)
def test_a_tone_at_any_rate_resamples_to_the_same_tone_at_16k(rate, relative, seed):
    """Band-limited resampling: the output samples are the tone itself at times k / 16000 (2% of amplitude)."""
    band = min(rate, 16000)
    freq = relative * band  # well inside both Nyquist limits
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    num_samples = math.ceil((0.1 + 24 / band) * rate)
    wave = 0.5 * np.sin(2 * np.pi * freq * np.arange(num_samples) / rate + phase)
    out = to_mono_16k(wave, rate).numpy()  # float64 in, float32 out
    assert out.shape == (samples_16k(num_samples, rate),)
    edge = math.ceil(16000 * 8 / band) + 2  # the filter's reach into the zero padding at either end
    k = np.arange(edge, len(out) - edge)
    np.testing.assert_allclose(out[k], 0.5 * np.sin(2 * np.pi * freq * k / 16000 + phase), rtol=0, atol=0.01)


@settings(PROPERTY, max_examples=25)
@given(rate=RATES, data=st.data())
@example(rate=44100, data=None)  # 0 samples at 44.1 kHz used to crash inside torchaudio's resampler
def test_anything_shorter_than_one_window_raises_too_short(rate, data):
    """Lengths 0 .. ``floor(399 * rate / 16000)`` give < 400 samples at 16 kHz: AudioError, never a crash."""
    longest = 399 * rate // 16000
    num_samples = 0 if data is None else data.draw(st.integers(0, longest))
    channels = 1 if data is None else data.draw(st.integers(1, 8))
    wave = np.zeros((num_samples, channels), np.float32)
    with pytest.raises(AudioError, match=rf"short\.wav: too short for one fbank window: {samples_16k(num_samples, rate)} "
                                         rf"samples at 16 kHz, need at least 400"):
        FbankFrontEnd(16)(wave, rate, "short.wav")


def test_one_sample_and_empty_files():
    with scratch() as tmp:
        one = write_wav(tmp / "one.wav", np.array([0.5], np.float32), 16000)
        assert read_audio(one)[0].shape == (1, 1)
        with pytest.raises(AudioError, match=r"one\.wav: too short for one fbank window: 1 samples"):
            FbankFrontEnd(16).from_file(one)
        exact = write_wav(tmp / "exact.wav", noise(400, 0), 16000)  # exactly one window: one frame
        assert FbankFrontEnd(16).windows(*read_audio(exact))[1] == 1
        empty = write_wav(tmp / "empty.wav", np.zeros((0, 3), np.float32), 44100)
        with pytest.raises(AudioError, match=r"empty\.wav: contains no samples"):
            read_audio(empty)


@settings(PROPERTY, max_examples=20)
@given(seed=SEEDS, channels=st.integers(1, 8), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       dtype=st.sampled_from(["float16", "float32", "float64"]), rate=st.sampled_from([16000, 44100, 22051]),
       data=st.data())
def test_nan_or_inf_anywhere_raises_naming_the_input(seed, channels, bad, dtype, rate, data):
    wave = noise(2000, seed, channels).astype(dtype)
    wave[data.draw(st.integers(0, 1999)), data.draw(st.integers(0, channels - 1))] = bad
    with pytest.raises(AudioError, match=r"clip 7: contains 1 NaN/Inf samples; expected finite audio"):
        FbankFrontEnd(16)(wave, rate, "clip 7")
    with pytest.raises(AudioError, match=r"clip 7: contains 1 NaN/Inf samples"):
        to_mono_16k(torch.from_numpy(wave), rate, "clip 7")
    if dtype != "float16":  # soundfile writes float / double WAV
        with scratch() as tmp:
            path = write_wav(tmp / "bad.wav", wave, rate, subtype="FLOAT" if dtype == "float32" else "DOUBLE")
            with pytest.raises(AudioError, match=r"bad\.wav: contains 1 NaN/Inf samples"):
                read_audio(path)


@pytest.mark.parametrize("wave, expected", [
    (np.zeros((16000, 0), np.float32), r"at least one channel, got \(16000, 0\)"),
    (np.zeros((2, 16000), np.float32), r"reads as 16000 channels of 2 samples; expected channels last"),
    (np.zeros((800, 16000), np.float32), r"reads as 16000 channels of 800 samples"),  # a batch is not a clip
    (np.zeros((8000, 2, 2), np.float32), r"expected audio of shape \(samples,\) or \(samples, channels\)"),
    (np.float32(0.5), r"expected audio of shape \(samples,\) or \(samples, channels\), got \(\)"),
    (np.zeros(8000, np.complex64), r"expected float or int8/uint8/int16/int32 PCM samples, got dtype complex64"),
    (np.zeros(8000, bool), r"got dtype bool"),
    (np.zeros(8000, np.int64), r"got dtype int64"),
    (np.zeros(8000, np.uint16), r"got dtype uint16"),
    (np.array(["a"] * 8000), r"got dtype <U1"),
    (torch.zeros(8000, dtype=torch.int64), r"got dtype int64"),
    ([[0.0, 0.1], [0.2]], r"expected an array of audio samples, got list"),
    ("clip.wav", r"got dtype <U8"),  # a path where a waveform belongs
])
def test_arrays_that_are_not_audio_raise_naming_what_was_expected(wave, expected):
    with pytest.raises(AudioError, match=rf"^input 3: .*{expected}"):
        FbankFrontEnd(16)(wave, 16000, "input 3")


@pytest.mark.parametrize("rate", [0, -8000, 16000.0, "16000", None, True, 2.5])
def test_sample_rate_that_is_not_a_positive_integer(rate):
    with pytest.raises(AudioError, match=r"input 0: sample rate must be a positive integer in Hz"):
        FbankFrontEnd(16)(noise(8000, 0), rate, "input 0")


# =================================================================================== manifests, labels

PATH_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r")  # what the writer accepts
RELPATHS = st.lists(st.text(PATH_CHARS, min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=6, unique=True)
LABEL_IDS = st.lists(st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="/_-.:"),
                             min_size=1, max_size=8), min_size=1, max_size=5, unique=True)
NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12).map(str.strip)


def clean_files(tmp: Path, relpaths, counts, ids, names, labels):
    """The one writer's files; labels[i] are indices into ids."""
    (tmp / "audio").mkdir(exist_ok=True)
    clips = [Clip(p, n, tuple(ids[j] for j in lab)) for p, n, lab in zip(relpaths, counts, labels)]
    write_split(tmp, "train", tmp / "audio", clips)
    write_label_descriptors(tmp / "label_descriptors.csv", ids, names)


def read_all(tmp: Path, tsv="train.tsv", lbl="train.lbl", csv_name="label_descriptors.csv"):
    manifest = read_manifest(tmp / tsv)
    descriptors = read_label_descriptors(tmp / csv_name)
    return manifest, descriptors, read_labels(tmp / lbl, descriptors, manifest)


@st.composite
def split_files(draw):
    relpaths = draw(RELPATHS)
    counts = draw(st.lists(st.integers(0, 10**9), min_size=len(relpaths), max_size=len(relpaths)))
    ids = draw(LABEL_IDS)
    names = draw(st.lists(NAMES, min_size=len(ids), max_size=len(ids)))
    labels = [draw(st.lists(st.integers(0, len(ids) - 1), min_size=1, max_size=len(ids), unique=True))
              for _ in relpaths]
    return relpaths, counts, ids, names, labels


@settings(PROPERTY, max_examples=60)
@given(files=split_files())
@example(files=(["a\x0cb.wav", "c\u2028d.wav", "e\x85.flac", " padded .wav"], [1, 2, 3, 4], ["x"], ["X"],
                [[0]] * 4))  # line separators that are not line ends; a path ending in a space
def test_whatever_the_writer_writes_reads_back(files):
    relpaths, counts, ids, names, labels = files
    with scratch() as tmp:
        clean_files(tmp, relpaths, counts, ids, names, labels)
        manifest, descriptors, read = read_all(tmp)
    assert [(r.relpath, r.num_samples, r.line) for r in manifest.rows] == [
        (p, n, i + 2) for i, (p, n) in enumerate(zip(relpaths, counts))]
    assert descriptors.ids == ids and descriptors.names == names
    assert read == labels


def restyle(text: str, newline: str, bom: bool, final_newline: bool, blank_after: set) -> bytes:
    lines = text.split("\n")[:-1]  # the writer ends every file with "\n"
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i in blank_after:
            out.append("")
    body = newline.join(out) + (newline if final_newline else "")
    return (b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8")


@settings(PROPERTY, max_examples=40)
@given(files=split_files(), newline=st.sampled_from(["\n", "\r\n", "\r"]), bom=st.booleans(),
       final_newline=st.booleans(), blanks=st.sets(st.integers(1, 8), max_size=3))
@example(files=(["a.wav"], [5], ["/m/a"], ["A"], [[0]]), newline="\r\n", bom=True, final_newline=True, blanks=set())
def test_bom_crlf_cr_and_blank_lines_parse_like_the_clean_files(files, newline, bom, final_newline, blanks):
    relpaths, counts, ids, names, labels = files
    with scratch() as tmp:
        clean_files(tmp, relpaths, counts, ids, names, labels)
        manifest, descriptors, expected = read_all(tmp)
        for name in ("train.tsv", "train.lbl", "label_descriptors.csv"):
            text = (tmp / name).read_text(encoding="utf-8")
            (tmp / f"styled_{name}").write_bytes(restyle(text, newline, bom, final_newline, blanks))
        styled_manifest, styled_descriptors, styled = read_all(tmp, "styled_train.tsv", "styled_train.lbl",
                                                               "styled_label_descriptors.csv")
    assert styled_manifest.root == manifest.root
    assert [(r.relpath, r.num_samples) for r in styled_manifest.rows] == [(r.relpath, r.num_samples) for r in manifest.rows]
    # line numbers are the styled file's own: each blank line after line i shifts the rows below it
    assert [r.line for r in styled_manifest.rows] == [
        r.line + sum(1 for b in blanks if b < r.line - 1) for r in manifest.rows]
    assert (styled_descriptors.ids, styled_descriptors.names) == (descriptors.ids, descriptors.names)
    assert styled == expected


@settings(PROPERTY, max_examples=30)
@given(files=split_files(), which=st.sampled_from(["train.tsv", "train.lbl", "label_descriptors.csv"]),
       data=st.data(), junk=st.sampled_from([b"\xe9", b"\xff\xfe", b"\xc3", b"\x80abc"]),
       newline=st.sampled_from([b"\n", b"\r\n", b"\r"]), bom=st.booleans())
def test_non_utf8_files_raise_manifest_error_naming_file_and_line(files, which, data, junk, newline, bom):
    relpaths, counts, ids, names, labels = files
    with scratch() as tmp:
        clean_files(tmp, relpaths, counts, ids, names, labels)
        lines = (tmp / which).read_bytes().split(b"\n")[:-1]
        bad = data.draw(st.integers(0, len(lines) - 1))
        lines[bad] = lines[bad] + junk  # e.g. a Latin-1 "\u00e9"
        (tmp / which).write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines) + newline)
        with pytest.raises(ManifestError, match=rf"{which}: line {bad + 1}: byte 0x{junk[0]:02x} is not valid UTF-8"):
            read_all(tmp)


@settings(PROPERTY, max_examples=40)
@given(files=split_files(), data=st.data(), extra=st.sampled_from(["", "\textra", "\t1\t2", "\t\t"]))
def test_missing_or_extra_manifest_columns_name_the_line(files, data, extra):
    relpaths, counts, ids, names, labels = files
    with scratch() as tmp:
        clean_files(tmp, relpaths, counts, ids, names, labels)
        lines = (tmp / "train.tsv").read_text(encoding="utf-8").split("\n")[:-1]
        bad = data.draw(st.integers(1, len(lines) - 1))
        # "" drops the count column; the others add columns after it
        lines[bad] = lines[bad].rsplit("\t", 1)[0] if not extra else lines[bad] + extra
        (tmp / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        fields = lines[bad].count("\t") + 1
        with pytest.raises(ManifestError, match=rf"train\.tsv: line {bad + 1}: expected 2 tab-separated fields "
                                                rf"'relpath<TAB>num_samples', got {fields}"):
            read_manifest(tmp / "train.tsv")


@pytest.mark.parametrize("count", ["-1", "ten", "1.5", "", "1e3"])
def test_manifest_sample_count_that_is_not_a_count(tmp_path, count):
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\na.wav\t10\nb.wav\t{count}\n")
    with pytest.raises(ManifestError, match=r"train\.tsv: line 3: expected 'relpath<TAB>num_samples' with a "
                                            r"non-negative integer sample count"):
        read_manifest(tmp_path / "train.tsv")


@settings(PROPERTY, max_examples=40)
@given(files=split_files(), data=st.data(), blanks=st.sets(st.integers(0, 6), max_size=3))
def test_unknown_label_id_raises_naming_the_lbl_file_and_its_line(files, data, blanks):
    relpaths, counts, ids, names, labels = files
    with scratch() as tmp:
        clean_files(tmp, relpaths, counts, ids, names, labels)
        rows = (tmp / "train.lbl").read_text(encoding="utf-8").split("\n")[:-1]
        bad = data.draw(st.integers(0, len(rows) - 1))
        unknown = "/m/" + "z" * 9  # not in LABEL_IDS (at most 8 characters)
        rows[bad] += "," + unknown
        lines, bad_line = [], None
        for i, row in enumerate(rows):  # blank lines before some rows: the error names the file's own line
            if i in blanks:
                lines.append("")
            lines.append(row)
            if i == bad:
                bad_line = len(lines)
        (tmp / "train.lbl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(ManifestError, match=rf"train\.lbl: line {bad_line}: unknown label id\(s\) \['{unknown}'\]; "
                                                r"not in label_descriptors\.csv"):
            read_all(tmp)


@pytest.mark.parametrize("line, message", [
    ("a.wav", r"line 1: expected 2 fields 'key<TAB>id1,id2,...', got 1"),
    ("a.wav\t/m/a\t/m/b", r"line 1: expected 2 fields 'key<TAB>id1,id2,...', got 3"),
    ("a.wav\t", r"line 1: no label ids in ''"),
    ("a.wav\t,", r"line 1: no label ids in ','"),
    ("a.wav\t/m/a,,/m/a", r"line 1: label id\(s\) \['/m/a'\] listed more than once"),
])
def test_label_lines_with_missing_extra_or_empty_columns(tmp_path, line, message):
    (tmp_path / "x.lbl").write_text(line + "\n")
    with pytest.raises(ManifestError, match=rf"x\.lbl: {message}"):
        read_labels(tmp_path / "x.lbl", read_descriptors_text(tmp_path, "0,/m/a,A\n1,/m/b,B\n"))


def read_descriptors_text(tmp: Path, text: str):
    (tmp / "d.csv").write_text(text, encoding="utf-8")
    return read_label_descriptors(tmp / "d.csv")


@pytest.mark.parametrize("text, message", [
    ('0,/m/a,"Cat"\n1,/m/b,Cat, domestic\n', r"line 2: expected 'index,id,display name' \(quote a name that "
                                             r"contains commas\), got 4 fields"),  # would silently cut the name
    ("0,/m/a,A\n-1,/m/b,B\n", r"line 2: class index -1 is negative"),
    ("0,,A\n", r"line 1: class 0 has an empty label id"),
    ('0,/m/a,"two\nlines"\n1,/m/a,B\n', r"line 3: duplicate label id '/m/a'"),  # a record's first line
])
def test_descriptor_rows_with_extra_columns_or_bad_values(tmp_path, text, message):
    with pytest.raises(ManifestError, match=rf"d\.csv: {message}"):
        read_descriptors_text(tmp_path, text)


def test_writer_refuses_label_ids_that_would_not_read_back(tmp_path):
    for bad in ["a,b", '"quoted']:
        with pytest.raises(ManifestError, match="it would not read back"):
            write_label_descriptors(tmp_path / "d.csv", ["ok", bad])
    for blank in [" ", "\x0c", "\u2028"]:  # a row that would read back as a blank line, i.e. vanish
        with pytest.raises(ManifestError, match="is blank or contains a tab/newline"):
            write_split(tmp_path, "train", tmp_path, [Clip(blank, 10, ("x",))])


# ============================================================================================ datasets


def write_split_dir(tmp: Path, waves, rate: int, subtype: str, labels, counts=None, styled=False) -> Path:
    for i, wave in enumerate(waves):
        write_wav(tmp / "audio" / f"c{i}.wav", wave, rate, subtype=subtype)
    counts = counts or [len(w) for w in waves]
    clips = [Clip(f"c{i}.wav", n, lab) for i, (n, lab) in enumerate(zip(counts, labels))]
    write_split(tmp, "train", tmp / "audio", clips)
    write_label_descriptors(tmp / "label_descriptors.csv", ["dog", "cat", "bird"])
    if styled:  # what a Windows editor saves
        for name in ("train.tsv", "train.lbl", "label_descriptors.csv"):
            text = (tmp / name).read_text(encoding="utf-8")
            (tmp / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    return tmp


@settings(PROPERTY, max_examples=8)
@given(seed=SEEDS, rate=st.sampled_from([8000, 16000, 44100, 48000, 22051]), channels=st.integers(1, 8),
       subtype=st.sampled_from(["PCM_16", "FLOAT", "PCM_24"]), styled=st.booleans(),
       labels=st.lists(st.lists(st.sampled_from(["dog", "cat", "bird"]), min_size=1, max_size=3, unique=True),
                       min_size=1, max_size=3))
def test_dataset_items_equal_the_mono_front_end_and_the_written_labels(seed, rate, channels, subtype, styled, labels):
    monos = [noise(rate // 20 + 37 * i, seed + i) for i in range(len(labels))]  # 50 ms and up
    with scratch() as tmp:
        write_split_dir(tmp, [np.repeat(m[:, None], channels, 1) for m in monos], rate, subtype, labels, styled=styled)
        for i, m in enumerate(monos):
            write_wav(tmp / "mono" / f"c{i}.wav", m, rate, subtype=subtype)
        descriptors = read_label_descriptors(tmp / "label_descriptors.csv")
        dataset = LabelledFbankDataset(tmp / "train.tsv", tmp / "train.lbl", descriptors, target_length=16)
        plain = FbankDataset(tmp / "train.tsv", target_length=16)
        front_end = FbankFrontEnd(16)
        for i, lab in enumerate(labels):
            expected = front_end.from_file(tmp / "mono" / f"c{i}.wav")
            torch.testing.assert_close(dataset[i]["imgs"], expected, rtol=0, atol=1e-4)
            torch.testing.assert_close(plain[i]["source"], expected, rtol=0, atol=1e-4)
            assert dataset[i]["label"].tolist() == [float(c in lab) for c in ["dog", "cat", "bird"]]


BAD_CLIPS = {
    "nan": r"contains 1 NaN/Inf samples",
    "count": r"has 4000 samples but the manifest lists 4001",
    "short": r"too short for one fbank window: 100 samples",
    "empty": r"contains no samples",
    "missing": r"audio file not found",
    "text": r"not audio or corrupt header",
}


@settings(PROPERTY, max_examples=15)
@given(rows=st.integers(1, 4), data=st.data(), kind=st.sampled_from(sorted(BAD_CLIPS)))
def test_a_bad_clip_raises_naming_the_manifest_line_and_the_file(rows, data, kind):
    bad = data.draw(st.integers(0, rows - 1))
    waves = [noise(4000, i) for i in range(rows)]
    counts = [4000] * rows
    if kind == "nan":
        waves[bad][123] = np.nan
    elif kind == "count":
        counts[bad] = 4001
    elif kind in ("short", "empty"):
        waves[bad] = waves[bad][: 100 if kind == "short" else 0]
        counts[bad] = len(waves[bad])
    with scratch() as tmp:
        write_split_dir(tmp, waves, 16000, "FLOAT", [("dog",)] * rows, counts)
        if kind == "missing":
            (tmp / "audio" / f"c{bad}.wav").unlink()
        elif kind == "text":
            (tmp / "audio" / f"c{bad}.wav").write_text("not a RIFF header\n" * 10)
        dataset = FbankDataset(tmp / "train.tsv", target_length=16)
        for i in range(rows):
            if i != bad:
                assert dataset[i]["source"].shape == (1, 16, 128)
        with pytest.raises(AudioError, match=rf"train\.tsv line {bad + 2}: .*c{bad}\.wav: {BAD_CLIPS[kind]}"):
            dataset[bad]


def test_dataset_refuses_a_bom_less_latin1_manifest_before_reading_audio(tmp_path):
    write_split_dir(tmp_path, [noise(4000, 0)], 16000, "PCM_16", [("dog",)])
    (tmp_path / "train.tsv").write_bytes((tmp_path / "train.tsv").read_bytes() + "caf\u00e9.wav\t10\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"train\.tsv: line 3: byte 0xe9 is not valid UTF-8"):
        FbankDataset(tmp_path / "train.tsv", target_length=16)


# ============================================================================================= the API

CLASSES = ["/m/a", "/m/b", "/m/c"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A multi-label fine-tuned tiny model whose class ids are stored in task_state (no data dir needed)."""
    root = tmp_path_factory.mktemp("hostile_api")
    save_pretrained(root / "pretrain.pt")
    save_finetuned(root / "finetuned.pt", root / "pretrain.pt", CLASSES, seed=1)
    return eat_plugin.load_model(root / "finetuned.pt", batch_size=64)


def network_logits(model, windows: torch.Tensor) -> torch.Tensor:
    """Window-averaged logits straight from the network: ``(W, 1, T, 128)`` -> ``(C,)``."""
    with torch.no_grad():
        return model.network(windows).mean(0)


def closed_form_windows(n_frames: int, frame: torch.Tensor) -> torch.Tensor:
    """``n_frames`` copies of the normalised ``frame`` ``(128,)``, then padding, as ``(W, 1, T, 128)`` windows."""
    count = -(-n_frames // TARGET_LENGTH)
    flat = torch.full((count * TARGET_LENGTH, 128), PAD_NORM)
    flat[:n_frames] = frame
    return flat.view(count, 1, TARGET_LENGTH, 128)


@settings(PROPERTY, max_examples=8)
@given(seed=SEEDS, rate=st.sampled_from([16000, 44100, 48000, 22051]), channels=st.integers(1, 8),
       dtype=st.sampled_from(["float32", "float64", *PCM]))
def test_api_channels_and_dtypes_do_not_change_the_prediction(model, seed, rate, channels, dtype):
    mono = noise(rate // 8, seed)
    mono = pcm(mono, dtype) if dtype in PCM else mono.astype(dtype)
    value = pcm_value(mono).astype(np.float32) if dtype in PCM else mono.astype(np.float32)  # (S,) in [-1, 1)
    wave = np.repeat(mono[:, None], channels, 1)
    expected = model.logits((value, rate))
    torch.testing.assert_close(model.logits((wave, rate)), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(model.logits([(value, rate), (wave, rate)]), expected.repeat(2, 1), rtol=0, atol=1e-4)
    assert [n for n, _ in model.predict((wave, rate), top_k=3)[0]] == [CLASSES[i] for i in expected[0].argsort(descending=True)]


@settings(PROPERTY, max_examples=8)
@given(rate=st.one_of(st.sampled_from([1, 7, 7919, 8000, 16000, 44100, 384000]), st.integers(1, 20000)),
       seconds=st.floats(0.03, 3.0))  # several windows; the costly odd rates above 16 kHz are tested above
def test_api_silence_equals_the_network_on_the_closed_form_fbank(model, rate, seconds):
    num_samples = max(1, math.ceil(seconds * rate))
    n_frames = frames_of(samples_16k(num_samples, rate))
    windows = closed_form_windows(n_frames, torch.full((128,), FLOOR_NORM))
    torch.testing.assert_close(model.logits((np.zeros(num_samples, np.float32), rate))[0], network_logits(model, windows),
                               rtol=0, atol=1e-5)
    assert model.embed((np.zeros(num_samples), rate), "frame").shape == (-(-n_frames // 16) * 8, 32)


def test_api_ten_minute_clip_once(model):
    """10 min at 16 kHz, a 100 Hz tone (one period per 160-sample hop: every frame the same) in one call."""
    period = (0.5 * np.sin(2 * np.pi * np.arange(160) / 160)).astype(np.float32)
    one_second = np.tile(period, 100)
    frames = model.front_end.windows(one_second, 16000)[0].reshape(-1, 128)[: frames_of(16000)]
    torch.testing.assert_close(frames, frames[:1].expand_as(frames), rtol=0, atol=1e-5)  # the premise
    num_samples = 10 * 60 * 16000
    n_frames = frames_of(num_samples)  # 59998 frames: 468 full windows and one of 94 frames
    expected = network_logits(model, closed_form_windows(n_frames, frames[0]))
    assert expected.shape == (len(CLASSES),)
    clip = np.tile(period, num_samples // 160)
    torch.testing.assert_close(model.logits((clip, 16000))[0], expected, rtol=0, atol=1e-4)


def test_api_hostile_calls_raise_the_documented_errors(model):
    good = (noise(8000, 0), 16000)
    nan = noise(8000, 1)
    nan[5] = np.nan
    cases = [
        (lambda: model.predict([good, (nan, 16000)]), AudioError, r"input 1: contains 1 NaN/Inf samples"),
        (lambda: model.predict([]), ValueError, r"expected a path, a \(waveform, sample_rate\) pair or a non-empty list"),
        (lambda: model.embed([]), ValueError, r"non-empty list"),
        (lambda: model.predict(good, top_k=0), ValueError, r"top_k=0: expected a positive integer"),
        (lambda: model.predict(good, top_k=-1), ValueError, r"top_k=-1: expected a positive integer"),
        (lambda: model.predict(good, top_k=1.5), ValueError, r"top_k=1.5: expected a positive integer"),
        (lambda: model.predict(noise(8000, 0)), ValueError, r"input 0: a raw waveform needs its sample rate"),
        (lambda: model.predict([(noise(8000, 0), 16000, "x")]), ValueError, r"input 0: a tuple of 3 items"),
        (lambda: model.predict((noise(100, 0), 16000)), AudioError, r"input 0: too short for one fbank window"),
        (lambda: model.predict((noise(8000, 0), 16000.0)), AudioError, r"input 0: sample rate must be a positive"),
        (lambda: model.predict((np.zeros((2, 16000), np.float32), 16000)), AudioError, r"input 0: .* expected channels last"),
        (lambda: model.predict(12), ValueError, r"expected a path"),
        (lambda: model.predict("nope.wav"), FileNotFoundError, r"nope\.wav: audio file not found"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_api_batch_size_must_be_positive(model):
    with pytest.raises(ValueError, match=r"batch_size=0: expected a positive integer"):
        EATModel(model.network, model.front_end, None, batch_size=0)
