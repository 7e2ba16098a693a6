"""Fine-tuning: the ``mae_image_classification`` task, the ``eat_classification`` criterion, the
fine-tuning recipes and scripts/run_esc50_folds.py (CPU, seconds; no model is trained)."""

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq import tasks as fairseq_tasks
from fairseq.logging import metrics
from fairseq.tasks import FairseqTask
from omegaconf import OmegaConf
from torch import nn

from conftest import REPO
from eat_plugin.checkpoint import load_checkpoint
from eat_plugin.criterions.classification import EATClassificationCriterion
from eat_plugin.data.fbank import NORM_STATS
from eat_plugin.data.manifest import ManifestError
from eat_plugin.metrics import mean_average_precision
from eat_plugin.tasks.classification import MaeImageClassificationConfig, MaeImageClassificationTask
from eat_plugin.tasks.pretraining import MaeImagePretrainingConfig
from helpers import (CLIP_IDS, classification_task_cfg, compose_recipe, load_script, make_labelled_data,
                     official_defaults, official_names, plugin_names, recipe_strings)
from helpers.official import CLASSIFICATION_TASK, PRETRAINING_TASK

RECIPES = REPO / "config" / "finetuning"
RECIPE_NAMES = ("as2m", "as20k", "esc50", "spcv2", "tiny")
IDS = CLIP_IDS
# every official field of the fine-tuning task config and its official default (the official field table)
OFFICIAL_DEFAULTS = {k: v for k, v in official_defaults(CLASSIFICATION_TASK).items() if k != "_name"}


def make_task(data: Path, **overrides) -> MaeImageClassificationTask:
    return MaeImageClassificationTask.setup_task(classification_task_cfg(data, **overrides))


# ---------------------------------------------------------------------------------------- config


def test_the_task_config_is_the_pretraining_one_plus_the_official_label_fields():
    """Each field's official default is checked in test_official_fields.py; here: the subclass adds exactly
    the fields the official table adds to the pre-training task, and ours."""
    assert issubclass(MaeImageClassificationConfig, MaeImagePretrainingConfig)
    names = {f.name for f in dataclasses.fields(MaeImageClassificationConfig)}
    inherited = {f.name for f in dataclasses.fields(MaeImagePretrainingConfig)}
    added = ((official_names(CLASSIFICATION_TASK) - official_names(PRETRAINING_TASK))
             | (plugin_names(CLASSIFICATION_TASK) - plugin_names(PRETRAINING_TASK)))
    assert names - inherited == added
    node = OmegaConf.structured(MaeImageClassificationConfig)
    assert OmegaConf.is_missing(node, "data") and OmegaConf.to_container(node)["seed"] == "${common.seed}"


def test_every_official_field_is_accepted_and_registers_with_fairseq(tmp_path):
    data = make_labelled_data(tmp_path, [["dog"], ["rain"]])
    every = dict(OFFICIAL_DEFAULTS, _name="mae_image_classification", data=str(data), seed=3, target_length=64,
                 input_size=128, no_transform=True, rebuild_batches=False, audio_mae=True, downsr_16hz=True,
                 roll_aug=True, noise=True, esc50_eval=True, is_finetuning=True, weights_file="unused.csv")
    task = fairseq_tasks.setup_task(OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig), every))
    assert isinstance(task, MaeImageClassificationTask)
    dataset = task.load_dataset("train")
    assert (dataset.seed, dataset.roll_aug, dataset.noise, dataset.shuffle) == (3, True, True, True)
    assert task.num_classes == 4 and task.label_descriptors.ids == IDS and not task.multi_label
    assert task.state_dict() == {"labels": {"dog": "0", "rain": "1", "siren": "2", "bell": "3"}}


@pytest.mark.parametrize("overrides, message", [
    (dict(precompute_mask_config={}), r"task\.precompute_mask_config is set"),
    (dict(key="source"), r"task\.key='source'.*forward\(imgs, label\)"),
    (dict(AS2M_finetune=True), r"task\.AS2M_finetune=true .* set task\.weights_file"),
    (dict(subsample=0.5), r"task\.subsample=0\.5 is not supported"),
])
def test_bad_values_raise_naming_the_field(tmp_path, overrides, message):
    make_labelled_data(tmp_path, [["dog"]])
    with pytest.raises(ValueError, match=message):
        make_task(tmp_path, **overrides)


