"""Shared test helpers: synthetic audio written with soundfile, the golden-data location, tiny
pre-training runs through the real ``fairseq-hydra-train``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("EAT_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
HYDRA_TRAIN = Path(sys.executable).parent / "fairseq-hydra-train"


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


def make_pretraining_clips(out: Path, count: int, seconds: float = 1.4) -> Path:
    """``count`` distinct clips (>= 128 frames each) and a ``train.tsv``."""
    from eat_plugin.data.manifest import Clip, write_split

    clips = []
    for i in range(count):
        write_wav(out / "audio" / f"{i}.wav", broadband(seconds, seed=i), 16000)
        clips.append(Clip(f"{i}.wav", int(seconds * 16000)))
    write_split(out, "train", out / "audio", clips, with_labels=False)
    return out


def pretraining_command(data: Path, save_dir: Path, *overrides: str) -> list:
    """``fairseq-hydra-train`` on the tiny pre-training recipe (config/pretraining/tiny.yaml)."""
    return [
        str(HYDRA_TRAIN), "--config-dir", str(REPO / "config" / "pretraining"), "--config-name", "tiny",
        f"common.user_dir={REPO / 'eat_plugin'}", f"task.data={data}", f"checkpoint.save_dir={save_dir}",
        f"hydra.run.dir={save_dir / 'hydra'}", *overrides,
    ]


def train_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def pretrain(data: Path, save_dir: Path, *overrides: str) -> str:
    """Run the tiny pre-training recipe to the end; its stdout + stderr."""
    result = subprocess.run(pretraining_command(data, save_dir, *overrides), capture_output=True, text=True,
                            timeout=600, env=train_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def logged_rows(log: str, tag: str = "[train_inner]") -> list:
    """The JSON rows fairseq logged under ``tag`` (``common.log_format: json``)."""
    return [json.loads(line[line.index("{"):]) for line in log.splitlines() if tag in line and "{" in line]


def load_checkpoint_file(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


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
    config.addinivalue_line("markers", "slow: multi-process or long end-to-end runs (part of the full suite)")
    # Third-party noise, not ours: torch.jit deprecation (fairseq import) and pin_memory on CPU.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script` is deprecated:FutureWarning")
    config.addinivalue_line("filterwarnings", "ignore:'pin_memory' argument is set as true:UserWarning")
