"""The package works both as an installed package and as fairseq's ``common.user_dir``."""

import subprocess
import sys

from conftest import REPO


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")


def test_import_user_module_loads_the_plugin():
    code = f"""
import sys
from argparse import Namespace
from fairseq.utils import import_user_module
import_user_module(Namespace(user_dir={str(REPO / 'eat_plugin')!r}))
mod = sys.modules["eat_plugin"]
assert mod.__path__[0] == {str(REPO / 'eat_plugin')!r}, mod.__path__
for sub in ("criterions", "data", "models", "tasks", "checkpoint"):
    assert "eat_plugin." + sub in sys.modules, sub
print("ok")
"""
    out = run_python(code)
    assert out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_installed_package_import():
    out = run_python("import eat_plugin, eat_plugin.data as d; print(eat_plugin.__version__, d.SAMPLE_RATE)")
    assert out.stdout.split()[-2:] == ["0.1.0", "16000"], out.stderr[-3000:]
