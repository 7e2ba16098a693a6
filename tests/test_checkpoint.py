"""Safe checkpoint loading on torch >= 2.6: fairseq checkpoints load, anything else is refused unrun."""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils
from omegaconf import DictConfig, OmegaConf

import eat_plugin  # noqa: F401  (installs the allow-list, as loading the plugin as a user dir does)
from eat_plugin.checkpoint import UnsafeCheckpointError, load_checkpoint
from helpers import RunsCode

MARKER_ENV = "EAT_TEST_MARKER"


def fairseq_like_state(golden_dir):
    """A real fairseq checkpoint (official golden run) with the objects older / other writers pickle."""
    state = torch.load(golden_dir / "finetune" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    state["cfg"] = OmegaConf.create(state["cfg"])  # cfg as an OmegaConf DictConfig
    state["extra_state"]["numpy_scalars"] = {"f64": np.float64(0.5), "i64": np.int64(3), "f32": np.float32(2)}
    state["extra_state"]["numpy_array"] = np.arange(4, dtype=np.float32)
    return state


@pytest.mark.parametrize("which", ["pretrain", "finetune"])
def test_official_checkpoints_load_with_weights_only(golden_dir, which):
    state = load_checkpoint(golden_dir / which / "checkpoint_last.pt")
    assert state["cfg"]["model"]["_name"] in ("data2vec_multi", "mae_image_classification")
    assert all(isinstance(v, torch.Tensor) for k, v in state["model"].items() if k != "_ema")


def test_omegaconf_and_numpy_objects_load_through_fairseqs_own_loader(tmp_path, golden_dir):
    path = tmp_path / "ck.pt"
    torch.save(fairseq_like_state(golden_dir), path)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))  # torch.load with the default weights_only
    assert isinstance(state["cfg"], DictConfig) and state["cfg"].model._name == "mae_image_classification"
    assert state["extra_state"]["numpy_scalars"]["i64"] == 3
    assert load_checkpoint(path)["extra_state"]["numpy_array"].tolist() == [0, 1, 2, 3]


def test_legacy_namespace_args_load(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"args": argparse.Namespace(arch="x", lr=[0.1]), "model": {"w": torch.ones(2)}}, path)
    assert load_checkpoint(path)["args"].lr == [0.1]


def test_code_running_checkpoint_is_refused_and_nothing_runs(tmp_path, golden_dir):
    marker = tmp_path / "pwned"
    state = fairseq_like_state(golden_dir)
    state["extra_state"]["payload"] = RunsCode(marker)
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pt: refused to load: the checkpoint pickles posix.system"):
        load_checkpoint(path)
    with pytest.raises(Exception, match="posix.system"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_protection_is_not_turned_off_globally(tmp_path):
    """In a fresh interpreter with the plugin imported, torch.load still refuses arbitrary callables."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": RunsCode(marker)}, path)
    code = (
        "import torch, eat_plugin, sys\n"
        f"try:\n    torch.load({str(path)!r})\nexcept Exception as e:\n    print('refused', type(e).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "refused UnpicklingError" in out.stdout, out.stderr[-2000:]
    assert not marker.exists()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
