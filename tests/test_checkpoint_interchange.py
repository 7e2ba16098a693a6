"""Checkpoint interchange with the official implementation, from the spec (eat_reference.md §2, §6, §9).

Fixtures (``helpers.official``) are official-format checkpoints written by hand from the reference: every
official config field (the official field table's defaults and the official recipe's values), the §9.1 /
§9.2 key lists and shapes, an ``_ema`` dict, enums stored as plain strings, saved with ``torch.save``. They
use the official EAT-base / EAT-large structure (12 blocks + 6-layer 3x3 decoder / 24 blocks + 3-layer 5x5
decoder) at a small width. Conversely, a checkpoint written the way ``fairseq-hydra-train`` writes it must
use only official key and field names (the official field table, ``tests/data/official_config_fields.tsv``).
"""

import pytest
import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils, tasks
from omegaconf import OmegaConf

from eat_plugin.models.data2vec_multi import Data2VecMultiModel
from eat_plugin.models.mae_image_classification import MaeImageClassificationConfig, MaeImageClassificationModel
from eat_plugin.models.pretraining_config import config_from_dict
from helpers import load_with_fairseq, official_names, plugin_names, run_config
from helpers.official import (CLASSES, CLASSIFICATION_TASK, CLASSIFIER_MODEL, PRETRAINING_MODEL, PRETRAINING_TASK,
                              STRUCTURES, D, clips, official_checkpoint, official_finetuned_keys,
                              official_pretraining_keys, reference_features, write_class_table)


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_our_model_has_the_spec_keys_and_shapes(structure):
    """Built from an official config, our model's state dict has the §9.1 keys (the teacher: the same without
    the decoder) and the official checkpoint's shapes."""
    depth, layers, _ = STRUCTURES[structure]
    state = official_checkpoint(structure)
    expected = official_pretraining_keys(depth, layers)
    ours = Data2VecMultiModel(config_from_dict(state["cfg"]["model"])).state_dict()
    assert set(ours) == set(expected)
    assert set(ours["_ema"]) == {k for k in expected if "decoder" not in k and k != "_ema"}
    assert {k: tuple(v.shape) for k, v in ours.items() if k != "_ema"} == {
        k: tuple(v.shape) for k, v in state["model"].items() if k != "_ema"}


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_official_pretraining_checkpoint_loads_through_fairseq(tmp_path, structure):
    state = official_checkpoint(structure, seed=3)
    torch.save(state, tmp_path / "checkpoint_last.pt")
    model, cfg, task = load_with_fairseq(tmp_path / "checkpoint_last.pt", data=str(tmp_path))
    assert type(model).__name__ == "Data2VecMultiModel" and type(task).__name__ == "MaeImagePretrainingTask"
    loaded = model.state_dict()
    for key, value in state["model"].items():
        if key != "_ema":
            assert torch.equal(loaded[key], value), key
    for key, value in state["model"]["_ema"].items():
        assert torch.equal(loaded["_ema"][key], value), key  # the teacher is restored from _ema

    in_memory = Data2VecMultiModel(config_from_dict(state["cfg"]["model"]))
    in_memory.load_state_dict(state["model"], strict=True)
    x = clips()
    with torch.no_grad():
        features = model.extract_features(x, remove_extra_tokens=False)["x"]  # (2, 65, 64)
        assert torch.equal(features, in_memory.eval().extract_features(x, remove_extra_tokens=False)["x"])
        torch.testing.assert_close(features, reference_features(state["model"], x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_official_finetuned_checkpoint_loads_through_fairseq(tmp_path, structure):
    state = official_checkpoint(structure, finetuned=True, seed=5)
    torch.save(state, tmp_path / "checkpoint_best.pt")
    data = write_class_table(tmp_path / "data")
    model, cfg, task = load_with_fairseq(tmp_path / "checkpoint_best.pt", data=str(data))
    assert type(model).__name__ == "MaeImageClassificationModel" and task.num_classes == CLASSES
    assert set(model.state_dict()) == set(state["model"])

    in_memory = MaeImageClassificationModel(OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig),
                                                            state["cfg"]["model"]))
    in_memory.load_state_dict(state["model"], strict=True)
    x = clips(seed=1)
    w = state["model"]
    with torch.no_grad():
        logits = model(x)  # (2, 527)
        assert torch.equal(logits, in_memory.eval()(x))
        cls = reference_features(w, x, prefix="model.")[:, 0]  # (2, D)
        expected = F.linear(F.layer_norm(cls, (D,), w["fc_norm.weight"], w["fc_norm.bias"], 1e-6), w["head.weight"],
                            w["head.bias"])
        torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)