def test_missing_descriptors_name_the_file(tmp_path):
    make_labelled_data(tmp_path, [["dog"]])
    with pytest.raises(FileNotFoundError, match="classes.csv: label descriptors file not found"):
        make_task(tmp_path, label_descriptors="classes.csv")


# ------------------------------------------------------------------------------------- datasets


def test_multi_label_dataset(tmp_path):
    data = make_labelled_data(tmp_path, [["dog", "siren"], ["rain"], ["bell", "dog", "rain"]], split="eval")
    task = make_task(data)
    assert task.multi_label
    dataset = task.load_dataset("eval")
    assert not (dataset.shuffle or dataset.roll_aug) and dataset.front_end.stats == NORM_STATS["audioset"]
    batch = dataset.collater([dataset[i] for i in range(3)])
    assert set(batch["net_input"]) == {"imgs", "id", "label"}
    assert batch["net_input"]["imgs"].shape == (3, 1, 64, 128)
    expected = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]])
    torch.testing.assert_close(batch["net_input"]["label"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("flag, stats", [("esc50_eval", "esc50"), ("spcv2_eval", "spcv2")])
def test_single_label_dataset(tmp_path, flag, stats):
    data = make_labelled_data(tmp_path, [["siren"], ["dog"]], split="eval")
    task = make_task(data, **{flag: True})
    assert not task.multi_label
    dataset = task.load_dataset("eval")
    assert dataset.front_end.stats == NORM_STATS[stats]
    batch = dataset.collater([dataset[0], dataset[1]])
    torch.testing.assert_close(batch["net_input"]["label"], torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0]]))
    make_labelled_data(tmp_path, [["siren"], ["dog", "bell"]], split="train")
    with pytest.raises(ManifestError, match=r"train\.lbl: the clip of manifest line 3 .* has 2 labels"):
        task.load_dataset("train")


def test_label_file_extension_and_short_clips(tmp_path):
    data = make_labelled_data(tmp_path, [["dog"], ["rain"]], split="eval")
    (data / "eval.lbl").rename(data / "eval.labels")
    task = make_task(data, labels="labels", min_sample_size=11201)  # both clips have 11200 samples
    with pytest.raises(ManifestError, match="no clips left"):
        task.load_dataset("eval")
    dataset = make_task(data, labels="labels").load_dataset("eval")
    assert dataset.labels == [[0], [1]]


def test_golden_finetuning_task_config_and_batch(golden_data, golden_dir):
    state = load_checkpoint(golden_dir / "finetune" / "checkpoint_last.pt")
    cfg = OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig), state["cfg"]["task"],
                          {"data": str(golden_data)})
    task = fairseq_tasks.setup_task(cfg)
    assert task.state_dict() == state["task_state"]  # the official {label id: "index"} table
    task.load_state_dict(state["task_state"])
    reference = torch.load(golden_dir / "model_ref.pt", map_location="cpu", weights_only=False)["finetune"]["input"]
    dataset = task.load_dataset("eval")
    batch = dataset.collater([dataset[i] for i in range(4)])
    torch.testing.assert_close(batch["net_input"]["label"], reference["label"], rtol=0, atol=0)
    torch.testing.assert_close(batch["id"], reference["ids"])
    diff = (batch["net_input"]["imgs"] - reference["imgs"]).abs()
    assert diff.max() <= 7e-3 and diff.mean() <= 2e-4


# -------------------------------------------------------------------------------------- model


def test_num_classes_mismatch_names_field_file_and_count(tmp_path, monkeypatch):
    make_labelled_data(tmp_path, [["dog"]])
    task = make_task(tmp_path)
    built = []
    monkeypatch.setattr(FairseqTask, "build_model", lambda self, cfg, from_checkpoint=False: built.append(cfg))
    with pytest.raises(ValueError, match=r"model\.num_classes=527 but .*label_descriptors\.csv lists 4 classes"):
        task.build_model(OmegaConf.create({"_name": "mae_image_classification", "num_classes": 527}))
    assert built == []
    task.build_model(OmegaConf.create({"_name": "mae_image_classification", "num_classes": 4}))
    task.build_model(OmegaConf.create({"_name": "data2vec_multi"}))  # no num_classes: nothing to check
    assert len(built) == 2


# ------------------------------------------------------------------------- criterion and metrics


