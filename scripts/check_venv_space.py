"""Refuse to start ``make venv`` on a disk that cannot hold it, before pip fills the disk half way.

The pinned environment is about 6 GB (torch's PyPI build carries its CUDA libraries, also on a CPU
machine). pip stops with ``OSError: [Errno 28] No space left on device`` after minutes of installing and
leaves a broken ``.venv``; this check says it first, with the numbers and what to do. It uses only the
standard library, since it runs before the environment exists.

    python3 scripts/check_venv_space.py .venv          # exit 0, or 1 with the reason
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

NEEDED_GIB = 6.5  # measured: a fresh `make venv` is 6.0 GiB on x86_64 (torch 2.14.1 + its CUDA wheels)


def installed(venv: Path) -> bool:
    """Whether torch, the bulk of the environment, is already in the venv (a rerun needs little space)."""
    return any(venv.glob("lib/python3*/site-packages/torch/__init__.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", type=Path, help="the virtual environment's folder (made if missing)")
    parser.add_argument("--needed-gib", type=float, default=NEEDED_GIB)
    args = parser.parse_args()
    if installed(args.venv):
        return 0
    existing = args.venv.resolve()  # the venv, or its nearest folder that exists
    while not existing.exists():
        existing = existing.parent
    free_gib = shutil.disk_usage(existing).free / 2**30
    if free_gib >= args.needed_gib:
        return 0
    print(f"make venv: {args.venv} needs about {args.needed_gib:.1f} GiB (torch's PyPI build with its CUDA "
          f"libraries); only {free_gib:.1f} GiB is free on the disk of {existing}. Free some space, "
          f"or put the environment on a larger disk: make ... VENV=/path/on/larger/disk/.venv", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
