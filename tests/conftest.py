"""Shared test helpers: synthetic audio written with soundfile, the golden-data location."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("EAT_GOLDEN_DIR", REPO.parent / "shared" / "golden"))


def tone(freq_hz: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """``(S,)`` float32 sine."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def broadband(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """``(S,)`` float32 noise + tones: energy in every mel band, so log-mel values are well conditioned."""
    rng = np.random.default_rng(seed)
    wave = 0.1 * rng.standard_normal(int(round(seconds * sample_rate)))  # the length tone() gives
    wave += tone(440, seconds, sample_rate, 0.3) + tone(3000, seconds, sample_rate, 0.2)
    return wave.astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype=subtype)
    return path


@pytest.fixture
def golden_dir() -> Path:
    if not (GOLDEN / "fbank_ref.pt").is_file():
        pytest.skip(f"golden data not found at {GOLDEN} (set EAT_GOLDEN_DIR)")
    return GOLDEN


@pytest.fixture
def golden_data(tmp_path, golden_dir) -> Path:
    """A copy of golden/data with the manifests' root line made absolute."""
    out = tmp_path / "data"
    out.mkdir()
    for src in (golden_dir / "data").iterdir():
        if src.suffix in (".tsv", ".lbl", ".csv"):
            text = src.read_text()
            if src.suffix == ".tsv":
                lines = text.splitlines()
                lines[0] = str(golden_dir / "data" / lines[0])
                text = "\n".join(lines) + "\n"
            (out / src.name).write_text(text)
    return out


def pytest_configure(config):
    # Third-party noise, not ours: torch.jit deprecation (fairseq import) and pin_memory on CPU.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script` is deprecated:FutureWarning")
    config.addinivalue_line("filterwarnings", "ignore:'pin_memory' argument is set as true:UserWarning")