def trainer_state(cfg, path):
    """Set up the task and model as fairseq_cli/train.py does; save in ``Trainer.state_dict()``'s layout."""
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    checkpoint_utils.torch_persistent_save({"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "model": model.state_dict(), "criterion": None,
                "optimizer_history": [{"criterion_name": "ModelCriterion", "lr_scheduler_state": {},
                                       "optimizer_name": "FairseqCompositeOptimizer", "num_updates": 0}],
                "task_state": task.state_dict(), "extra_state": {"previous_training_time": 0.0}}, str(path))
    return model


def trainer_style_finetuned_checkpoint(tmp_path):
    """Our tiny pre-training recipe, then our tiny fine-tuning recipe from it, both saved trainer-style."""
    data = write_class_table(tmp_path / "data", num_classes=5)
    torch.manual_seed(0)
    trainer_state(run_config("pretraining", "tiny", [f"task.data={data}", f"checkpoint.save_dir={tmp_path}"]),
                  tmp_path / "pretrain.pt")
    cfg = run_config("finetuning", "tiny", [f"task.data={data}", f"checkpoint.save_dir={tmp_path}",
                                            "model.num_classes=5", f"model.model_path={tmp_path / 'pretrain.pt'}"])
    model = trainer_state(cfg, tmp_path / "finetuned.pt")
    return torch.load(tmp_path / "finetuned.pt", weights_only=True), model, data


def test_our_finetuned_checkpoint_uses_only_official_names(tmp_path):
    state, model, data = trainer_style_finetuned_checkpoint(tmp_path)
    assert set(state["model"]) == set(official_finetuned_keys(depth=2))
    cfg = state["cfg"]
    assert set(cfg["model"]) == official_names(CLASSIFIER_MODEL) | plugin_names(CLASSIFIER_MODEL)
    # the official code's setup_task refuses unknown task keys: ours are stored beside the task section
    assert set(cfg["task"]) == official_names(CLASSIFICATION_TASK)
    assert set(cfg["eat_plugin_task"]) == plugin_names(CLASSIFICATION_TASK)
    pre = cfg["model"]["pretrained_model_args"]
    # unknown model keys are dropped by the official loader
    assert set(pre["model"]) == official_names(PRETRAINING_MODEL) | plugin_names(PRETRAINING_MODEL)
    assert set(pre["model"]["modalities"]) <= official_names(PRETRAINING_MODEL, "modalities")
    assert set(pre["model"]["modalities"]["image"]) == official_names(PRETRAINING_MODEL, "modalities.image")
    assert set(pre["model"]["modalities"]["image"]["decoder"]) == official_names(PRETRAINING_MODEL,
                                                                                 "modalities.image.decoder")
    assert set(pre["task"]) == official_names(PRETRAINING_TASK)
    assert set(pre["eat_plugin_task"]) == plugin_names(PRETRAINING_TASK)
    assert (cfg["model"]["prediction_mode"], pre["model"]["supported_modality"],
            pre["model"]["modalities"]["image"]["type"]) == ("CLS_TOKEN", "IMAGE", "IMAGE")  # enums as names
    assert state["task_state"] == {"labels": {f"/m/c{i}": str(i) for i in range(5)}}

    (tmp_path / "pretrain.pt").unlink()  # reloads from the stored pre-training config alone
    loaded, _, _ = load_with_fairseq(tmp_path / "finetuned.pt", data=str(data))
    x = clips(seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
