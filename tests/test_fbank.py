"""The audio front end: Kaldi fbank recipe, resampling / down-mix, pad / crop / normalise, bad audio."""

import math

import numpy as np
import pytest
import torch
import torchaudio

from conftest import broadband, tone, write_wav
from eat_plugin.data.fbank import (
    NORM_STATS,
    AudioError,
    FbankFrontEnd,
    NormStats,
    check_target_length,
    normalize,
    num_fbank_frames,
    pad_or_crop,
    read_audio,
    to_mono_16k,
    wave_to_fbank,
)


def kaldi_fbank_reference(wave: np.ndarray) -> np.ndarray:
    """Independent float64 numpy implementation of the official Kaldi recipe at 16 kHz.

    25 ms frames every 10 ms (snip_edges), per-frame DC removal, pre-emphasis 0.97, symmetric Hann
    window, zero-pad to 512, power spectrum, 128 triangular HTK-mel filters 20 Hz-8 kHz, log.
    """
    wave = wave.astype(np.float64) - wave.mean()
    n_frames = 1 + (len(wave) - 400) // 160
    frames = np.stack([wave[i * 160 : i * 160 + 400] for i in range(n_frames)])  # (M, 400)
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * previous
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)
    spectrum = np.abs(np.fft.rfft(frames * window, n=512)) ** 2  # (M, 257)

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    mel_low, mel_high = mel(20.0), mel(8000.0)
    delta = (mel_high - mel_low) / 129
    bin_mel = mel(np.arange(256) * 16000 / 512)  # (256,)
    filters = np.zeros((128, 257))
    for b in range(128):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        up = (bin_mel - left) / (center - left)
        down = (right - bin_mel) / (right - center)
        filters[b, :256] = np.maximum(0.0, np.minimum(up, down))
    energies = spectrum @ filters.T  # (M, 128)
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def test_fbank_matches_independent_kaldi_implementation():
    wave = broadband(1.0)
    ours = wave_to_fbank(torch.from_numpy(wave)).numpy()
    expected = kaldi_fbank_reference(wave)
    assert ours.shape == (num_fbank_frames(16000), 128) == (98, 128)
    np.testing.assert_allclose(ours, expected, atol=2e-3, rtol=0)
    assert np.abs(ours - expected).mean() < 1e-4


def test_front_end_equals_direct_torchaudio_calls():
    wave = broadband(1.5, seed=1)
    front_end = FbankFrontEnd(target_length=128, norm="esc50")
    x = torch.from_numpy(wave)
    direct = torchaudio.compliance.kaldi.fbank(
        (x - x.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )[:128]
    expected = ((direct - (-6.627)) / (2 * 5.359))[None]
    torch.testing.assert_close(front_end(wave, 16000), expected, rtol=0, atol=0)


def dominant_frequency(wave: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * sample_rate / len(wave)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_a_1khz_tone_at_1khz(rate):
    out = to_mono_16k(tone(1000, 1.0, rate), rate)
    assert out.shape == (math.ceil(rate * 1.0 * 16000 / rate),)
    assert abs(dominant_frequency(out, 16000) - 1000) <= 1.0
    assert out.abs().max() == pytest.approx(0.5, abs=0.02)


def test_stereo_is_downmixed_before_resampling():
    rate = 44100
    left, right = tone(1000, 1.0, rate, 0.6), tone(3000, 1.0, rate, 0.6)
    out = to_mono_16k(np.stack([left, right], axis=1), rate)  # (S, 2) as soundfile returns it
    assert out.shape == (16000,)
    spectrum = torch.fft.rfft(out.double()).abs() / (len(out) / 2)
    assert spectrum[1000].item() == pytest.approx(0.3, abs=0.01)  # each channel at half amplitude
    assert spectrum[3000].item() == pytest.approx(0.3, abs=0.01)
    torch.testing.assert_close(out, to_mono_16k((left + right) / 2, rate))


def test_pad_crop_and_normalise_exact_values():
    fbank = torch.arange(20 * 4, dtype=torch.float32).reshape(20, 4)
    padded = pad_or_crop(fbank, 32)
    assert padded.shape == (32, 4)
    assert torch.equal(padded[:20], fbank) and torch.count_nonzero(padded[20:]) == 0
    assert torch.equal(pad_or_crop(fbank, 16), fbank[:16])
    stats = NormStats(-4.268, 4.569)
    assert normalize(torch.tensor([0.0, -4.268, 4.87]), stats).tolist() == pytest.approx(
        [4.268 / 9.138, 0.0, (4.87 + 4.268) / 9.138]
    )


def test_padding_happens_before_normalisation():
    wave = broadband(0.5)  # 48 frames, padded to 64
    out = FbankFrontEnd(64, "audioset")(wave, 16000)[0]
    assert out.shape == (64, 128)
    pad_value = (0 - NORM_STATS["audioset"].mean) / (2 * NORM_STATS["audioset"].std)
    assert pad_value == pytest.approx(0.46706062595753994)
    padded = out[num_fbank_frames(8000):]  # (16, 128)
    torch.testing.assert_close(padded, torch.full_like(padded, pad_value), rtol=0, atol=1e-6)
    real = normalize(wave_to_fbank(torch.from_numpy(wave)), NORM_STATS["audioset"])  # (48, 128)
    torch.testing.assert_close(out[: num_fbank_frames(8000)], real, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, 15, 100, -16, 1000, 64.0, True])
def test_target_length_must_be_a_multiple_of_16(bad):
    with pytest.raises(ValueError, match="target_length"):
        check_target_length(bad)
    with pytest.raises(ValueError, match="target_length"):
        FbankFrontEnd(target_length=bad)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5])
