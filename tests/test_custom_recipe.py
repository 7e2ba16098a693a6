"""Fine-tuning on any label set: ``task.label_type``, ``model.num_classes: null``,
``checkpoint.best_checkpoint_metric: auto`` and the ``custom`` / ``custom_tiny`` recipes."""

import json
import shlex
from pathlib import Path

import pytest
from fairseq import tasks as fairseq_tasks
from fairseq.tasks import FairseqTask
from omegaconf import OmegaConf

from eat_plugin.models.mae_image_classification import MaeImageClassificationConfig as ModelConfig
from eat_plugin.models.mae_image_classification import is_single_label
from eat_plugin.tasks.classification import MaeImageClassificationTask
from helpers import classification_task_cfg, compose_recipe, make_labelled_data

CUSTOM_RECIPES = ("custom", "custom_tiny")
# what scripts/prepare_custom.py prints and stores as summary.json "overrides" (the README shows them)
PREPARED_OVERRIDES = "task.target_length=208 task.norm_mean=-6.5123 task.norm_std=4.2345"


def write_summary(data: Path, **values) -> Path:
    (data / "summary.json").write_text(json.dumps(values))
    return data


def run_config(data: Path, best_metric: str = "auto", **task_overrides):
    """A run config as fairseq_cli/train.py holds it: task and checkpoint sections under one root."""
    task = {**OmegaConf.to_container(classification_task_cfg(data, **task_overrides)),
            "_name": "mae_image_classification"}
    return OmegaConf.create({"task": task, "checkpoint": {"best_checkpoint_metric": best_metric,
                                                           "maximize_best_checkpoint_metric": False}})


def setup_like_fairseq(run) -> MaeImageClassificationTask:
    return fairseq_tasks.setup_task(run.task)  # merges with the dataclass, keeping the root as parent


# ------------------------------------------------------------------------------------ label type


@pytest.mark.parametrize("label_type, flags, summary, expected", [
    ("flags", {}, None, True),                      # official: AudioSet-style unless a flag says otherwise
    ("flags", {"esc50_eval": True}, None, False),
    ("flags", {"spcv2_eval": True}, None, False),
    ("single", {}, None, False),
    ("multi", {"esc50_eval": True}, None, True),   # explicit beats the flags (they still pick the statistics)
    ("auto", {}, {"multi_label": True}, True),
    ("auto", {}, {"multi_label": False}, False),
])
def test_label_type_decides_single_or_multi_label(tmp_path, label_type, flags, summary, expected):
    make_labelled_data(tmp_path, [["dog", "rain"]])
    if summary is not None:
        write_summary(tmp_path, **summary)
    task = MaeImageClassificationTask.setup_task(classification_task_cfg(tmp_path, label_type=label_type, **flags))
    assert task.multi_label is expected
    assert task.validation_metric == ("mAP" if expected else "accuracy")


@pytest.mark.parametrize("summary, message", [
    (None, r"label_type=auto reads .*summary\.json, which does not exist"),
    ({"classes": 4}, r"summary\.json has no boolean 'multi_label' \(got None\)"),
    ({"multi_label": "yes"}, r"no boolean 'multi_label' \(got 'yes'\)"),
])
def test_auto_label_type_without_a_usable_summary_names_the_file(tmp_path, summary, message):
    make_labelled_data(tmp_path, [["dog"]])
    if summary is not None:
        write_summary(tmp_path, **summary)
    with pytest.raises(ValueError, match=message):
        MaeImageClassificationTask.setup_task(classification_task_cfg(tmp_path, label_type="auto"))


def test_unreadable_summary_and_unknown_label_type(tmp_path):
    make_labelled_data(tmp_path, [["dog"]])
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"label_type=auto: cannot read .*summary\.json"):
        MaeImageClassificationTask.setup_task(classification_task_cfg(tmp_path, label_type="auto"))
    with pytest.raises(ValueError, match=r"task\.label_type='both': expected one of \['flags', 'single'"):
        MaeImageClassificationTask.setup_task(classification_task_cfg(tmp_path, label_type="both"))


@pytest.mark.parametrize("multi_label, metric", [(True, "mAP"), (False, "accuracy")])
def test_auto_choices_are_written_into_the_run_config(tmp_path, multi_label, metric):
    make_labelled_data(tmp_path, [["dog"]])
    write_summary(tmp_path, multi_label=multi_label)
    run = run_config(tmp_path, label_type="auto")
    task = setup_like_fairseq(run)
    assert task.multi_label is multi_label
    # what the checkpoint logic reads and the trainer saves
    assert run.checkpoint.best_checkpoint_metric == metric and run.checkpoint.maximize_best_checkpoint_metric
    assert run.task.label_type == task.cfg.label_type == ("multi" if multi_label else "single")
    (tmp_path / "summary.json").unlink()  # the saved config no longer needs the summary
    assert setup_like_fairseq(run_config(tmp_path, label_type=run.task.label_type)).multi_label is multi_label


def test_an_explicit_best_checkpoint_metric_is_kept(tmp_path):
    make_labelled_data(tmp_path, [["dog"]])
    write_summary(tmp_path, multi_label=True)
    run = run_config(tmp_path, best_metric="loss", label_type="auto")
    setup_like_fairseq(run)
    assert (run.checkpoint.best_checkpoint_metric, run.checkpoint.maximize_best_checkpoint_metric) == ("loss", False)


# ----------------------------------------------------------------------------------------- model


def built_model_configs(task, monkeypatch, model_cfg):
    built = []
    monkeypatch.setattr(FairseqTask, "build_model", lambda self, cfg, from_checkpoint=False: built.append(cfg))
    task.build_model(model_cfg)
    return built


