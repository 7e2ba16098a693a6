"""The package layers only point down (the table in ``eat_plugin/__init__.py``), read from the source.

Each ``eat_plugin`` import of every module is checked against the layers its own layer may use, so a
module that reaches up (the data side importing the models, a model importing a task) fails here with
the file, the line and the import.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eat_plugin"

FOUNDATION = {"layout", "masking", "seeding", "semantic_tasks", "diagnostics", "probing", "official_fields", "console",
              "losses", "metrics", "checkpoint_cfg", "checkpoint", "checkpoint_safety", "safetensors_io",
              "training_log", "optim"}
# layer -> the layers (or foundation modules) it may import; the foundation may import the foundation only
ALLOWED = {
    "foundation": FOUNDATION,
    "data": FOUNDATION,
    "modules": FOUNDATION,
    "models": FOUNDATION | {"modules"},
    "tasks": FOUNDATION | {"data", "modules", "models"},
    "criterions": FOUNDATION | {"data", "modules", "models", "tasks"},
    "official_configs": FOUNDATION,  # model / task dataclasses come from fairseq's registries
    "api": FOUNDATION | {"data", "modules", "models"},
    "hf": FOUNDATION | {"data", "modules", "models", "official_configs"},
    "cli": FOUNDATION | {"data", "api"},
    "onnx_export": FOUNDATION | {"data", "api"},
    "plots": FOUNDATION,
}


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = parts[0]
    return "foundation" if name in FOUNDATION else name


def plugin_imports(path: Path):
    """``(line, top-level unit imported)`` for every ``eat_plugin.<unit>`` import of ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "eat_plugin":
            parts = node.module.split(".")
            units = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            units = [a.name.split(".")[1] for a in node.names if a.name.startswith("eat_plugin.")]
        else:
            continue
        for unit in units:
            yield node.lineno, unit


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_belongs_to_a_layer():
    unknown = sorted({layer_of(p) for p in MODULES} - set(ALLOWED))
    assert not unknown, f"add these to the layer table (here and in eat_plugin/__init__.py): {unknown}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    layer = layer_of(path)
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports eat_plugin.{unit}"
              for line, unit in plugin_imports(path)
              if unit != own and unit not in ALLOWED[layer]]
    assert not upward, f"layer {layer!r} may import {sorted(ALLOWED[layer])}:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The reader itself: a data module importing a model is reported."""
    module = PACKAGE / "data" / "manifest.py"
    units = {unit for _, unit in plugin_imports(module)}
    assert units <= ALLOWED["data"]
    fake = tmp_path / "m.py"
    fake.write_text("from eat_plugin.models.data2vec_multi import Data2VecMultiModel\nimport eat_plugin.tasks.faults\n")
    assert list(plugin_imports(fake)) == [(1, "models"), (2, "tasks")]
