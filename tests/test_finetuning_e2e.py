"""End to end on generated audio: prepare (ESC-50 layout) -> tiny pre-training -> tiny fine-tuning
with the real ``fairseq-hydra-train``, then reload the fine-tuned checkpoint without the pre-training file."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import torch
from fairseq import checkpoint_utils, utils

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import make_demo_data  # noqa: E402
import prepare_esc50  # noqa: E402

HYDRA_TRAIN = Path(sys.executable).parent / "fairseq-hydra-train"
NUM_CLASSES = 6  # make_demo_data's sound classes
CHANCE = 100.0 / NUM_CLASSES  # 16.7 % accuracy
REQUIRED = 50.0  # 3x chance; the recipe reaches 75 % here (12 of 24 clips would be 50 %)


def hydra_train(config_dir: str, save_dir: Path, *overrides: str) -> str:
    cmd = [str(HYDRA_TRAIN), "--config-dir", str(REPO / "config" / config_dir), "--config-name", "tiny",
           f"common.user_dir={REPO / 'eat_plugin'}", f"checkpoint.save_dir={save_dir}",
           f"hydra.run.dir={save_dir / 'hydra'}", *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def eval_accuracies(log: str) -> list:
    rows = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "[eval][INFO]" in line]
    return [float(row["eval_accuracy"]) for row in rows]


def test_pretrain_then_finetune_beats_chance_and_reloads_without_pretraining_file(tmp_path):
    assert make_demo_data.main(["--out", str(tmp_path / "esc"), "--clips-per-class-per-fold", "4"]) == 0
    assert prepare_esc50.main(["--esc50-root", str(tmp_path / "esc"), "--out", str(tmp_path / "data"), "--folds", "1"]) == 0
    data = tmp_path / "data" / "fold1"  # 96 training clips (folds 2-5), 24 held-out clips (fold 1)

    hydra_train("pretraining", tmp_path / "pretrain", f"task.data={data}", "optimization.max_update=300")
    pretrained = tmp_path / "pretrain" / "checkpoint_last.pt"
    log = hydra_train("finetuning", tmp_path / "finetune", f"task.data={data}", f"model.model_path={pretrained}",
                      f"model.num_classes={NUM_CLASSES}")
    accuracies = eval_accuracies(log)
    assert len(accuracies) >= 3
    assert max(accuracies) >= REQUIRED > 3 * CHANCE - 1e-9, (accuracies, CHANCE)

    # the fine-tuned checkpoint carries the pre-training config: it reloads with the file gone
    pretrained.unlink()
    best = tmp_path / "finetune" / "checkpoint_best.pt"
    utils.import_user_module(Namespace(user_dir=str(REPO / "eat_plugin")))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(best)], arg_overrides={"data": str(data)})
    model = models[0].eval()
    task.load_dataset("eval")
    dataset = task.dataset("eval")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        out = model(**batch["net_input"])
    accuracy = 100.0 * float(out["correct"]) / float(out["sample_size"])
    assert abs(accuracy - max(accuracies)) < 1e-6, (accuracy, accuracies)