class StandInModel(nn.Module):
    """The ``mae_image_classification`` contract: logits without labels, else the loss dict."""

    def __init__(self, num_classes: int, multi_label: bool):
        super().__init__()
        self.head = nn.Linear(128, num_classes)
        self.multi_label = multi_label

    def forward(self, imgs, label=None):
        logits = self.head(imgs.mean(dim=(1, 2)))  # (B, C)
        if label is None:
            return logits
        if self.multi_label:
            out = {"losses": {"main": F.binary_cross_entropy_with_logits(logits, label, reduction="none")},
                   "sample_size": label.sum()}
            if not self.training:
                out.update(_predictions=torch.sigmoid(logits), _targets=label)
            return out
        out = {"losses": {"regression": F.cross_entropy(logits, label, reduction="none")},
               "sample_size": label.size(0)}
        if not self.training:
            out["correct"] = (logits.argmax(-1) == label.argmax(-1)).sum()
        return out


def fake_batches(num_classes: int, multi_label: bool, sizes=(6, 5, 7), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for i, size in enumerate(sizes):
        if multi_label:
            label = (torch.rand(size, num_classes, generator=generator) < 0.4).float()  # (B, C)
        else:
            label = F.one_hot(torch.randint(num_classes, (size,), generator=generator), num_classes).float()
        imgs = torch.randn(size, 1, 16, 128, generator=generator)  # (B, 1, T, 128)
        yield {"id": torch.arange(size) + 10 * i, "net_input": {"imgs": imgs, "label": label}}


def build_criterion(task, name: str, log_keys=None):
    cfg = {"_name": name} if log_keys is None else {"_name": name, "log_keys": log_keys}
    return task.build_criterion(OmegaConf.create(cfg))


def validate(task, criterion, model, batches):
    """What fairseq's validation does: per batch, criterion + ``reduce_metrics`` inside the epoch aggregator."""
    model.eval()
    logs = []
    with metrics.aggregate(new_root=True) as agg:
        for batch in batches:
            with torch.no_grad():
                _, _, log = task.valid_step(batch, model, criterion)
            logs.append(log)
            with metrics.aggregate():
                task.reduce_metrics([log], criterion)
    return agg, logs


@pytest.mark.parametrize("criterion_name, log_keys", [("eat_classification", None),
                                                      ("model", ["_predictions", "_targets"])])
def test_map_over_the_whole_validation_set(tmp_path, caplog, criterion_name, log_keys):
    make_labelled_data(tmp_path, [["dog"]])
    task = make_task(tmp_path)
    criterion = build_criterion(task, criterion_name, log_keys)
    batches = list(fake_batches(task.num_classes, multi_label=True))
    agg, logs = validate(task, criterion, StandInModel(task.num_classes, multi_label=True), batches)
    assert all(log["_predictions"].shape == log["_targets"].shape == (len(b["id"]), 4) for log, b in zip(logs, batches))
    predictions = torch.cat([log["_predictions"] for log in logs]).numpy()  # (18, 4)
    targets = torch.cat([b["net_input"]["label"] for b in batches]).numpy()
    expected = mean_average_precision(predictions, targets).mAP
    per_batch = [mean_average_precision(log["_predictions"].numpy(), log["_targets"].numpy()).mAP for log in logs]
    assert not np.allclose(per_batch, expected)  # the whole set differs from any single batch
    stats = agg.get_smoothed_values()
    assert stats["mAP"] == pytest.approx(expected, abs=1e-12)
    assert "accuracy" not in stats
    with caplog.at_level(logging.INFO, logger="eat_plugin.tasks.classification"):
        task.post_validate(None, stats, agg)
    assert "mAP over 18 clips and 4 of 4 classes; 0 classes have no positives in the validation set" in caplog.text


def test_map_leaves_out_classes_without_positives(tmp_path, caplog):
    make_labelled_data(tmp_path, [["dog"]])
    task = make_task(tmp_path)
    criterion = build_criterion(task, "eat_classification")
    batches = list(fake_batches(task.num_classes, multi_label=True))
    for batch in batches:
        batch["net_input"]["label"][:, 2] = 0
    agg, logs = validate(task, criterion, StandInModel(task.num_classes, multi_label=True), batches)
    with caplog.at_level(logging.INFO, logger="eat_plugin.tasks.classification"):
        task.post_validate(None, agg.get_smoothed_values(), agg)
    assert "mAP over 18 clips and 3 of 4 classes; 1 classes have no positives in the validation set" in caplog.text


@pytest.mark.parametrize("criterion_name, log_keys", [("eat_classification", None), ("model", ["correct"])])
def test_accuracy_over_the_whole_validation_set(tmp_path, criterion_name, log_keys):
    make_labelled_data(tmp_path, [["dog"]])
    task = make_task(tmp_path, esc50_eval=True)
    criterion = build_criterion(task, criterion_name, log_keys)
    model = StandInModel(task.num_classes, multi_label=False)
    batches = list(fake_batches(task.num_classes, multi_label=False, sizes=(6, 5, 7, 4)))
    agg, logs = validate(task, criterion, model, batches)
    with torch.no_grad():
        correct = sum(int((model(b["net_input"]["imgs"]).argmax(-1) == b["net_input"]["label"].argmax(-1)).sum())
                      for b in batches)
    assert [log["correct"] for log in logs] and sum(log["correct"] for log in logs) == correct
    stats = agg.get_smoothed_values()
    assert stats["accuracy"] == pytest.approx(100 * correct / 22)
    assert "mAP" not in stats


def test_training_logs_carry_no_metrics(tmp_path):
    make_labelled_data(tmp_path, [["dog"]])
    task = make_task(tmp_path)
    criterion = build_criterion(task, "eat_classification")
    model = StandInModel(task.num_classes, multi_label=True).train()
    batch = next(fake_batches(task.num_classes, multi_label=True))
    _, sample_size, log = criterion(model, batch)
    assert not {"correct", "_predictions", "_targets"} & set(log)
    assert sample_size == batch["net_input"]["label"].sum()
    with metrics.aggregate(new_root=True) as agg:
        task.reduce_metrics([log], criterion)
    assert "mAP" not in agg and "accuracy" not in agg and "loss" in agg


def test_predictions_without_targets_name_the_log_keys(tmp_path):
    make_labelled_data(tmp_path, [["dog"]])
    task = make_task(tmp_path)
    criterion = build_criterion(task, "model", ["_predictions"])
    model = StandInModel(task.num_classes, multi_label=True).eval()
    with pytest.raises(ValueError, match="carry _predictions but not _targets"):
        task.valid_step(next(fake_batches(task.num_classes, multi_label=True)), model, criterion)


def test_logs_can_be_summed_unless_the_recipe_says_otherwise(tmp_path):
    """Multi-label logs too: the task turns their per-clip tensors into per-rank slots (test_distributed.py
    checks the union over 2 ranks against one process)."""
    make_labelled_data(tmp_path, [["dog"]])
    multi, single = make_task(tmp_path), make_task(tmp_path, spcv2_eval=True)
    cases = [
        (build_criterion(multi, "eat_classification"), multi, True),
        (build_criterion(single, "eat_classification"), single, True),
        (single.build_criterion(OmegaConf.create({"_name": "eat_classification", "can_sum": False})), single, False),
        (build_criterion(multi, "model", ["_predictions", "_targets"]), multi, True),
        (multi.build_criterion(OmegaConf.create({"_name": "model", "can_sum": False})), multi, False),
    ]
    for criterion, task, expected in cases:
        # how fairseq's trainer asks (Trainer._aggregate_logging_outputs)
        assert task.__class__.logging_outputs_can_be_summed(criterion) is expected
    assert isinstance(cases[0][0], EATClassificationCriterion)
    log_keys = cases[0][0].log_keys
    assert log_keys[:3] == ["correct", "_predictions", "_targets"]
    # and the transformation head's logs (model.lambda_transform), when the model returns them
    assert {"transform_ce", "_transform_correct", "_transform_count"} <= set(log_keys)


# ---------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_parses_without_paths_and_sets_up_the_task(tmp_path, name):
    cfg = OmegaConf.load(RECIPES / f"{name}.yaml")
    for path in ("common.user_dir", "task.data", "checkpoint.save_dir", "model.model_path"):
        section, key = path.split(".")
        assert OmegaConf.is_missing(cfg[section], key), path  # given on the command line
    values = list(recipe_strings(OmegaConf.to_container(cfg, resolve=False)))
    assert not [v for v in values if v.startswith("/") or "${env:" in v or "/hpc" in v], values
    assert cfg.task._name == cfg.model._name == "mae_image_classification"
    assert (cfg.dataset.train_subset, cfg.dataset.valid_subset) == ("train", "eval")
    assert cfg.optimizer._name == "composite" and cfg.optimizer.dynamic_groups and cfg.lr_scheduler == "pass_through"
    assert cfg.criterion._name == "model" and cfg.checkpoint.maximize_best_checkpoint_metric
    assert cfg.common.tensorboard_logdir == "tb"  # the official value: event files in the run directory

    make_labelled_data(tmp_path, [["dog"], ["rain"]], split="eval")
    task_section = OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig), cfg.task,
                                   {"data": str(tmp_path), "seed": 1, "weights_file": "weights.csv"})
    task = fairseq_tasks.setup_task(task_section)
    assert task.multi_label == (cfg.checkpoint.best_checkpoint_metric == "mAP")
    task.load_dataset("eval")
    assert task.cfg.target_length == cfg.model.target_length


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_composes_like_fairseq_hydra_train(name):
    overrides = ["common.user_dir=plugin", "task.data=data", "checkpoint.save_dir=out", "model.model_path=m.pt"]
    overrides += {"as2m": ["task.weights_file=w.csv"], "tiny": ["model.num_classes=6"]}.get(name, [])
    cfg = compose_recipe("finetuning", name, overrides)
    assert cfg.model.prediction_mode.name == "CLS_TOKEN"
    assert cfg.task.label_descriptors == "label_descriptors.csv" and cfg.task.labels == "lbl"
    assert cfg.criterion.can_sum is True  # multi-label logs too: the task sums per-rank slots