def test_invalid_sample_rate_value(rate):
    with pytest.raises(AudioError, match="sample rate"):
        to_mono_16k(tone(100, 0.1, 16000), rate, "clip.wav")


def test_read_audio_returns_native_rate_and_channels(tmp_path):
    stereo = np.stack([tone(500, 0.5, 22050), tone(700, 0.5, 22050)], axis=1)
    wave, rate = read_audio(write_wav(tmp_path / "s.flac", stereo, 22050))
    assert rate == 22050 and wave.shape == (11025, 2) and wave.dtype == np.float32


# ------------------------------------------------------------------------- bad audio files


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        read_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty.wav: file is empty"):
        read_audio(tmp_path / "empty.wav")


def test_zero_length_audio(tmp_path):
    path = write_wav(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"zero.wav: contains no samples"):
        read_audio(path)


def test_not_audio(tmp_path):
    (tmp_path / "text.wav").write_text("this is a text file, not a RIFF header\n" * 20)
    with pytest.raises(AudioError, match=r"text.wav: not audio or corrupt header"):
        read_audio(tmp_path / "text.wav")


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_truncated_file(tmp_path, suffix):
    path = write_wav(tmp_path / f"full.{suffix}", broadband(1.0), 16000)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=rf"cut.{suffix}: .*(truncated|corrupt)"):
        read_audio(cut)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad_value):
    wave = broadband(0.5)
    wave[100] = bad_value
    path = write_wav(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan.wav: contains 1 NaN/Inf samples"):
        read_audio(path)


def test_clip_shorter_than_one_window(tmp_path):
    path = write_wav(tmp_path / "short.wav", broadband(0.02), 16000)  # 320 samples < 400
    with pytest.raises(AudioError, match=r"short.wav: too short for one fbank window: 320 samples"):
        FbankFrontEnd(64).from_file(path)


def test_manifest_length_mismatch_is_reported(tmp_path):
    path = write_wav(tmp_path / "a.wav", broadband(0.5), 16000)
    with pytest.raises(AudioError, match=r"a.wav: has 8000 samples but the manifest lists 9000"):
        FbankFrontEnd(64).from_file(path, expected_samples=9000)


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 44100, 48000])
def test_resampling_is_torchaudios_bit_for_bit_with_the_kernel_built_once(rate):
    from eat_plugin.data.fbank import _resample_kernel

    _resample_kernel.cache_clear()
    for seed in range(3):  # the first call builds the rate pair's kernel, the others reuse it
        wave = torch.randn(rate // 2 + seed * 37, generator=torch.Generator().manual_seed(seed))
        expected = torchaudio.functional.resample(wave, orig_freq=rate, new_freq=16000)
        torch.testing.assert_close(to_mono_16k(wave, rate), expected, rtol=0, atol=0)
    info = _resample_kernel.cache_info()
    assert (info.misses, info.hits) == (1, 2)
