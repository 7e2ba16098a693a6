"""Machine sounds end to end: generated MIMII-layout fans -> preparer -> ``fairseq-hydra-train`` with the
semantic heads (config/pretraining/machine_sounds_tiny.yaml) -> anomaly scores.

Measured on this recipe (CPU, seed 1, 400 updates, ~30 s on 2 cores): machine-id accuracy on the normal
test clips 0.875 (chance 0.25), mean anomaly AUC 0.785 (per id 0.42 / 1.00 / 0.73 / 0.98), pAUC 0.737.
Fine-tuned on the machine ids with the transformation head (config/finetuning/machine_sounds_tiny.yaml, 200
updates): mean AUC 0.871, pAUC 0.885. The thresholds (accuracy >= 0.6, AUC > 0.65 / 0.75) leave room for
other CPUs' float sums.
"""

import json

import pytest

from conftest import HYDRA_TRAIN, REPO, logged_rows, train_env
from helpers import load_script

pytestmark = pytest.mark.slow

START = 50  # model.semantic_start_update of the recipe


def hydra_train(section: str, recipe: str, data, run_dir, *overrides: str) -> str:
    """``fairseq-hydra-train`` of ``config/{section}/{recipe}.yaml`` on ``data`` into ``run_dir``; its log."""
    import subprocess

    cmd = [str(HYDRA_TRAIN), "--config-dir", str(REPO / "config" / section), "--config-name", recipe,
           f"common.user_dir={REPO / 'eat_plugin'}", f"task.data={data}", f"checkpoint.save_dir={run_dir}",
           f"hydra.run.dir={run_dir}", *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=train_env())
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    return log


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("machine_sounds")
    assert load_script("make_demo_data").main(["--layout", "mimii", "--out", str(root / "raw"), "--normal-per-id", "30",
                                               "--anomalous-per-id", "8"]) == 0
    assert load_script("prepare_machine_sounds").main(["--root", str(root / "raw"), "--out", str(root / "data")]) == 0
    return root, hydra_train("pretraining", "machine_sounds_tiny", root / "data", root / "run")


def test_semantic_terms_are_zero_in_phase_one_and_train_in_phase_two(trained):
    _, log = trained
    rows = logged_rows(log)
    assert len(rows) == 400
    early = [r for r in rows if int(r["num_updates"]) <= START]
    late = [r for r in rows if int(r["num_updates"]) > START]
    assert all(float(r["loss_machine_id"]) == 0 and float(r["loss_transform"]) == 0 for r in early)
    assert all(float(r["loss_machine_id"]) > 0 for r in late)
    # the heads learn: plain CE from ~ln 7 (chance over the head's 7 outputs) down, on transformed clips
    assert float(early[0]["machine_id_ce"]) == pytest.approx(1.946, abs=0.1)
    assert sum(float(r["machine_id_ce"]) for r in late[-20:]) / 20 < 1.946 - 0.4
    valid = logged_rows(log, "[valid][INFO]")
    assert valid and "valid_selected_loss" in valid[-1] and "valid_machine_id_accuracy" in valid[-1]
    assert "machine-id head: 7 outputs" in log