# ------------------------------------------------------------------------------ run_esc50_folds.py


def folds_script():
    return load_script("run_esc50_folds")


def esc50_tree(root: Path, folds=(1, 2, 3, 4, 5)) -> Path:
    for k in folds:
        for name in ("train.tsv", "eval.tsv", "label_descriptors.csv"):
            (root / f"fold{k}").mkdir(parents=True, exist_ok=True)
            (root / f"fold{k}" / name).write_text("")
    return root


def fold_args(tmp_path: Path, *extra: str) -> List[str]:
    model = tmp_path / "pretrained.pt"
    model.write_bytes(b"")
    return ["--esc50-dir", str(esc50_tree(tmp_path / "esc50")), "--model-path", str(model),
            "--out", str(tmp_path / "out"), *extra]


def override(command: List[str], key: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(key + "=")]
    assert len(values) == 1, (key, command)
    return values[0]


def test_dry_run_prints_one_command_per_fold(tmp_path, capsys):
    argv = fold_args(tmp_path, "--folds", "3", "1", "--dry-run", "--", "dataset.num_workers=2", "+foo=bar")
    assert folds_script().main(argv, runner=lambda *a: pytest.fail("dry run ran a command")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    out = (tmp_path / "out").resolve()
    for line, k in zip(lines, (1, 3)):
        command = line.split()
        assert command[0] == str(Path(sys.executable).parent / "fairseq-hydra-train")
        assert command[1:5] == ["--config-dir", str(RECIPES), "--config-name", "esc50"]
        assert override(command, "task.data") == str((tmp_path / "esc50" / f"fold{k}").resolve())
        assert override(command, "model.model_path") == str((tmp_path / "pretrained.pt").resolve())
        assert override(command, "checkpoint.save_dir") == str(out / f"fold{k}")
        assert override(command, "common.user_dir") == str(REPO / "eat_plugin")
        assert override(command, "hydra.run.dir").startswith(str(out / f"fold{k}"))
        assert command[-2:] == ["dataset.num_workers=2", "+foo=bar"]
    assert not (tmp_path / "out").exists()


def fake_runner(best: dict, log_only: dict = None, status: dict = None):
    """Writes what a fold run leaves behind: checkpoint_best.pt with extra_state["best"], or only a log."""
    log_only, status = log_only or {}, status or {}

    def run(command, log_path):
        save_dir = Path(override(command, "checkpoint.save_dir"))
        fold = int(save_dir.name[len("fold"):])
        if fold in status:
            log_path.write_text("Traceback: boom\n")
            return status[fold]
        if fold in log_only:
            lines = [json.dumps({"epoch": e, "eval_loss": "1.2", "eval_accuracy": f"{v:g}", "eval_best_accuracy":
                                 f"{max(log_only[fold][:e + 1]):g}", "eval_num_updates": str(10 * e)})
                     for e, v in enumerate(log_only[fold])]  # what fairseq logs after each validation
            log_path.write_text("".join(f"[2025-01-01 00:00:00,000][eval][INFO] - {line}\n" for line in lines))
        else:
            log_path.write_text("training\n")
            torch.save({"cfg": {"checkpoint": {"best_checkpoint_metric": "accuracy"}},
                        "extra_state": {"best": best[fold]}}, save_dir / "checkpoint_best.pt")
        return 0

    return run


def test_fake_runs_are_aggregated(tmp_path, capsys):
    best = {1: 80.0, 2: 85.0, 4: 75.0, 5: 82.5}
    log_only = {3: [70.0, 90.0, 88.0]}  # best 90 from the log
    assert folds_script().main(fold_args(tmp_path), runner=fake_runner(best, log_only)) == 0
    out = capsys.readouterr().out
    values = [80.0, 85.0, 90.0, 75.0, 82.5]
    mean = sum(values) / 5  # 82.5
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)  # sqrt(125 / 4) = 5.590
    assert mean == 82.5 and sample_std == pytest.approx(5.5902, abs=1e-4)
    assert "mean ± std: 82.50 ± 5.59 over 5 folds (sample standard deviation (ddof=1))" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mean"] == pytest.approx(mean) and summary["std"] == pytest.approx(sample_std)
    assert {k: v["accuracy"] for k, v in summary["folds"].items()} == {str(k): v for k, v in zip(range(1, 6), values)}
    assert summary["folds"]["3"]["source"].endswith("fold3/train.log")
    assert summary["folds"]["1"]["source"].endswith("fold1/checkpoint_best.pt")