@pytest.mark.parametrize("label_type, multi_label", [("single", False), ("multi", True)])
def test_task_fills_num_classes_and_tells_the_model_the_label_type(tmp_path, monkeypatch, label_type, multi_label):
    make_labelled_data(tmp_path, [["dog"]])  # 4 classes in the table
    task = MaeImageClassificationTask.setup_task(classification_task_cfg(tmp_path, label_type=label_type))
    model_cfg = OmegaConf.create({"_name": "mae_image_classification", "num_classes": None})
    (cfg,) = built_model_configs(task, monkeypatch, model_cfg)
    assert (cfg.num_classes, cfg.multi_label) == (4, multi_label)
    full = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg, {"model_path": "m.pt"})
    assert is_single_label(full) is not multi_label


def test_official_flags_leave_the_model_config_alone(tmp_path, monkeypatch):
    make_labelled_data(tmp_path, [["dog"]])
    task = MaeImageClassificationTask.setup_task(classification_task_cfg(tmp_path, esc50_eval=True))
    (cfg,) = built_model_configs(task, monkeypatch, OmegaConf.create({"_name": "mae_image_classification",
                                                                      "num_classes": 4}))
    assert "multi_label" not in cfg


def test_model_label_type_that_contradicts_the_task_is_refused(tmp_path, monkeypatch):
    make_labelled_data(tmp_path, [["dog"]])
    task = MaeImageClassificationTask.setup_task(classification_task_cfg(tmp_path, label_type="single"))
    with pytest.raises(ValueError, match=r"model\.multi_label=True but task\.label_type says .* single-label"):
        built_model_configs(task, monkeypatch, OmegaConf.create({"_name": "mae_image_classification",
                                                                  "num_classes": 4, "multi_label": True}))


@pytest.mark.parametrize("flags, multi_label, single", [
    ({"audio_mae": True}, None, False), ({"audio_mae": True, "esc50_eval": True}, None, True),
    ({"audio_mae": False}, None, True), ({"audio_mae": True}, False, True), ({"esc50_eval": True}, True, False),
])
def test_model_loss_choice(flags, multi_label, single):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"model_path": "m.pt", "multi_label": multi_label, **flags})
    assert is_single_label(cfg) is single


def test_model_without_a_class_count_says_who_fills_it():
    from eat_plugin.models.mae_image_classification import MaeImageClassificationModel

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"model_path": "m.pt", "num_classes": None})
    with pytest.raises(ValueError, match=r"model\.num_classes=None: .*filled in by the mae_image_classification task"):
        MaeImageClassificationModel(cfg)


# --------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", CUSTOM_RECIPES)
def test_custom_recipe_composes_with_the_readme_overrides(tmp_path, name):
    overrides = [f"task.data={tmp_path}", f"checkpoint.save_dir={tmp_path}",
                 f"model.model_path={tmp_path / 'pretrained.pt'}", *shlex.split(PREPARED_OVERRIDES)]
    cfg = OmegaConf.to_container(compose_recipe("finetuning", name, overrides), resolve=True)
    assert (cfg["task"]["target_length"], cfg["model"]["target_length"]) == (208, 208)  # one override sets both
    assert (cfg["task"]["norm_mean"], cfg["task"]["norm_std"]) == (-6.5123, 4.2345)
    assert (cfg["task"]["label_type"], cfg["model"]["num_classes"], cfg["checkpoint"]["best_checkpoint_metric"]) == (
        "auto", None, "auto")
    assert cfg["dataset"]["valid_subset"] == "valid" and cfg["common"]["tensorboard_logdir"] == "tb"
    assert not cfg["task"]["esc50_eval"] and not cfg["model"]["esc50_eval"]

    # the task sets up on prepared data and fills in what the recipe leaves to it
    for split in ("train", "valid"):
        make_labelled_data(tmp_path, [["dog"], ["rain"]], split=split)
    write_summary(tmp_path, multi_label=False)
    run = OmegaConf.create(cfg)
    task = setup_like_fairseq(run)
    assert task.multi_label is False and run.checkpoint.best_checkpoint_metric == "accuracy"
    stats = task.load_dataset("valid").front_end.stats
    assert (stats.mean, stats.std) == (-6.5123, 4.2345)


def test_custom_recipe_fine_tunes_an_official_pretrained_checkpoint_multi_label(tmp_path, golden_dir):
    """A released-format pre-training checkpoint (the golden one) under the custom recipe, multi-label data."""
    for split in ("train", "valid"):
        make_labelled_data(tmp_path, [["dog", "rain"], ["rain"], ["siren"], ["dog", "bell"]], split=split)
    write_summary(tmp_path, multi_label=True)
    overrides = [f"task.data={tmp_path}", f"checkpoint.save_dir={tmp_path}",
                 f"model.model_path={golden_dir / 'pretrain' / 'checkpoint_last.pt'}", "task.target_length=64",
                 "task.norm_mean=-5.0", "task.norm_std=4.0"]
    run = OmegaConf.create(OmegaConf.to_container(compose_recipe("finetuning", "custom_tiny", overrides), resolve=True,
                                                  enum_to_str=True))  # as fairseq_cli/hydra_train.py does
    task = setup_like_fairseq(run)
    model = task.build_model(run.model)
    assert run.checkpoint.best_checkpoint_metric == "mAP" and run.model.multi_label is True
    assert model.head.out_features == 4 and not model.single_label

    task.load_dataset("valid")
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    out = model.eval()(**batch["net_input"])
    assert set(out) >= {"losses", "_predictions", "_targets"}  # BCE and the inputs of the mAP metric
    assert out["_targets"].sum() == 6 and out["_predictions"].shape == (4, 4)
