"""eat-fairseq: EAT (Efficient Audio Transformer) as a fairseq user-dir plugin.

Versions are pinned in requirements.lock only; this file reads the direct pins from there.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
RUNTIME = ("torch", "torchaudio", "ve-fairseq", "hydra-core", "omegaconf", "numpy", "soundfile", "h5py",
           "tensorboard", "matplotlib")
TEST = ("pytest", "hypothesis")
ONNX = ("onnx", "onnxruntime", "onnxscript")  # scripts/export_onnx.py only


def pinned(names):
    pins = {}
    for line in (HERE / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name = line.split("==", 1)[0].strip().lower()
            pins[name] = line
    missing = [n for n in names if n not in pins]
    if missing:
        raise RuntimeError(f"requirements.lock has no pin for {missing}")
    return [pins[n] for n in names]


setup(
    name="eat-fairseq",
    version="0.1.0",
    description="EAT: self-supervised audio transformer (pre-training and fine-tuning) as a fairseq plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # the recipes under config/ travel with the package as eat_plugin/recipes (read by official_configs)
    packages=find_packages(include=["eat_plugin", "eat_plugin.*"]) + ["eat_plugin.recipes"],
    package_dir={"eat_plugin.recipes": "config"},
    package_data={"eat_plugin.recipes": ["*.md", "pretraining/*.yaml", "finetuning/*.yaml"]},
    install_requires=pinned(RUNTIME),
    extras_require={"test": pinned(TEST), "onnx": pinned(ONNX)},
)