def test_one_fold_has_no_std(tmp_path, capsys):
    assert folds_script().main(fold_args(tmp_path, "--folds", "2"), runner=fake_runner({2: 91.25})) == 0
    assert "mean ± std: 91.25 ± n/a over 1 folds" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["std"] is None


def test_failed_run_names_the_fold_and_the_log(tmp_path, capsys):
    runner = fake_runner({1: 80.0, 2: 85.0}, status={2: 1})
    assert folds_script().main(fold_args(tmp_path, "--folds", "1", "2", "3"), runner=runner) == 1
    err = capsys.readouterr().err
    assert "fold 2: fairseq-hydra-train exited with status 1; see" in err
    assert str((tmp_path / "out" / "fold2" / "train.log").resolve()) in err
    assert not (tmp_path / "out" / "fold3").exists()  # stops at the first failure


def test_run_without_a_result_names_the_fold(tmp_path, capsys):
    assert folds_script().main(fold_args(tmp_path, "--folds", "4"), runner=fake_runner({}, log_only={4: []})) == 1
    assert "fold 4: no validation accuracy found" in capsys.readouterr().err


def test_missing_fold_dir_and_model(tmp_path, capsys):
    argv = fold_args(tmp_path, "--folds", "6")
    assert folds_script().main(argv, runner=fake_runner({})) == 1
    assert f"fold 6: {(tmp_path / 'esc50' / 'fold6').resolve()} not found" in capsys.readouterr().err
    argv = fold_args(tmp_path, "--folds", "2", "--dry-run")
    (tmp_path / "esc50" / "fold2" / "eval.tsv").unlink()
    assert folds_script().main(argv, runner=fake_runner({})) == 1
    assert "fold 2:" in capsys.readouterr().err
    argv = fold_args(tmp_path) + ["--model-path", str(tmp_path / "nope.pt")]
    assert folds_script().main(argv, runner=fake_runner({})) == 1
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err


