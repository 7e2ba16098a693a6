"""Which files are audio, and the one walk over a folder of them (scripts, preparers, the CLI).

Rules: an audio file is one whose extension soundfile reads (below); hidden files and folders (``.*``)
are left out; symlinked folders are followed, each real folder once (no loops); results are sorted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import soundfile as sf

# Every extension soundfile can read (its formats, named by their usual extension, plus common aliases);
# RAW is left out because headerless files cannot be probed.
AUDIO_EXTENSIONS = tuple(
    sorted(
        {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc"}
        | {"." + fmt.lower() for fmt in sf.available_formats() if fmt != "RAW"}
    )
)


def is_audio_file(path: Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def walk_audio_files(folder: Path) -> Tuple[List[Path], List[Path]]:
    """``(audio files, other files)`` under ``folder`` (recursive), by the module's rules."""
    audio, other, seen = [], [], set()
    for parent, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a symlink loop, or a folder reached twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                path = Path(parent) / name
                (audio if is_audio_file(path) else other).append(path)
    return sorted(audio), sorted(other)