def test_anomaly_scores_separate_the_faulty_fans(trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "anomaly.tsv"
    metrics_path = tmp_path / "metrics.json"
    assert load_script("score_anomalies").main([str(root / "run" / "checkpoint_last.pt"), "--data", str(root / "data"),
                                                "--out", str(out), "--scores", str(tmp_path / "scores.tsv"),
                                                "--json", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert sorted(metrics["per_id"]) == ["0", "2", "4", "6"]
    assert metrics["mean"]["auc"] > 0.65, metrics
    assert out.with_suffix(".png").is_file()
    rows = (tmp_path / "scores.tsv").read_text().splitlines()
    assert rows[0] == "relpath\tmachine_id\tcondition\tanomaly_score" and len(rows) == 1 + 64


def test_the_machine_id_head_knows_the_normal_test_fans(trained):
    from eat_plugin.api import load_model
    from eat_plugin.data.machine_sounds import read_machine_metadata
    from eat_plugin.data.manifest import read_manifest

    root, _ = trained
    manifest = read_manifest(root / "data" / "test.tsv")
    normal = [(manifest.audio_path(i), row.machine_id) for i, row in enumerate(read_machine_metadata(root / "data", "test"))
              if row.condition == "normal"]
    model = load_model(root / "run" / "checkpoint_last.pt", semantic_heads=True)
    predicted = model.machine_log_probs([path for path, _ in normal]).argmax(-1).tolist()
    accuracy = sum(p == m for p, (_, m) in zip(predicted, normal)) / len(normal)
    assert accuracy >= 0.6, accuracy  # chance: 1 / 4 machine ids


def test_phase_two_on_a_fine_tuned_encoder_classifier_and_transformation_head(trained, tmp_path):
    """Phase 2 on a fine-tuned encoder (config/finetuning/machine_sounds_tiny.yaml): the pre-trained model
    fine-tuned on the machine ids with the transformation head beside the classifier (which starts from the
    pre-training's head), scored with the same detector (-log softmax of the clip's own id)."""
    root, _ = trained
    log = hydra_train("finetuning", "machine_sounds_tiny", root / "data", tmp_path / "ft",
                      f"model.model_path={root / 'run' / 'checkpoint_last.pt'}")
    assert "transformation head: from the pre-training checkpoint's" in log
    rows = logged_rows(log)
    assert int(rows[-1]["num_updates"]) == 200
    # the head tells the six transformations apart on the training batches (chance 16.7 %); measured: 77.5 % in
    # the last logged interval, 55 % in the first (the pre-trained head already knows them)
    assert float(rows[-1]["transform_accuracy"]) > 40, rows[-1]
    assert all(float(r["loss_transform"]) > 0 and float(r["loss_regression"]) > 0 for r in rows)
    valid = logged_rows(log, "[valid][INFO]")
    assert "valid_transform_accuracy" in valid[-1] and "valid_accuracy" in valid[-1]
    metrics_path = tmp_path / "metrics.json"
    assert load_script("score_anomalies").main([str(tmp_path / "ft" / "checkpoint_last.pt"), "--data", str(root / "data"),
                                                "--json", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["mean"]["auc"] > 0.75, metrics  # measured 0.871 (per id 0.48 / 1.00 / 1.00 / 1.00), pAUC 0.885


def test_pretraining_with_heads_continues_from_a_plain_eat_checkpoint(trained, tmp_path):
    """A released-style checkpoint (no semantic_heads.*) + checkpoint.reset_*: the heads start fresh, the
    rest loads strictly, and the EMA / semantic schedules restart with the trainer's count."""
    import torch

    root, _ = trained
    state = torch.load(root / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("semantic_heads.")}
    plain = tmp_path / "plain_eat.pt"
    torch.save(state, plain)
    log = hydra_train("pretraining", "machine_sounds_tiny", root / "data", tmp_path / "run",
                      f"checkpoint.restore_file={plain}", "checkpoint.reset_optimizer=true",
                      "checkpoint.reset_lr_scheduler=true", "checkpoint.reset_dataloader=true",
                      "checkpoint.reset_meters=true", f"optimization.max_update={START + 10}")
    assert "the checkpoint has no semantic heads: they start from their initialisation" in log
    rows = logged_rows(log)
    assert [int(r["num_updates"]) for r in rows] == list(range(1, START + 11))
    # the EMA schedule restarted (recipe: 0.9 -> 0.99 over 400 updates), as in a fresh run: x 1000 in the log
    assert [float(r["ema_decay"]) for r in rows[:2]] == pytest.approx([900.0, 1000 * (0.99 - 0.09 * (1 - 1 / 400))])
    assert all(float(r["loss_machine_id"]) == 0 for r in rows[:START])
    assert float(rows[0]["machine_id_ce"]) == pytest.approx(1.946, abs=0.15)  # fresh head: ~ln 7
    assert all(float(r["loss_machine_id"]) > 0 for r in rows[START:])