def test_training_options_are_checked_at_start_up_with_one_message_each(tmp_path):
    make_labelled_data(tmp_path, [["dog"]])
    required = ["common.user_dir=plugin", f"task.data={tmp_path}", "checkpoint.save_dir=out", "model.model_path=m.pt",
                "model.num_classes=4"]
    cfg = compose_recipe("finetuning", "tiny", [*required, "optimization.lr=[0.0]",
                                                "optimizer.groups.default.lr_float=-0.001", "dataset.batch_size=0",
                                                "optimization.update_freq=[0]"])
    with pytest.raises(ValueError) as err:
        MaeImageClassificationTask.setup_task(cfg.task)
    lines = str(err.value).splitlines()[1:]
    assert [line.strip() for line in lines] == [
        "optimization.lr[0]=0.0: expected a learning rate > 0",
        "optimizer.groups.default.lr_float=-0.001: expected a learning rate > 0",
        "optimization.update_freq[0]=0: expected at least 1 batch per update",
        "dataset.batch_size=0: expected at least 1 clip",
        "dataset.batch_size_valid=0: expected at least 1 clip",  # fairseq: ${dataset.batch_size} by default
    ]
    good = compose_recipe("finetuning", "tiny", required)
    assert isinstance(MaeImageClassificationTask.setup_task(good.task), MaeImageClassificationTask)
