"""The one rule that picks the fbank statistics (``data.fbank.training_norm_stats``), and its users."""

import pytest
import torch
from omegaconf import OmegaConf

from eat_plugin.data.fbank import NormStats, resolve_norm_stats, training_norm_stats

AUDIOSET, ESC50, SPCV2 = NormStats(-4.268, 4.569), NormStats(-6.627, 5.359), NormStats(-6.846, 5.565)  # §5.2


@pytest.mark.parametrize("task,expected", [
    ({}, AUDIOSET),
    ({"esc50_eval": True}, ESC50),
    ({"spcv2_eval": True}, SPCV2),
    ({"norm_mean": -5.0, "norm_std": 3.0}, NormStats(-5.0, 3.0)),
    ({"esc50_eval": False, "spcv2_eval": False, "norm_mean": None, "norm_std": None}, AUDIOSET),
])
def test_statistics_by_task_fields(task, expected):
    assert training_norm_stats(task) == expected
    assert training_norm_stats(OmegaConf.create(task)) == expected  # a checkpoint's cfg, as DictConfig


@pytest.mark.parametrize("task,message", [
    ({"esc50_eval": True, "spcv2_eval": True}, "task.esc50_eval and task.spcv2_eval are both true"),
    ({"norm_mean": -5.0}, "task.norm_std is unset"),
    ({"norm_mean": -5.0, "norm_std": 3.0, "spcv2_eval": True}, "task.spcv2_eval both choose the statistics"),
    ({"norm_mean": float("nan"), "norm_std": 3.0}, "task.norm_mean=nan: expected a finite number"),
    ({"norm_mean": 0.0, "norm_std": 0.0}, "task.norm_std=0.0: expected a finite positive number"),
])
def test_contradictions_are_refused_naming_the_fields(task, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        training_norm_stats(task)


def test_the_command_line_text_forms():
    assert resolve_norm_stats("esc50") == ESC50
    assert resolve_norm_stats("-5,2.5") == NormStats(-5.0, 2.5)
    for bad in ("-5,2,1", "a,b", "imagenet", "1,0"):
        with pytest.raises(ValueError):
            resolve_norm_stats(bad)


def test_the_api_uses_the_training_statistics_and_refuses_what_the_task_refuses(tmp_path):
    from eat_plugin.api import load_model
    from helpers.tiny import save_pretrained

    path = tmp_path / "pretrained.pt"
    save_pretrained(path)
    state = torch.load(path, weights_only=False)
    state["cfg"]["task"].update(esc50_eval=True)
    torch.save(state, path)
    assert load_model(path).front_end.stats == ESC50
    state["cfg"]["task"].update(norm_mean=-5.0, norm_std=3.0)  # and esc50_eval: the task refuses this
    torch.save(state, path)
    with pytest.raises(ValueError, match="both choose the statistics"):
        load_model(path)
