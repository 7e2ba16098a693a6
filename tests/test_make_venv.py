"""``scripts/check_venv_space.py``: ``make venv`` refuses a disk too small for the pinned environment
before pip fills it (pip fails minutes in, ``[Errno 28] No space left on device``, with a broken .venv)."""

import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_venv_space.py"


def check(venv: Path, needed_gib: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(venv), "--needed-gib", str(needed_gib)],
                          capture_output=True, text=True)


def test_refuses_when_the_disk_has_less_than_needed(tmp_path):
    free_gib = shutil.disk_usage(tmp_path).free / 2**30
    result = check(tmp_path / "sub" / ".venv", needed_gib=free_gib * 2 + 1)
    assert result.returncode == 1
    # names the venv, what it needs, what is free and where, and the way out
    assert str(tmp_path / "sub" / ".venv") in result.stderr
    assert f"{free_gib * 2 + 1:.1f} GiB" in result.stderr
    assert str(tmp_path.resolve()) in result.stderr
    assert "VENV=" in result.stderr
    assert not (tmp_path / "sub").exists()  # looked, made nothing


def test_passes_when_the_disk_has_room(tmp_path):
    result = check(tmp_path / ".venv", needed_gib=0.0)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_an_installed_venv_needs_no_room(tmp_path):
    venv = tmp_path / ".venv"
    torch_dir = venv / "lib" / "python3.11" / "site-packages" / "torch"
    torch_dir.mkdir(parents=True)
    (torch_dir / "__init__.py").write_text("")
    assert check(venv, needed_gib=1e9).returncode == 0
    # a venv made but not yet filled still needs the room
    shutil.rmtree(venv / "lib")
    assert check(venv, needed_gib=1e9).returncode == 1
