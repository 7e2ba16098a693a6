"""Shared test helpers: synthetic audio written with soundfile, the golden fixture (``tests/golden``: the
official implementation's reference outputs, part of the repository), tiny pre-training runs through the
real ``fairseq-hydra-train``. More factories: the ``helpers`` package next to this file."""

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("EAT_GOLDEN_DIR", REPO / "tests" / "golden"))  # the variable: another copy
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


@functools.lru_cache(maxsize=None)
def golden_problems(root: Path) -> tuple:
    """What is wrong with the golden fixture at ``root``: every file its README lists with a sha256 must be
    there with that checksum (a missing file, a Git LFS pointer or an edited tensor file all show here)."""
    readme = root / "README.md"
    if not readme.is_file():
        return (f"{readme} not found",)
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", readme.read_text(), flags=re.MULTILINE)
    if not listed:
        return (f"{readme} lists no sha256 checksums",)
    problems = []
    for digest, relpath in listed:
        path = root / relpath
        if not path.is_file():
            problems.append(f"{relpath}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{relpath}: sha256 differs from the README's")
    return tuple(problems)


@pytest.fixture
def golden_dir() -> Path:
    """The golden fixture; a missing or damaged one fails the test (it is part of the repository)."""
    problems = golden_problems(GOLDEN)
    if problems:
        pytest.fail(f"golden fixture at {GOLDEN} is missing or damaged ({'; '.join(problems[:5])}"
                    f"{'; ...' if len(problems) > 5 else ''}): restore tests/golden from the repository "
                    "(EAT_GOLDEN_DIR, when set, names another copy)", pytrace=False)
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

