"""Every official config field: the official name, declared type and default; implemented, refused or inert.

``tests/data/official_config_fields.tsv`` lists the fields of the four registered official dataclasses
as the official code declares them (reference §12). A checkpoint's cfg is merged into those
declarations when the official code loads it, so a field declared with another type here (a float
where the official one is an int) makes checkpoints written here unloadable there.
"""

import ast
import dataclasses
import enum
import typing

import pytest
import torch
import torch.nn.functional as F
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.tasks import TASK_DATACLASS_REGISTRY
from omegaconf import OmegaConf

import eat_plugin  # noqa: F401  (registers the models and tasks)
from eat_plugin.data.datasets import BlockMaskSpec
from eat_plugin.official_fields import INERT, REFUSED
from helpers import PLUGIN_FIELDS, REPO, TARGET_LENGTH, official_fields, tiny_pretraining_config
from helpers.official import official_default

TINY_MASKS = BlockMaskSpec(clone_batch=2, mask_prob=0.8, mask_prob_adjust=0.07)  # the tiny model's masking

# Declared wider than the official type on purpose; the value stored in a checkpoint is always of the
# official type (the task fills num_classes: null from the class table before the model is built).
WIDENED = {"model:mae_image_classification.num_classes": "Optional[int]"}


def type_name(tp, nested: bool = False) -> str:
    """A declared type the way the official table writes it (a bare enum as its truncated repr)."""
    if typing.get_origin(tp) is typing.Union:
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"Optional[{type_name(inner, True)}]"
    if typing.get_origin(tp) is list:
        return f"List[{type_name(typing.get_args(tp)[0], True)}]"
    if tp is typing.Any:
        return "Any"
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and not nested:
        return f"<enum '{tp.__name__}"
    return tp.__name__


def declared_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from declared_fields(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name], default


def ours() -> dict:
    fields = {}
    for section, registry in (("model", MODEL_DATACLASS_REGISTRY), ("task", TASK_DATACLASS_REGISTRY)):
        for name in ("data2vec_multi", "mae_image_classification", "mae_image_pretraining"):
            if name in registry:
                for path, tp, default in declared_fields(registry[name]):
                    fields[f"{section}:{name}.{path}"] = (tp, default)
    return fields


def test_every_official_field_is_declared_with_its_official_type_and_default():
    official, declared = official_fields(), ours()
    assert len(official) == 197
    assert sorted(set(official) - set(declared)) == []
    assert sorted(set(declared) - set(official)) == sorted(PLUGIN_FIELDS)
    wrong = []
    for key, (official_type, official_value) in official.items():
        tp, default = declared[key]
        name = type_name(tp)
        if name != WIDENED.get(key, official_type):
            wrong.append(f"{key}: type {name}, official {official_type}")
        value = official_default(official_value)
        if isinstance(value, str) and value.startswith("<"):  # an enum member: compare by name
            ok = getattr(default, "name", None) == value.split(".")[1].split(":")[0]
        else:
            ok = default == value and isinstance(default, bool) == isinstance(value, bool)
        if not ok:
            wrong.append(f"{key}: default {default!r}, official {official_value}")
    assert wrong == []


def test_the_table_names_only_official_fields():
    official = {key.replace("task:mae_image_pretraining.", "task.") for key in official_fields()}
    mask_fields = {"task.precompute_mask_config.expand_adjacent", "task.precompute_mask_config.non_overlapping",
                   "task.precompute_mask_config.mask_dropout"}  # ImageMaskingConfig (reference §2.6)
    for key in [*REFUSED, *INERT]:
        assert key in official | mask_fields, key
    assert not set(REFUSED) & set(INERT)


def attributes_read(files) -> set:
    """Every ``x.name`` read and every string constant in ``files`` (declarations are assignments)."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return names


def test_no_official_field_is_read_by_nothing():
    """Each official field is refused / inert in the one table, or the code reads it somewhere."""
    files = [p for p in (REPO / "eat_plugin").rglob("*.py") if p.name not in ("official_fields.py", "official_configs.py")]
    read = attributes_read(files)
    unread = []
    for key in official_fields():
        section, path = key.split(".", 1)
        table_key = f"task.{path}" if section.startswith("task:") else key
        if path.endswith("_name") or table_key in REFUSED or table_key in INERT:
            continue
        if path.split(".")[-1] not in read:
            unread.append(key)
    assert unread == []


def refused_model_cases():
    from eat_plugin.models.pretraining_config import D2vDecoderConfig

    for key, rule in REFUSED.items():
        if key.startswith("model:data2vec_multi."):
            path = key.split(".", 1)[1]
            if path in ("modalities.image.type", "supported_modality"):
                yield path, "TEXT"
            elif path == "shared_decoder":
                yield path, D2vDecoderConfig()
            elif isinstance(rule.accepted[0], bool):
                yield path, not rule.accepted[0]
            elif rule.accepted[0] is None:
                yield path, 0.5
            else:
                yield path, rule.accepted[0] + 1


@pytest.mark.parametrize("path,value", list(refused_model_cases()))
def test_each_refused_model_field_stops_the_build_naming_it(path, value):
    from eat_plugin.models.data2vec_multi import Data2VecMultiModel

    with pytest.raises(ValueError, match=rf"model\.{path}=.* is not supported"):
        Data2VecMultiModel(tiny_pretraining_config(**{path: value}))


@pytest.mark.parametrize("path,value,expected", [
    ("embed_dim", 33, "a multiple of model.num_heads=2"),
    ("average_top_k_layers", 3, "between 1 and model.depth=2"),
    ("clone_batch", 0, "at least 1"),
    ("modalities.image.mask_prob", 1.0, "a fraction strictly between 0 and 1"),
    ("modalities.image.decoder.decoder_groups", 3, "a divisor of decoder_dim=32"),
    ("modalities.image.target_length", 1040, "at most max_length \\* 16 = 1024"),
    ("encoder_dropout", 1.0, "a probability in \\[0, 1\\)"),
    ("ema_end_decay", 1.5, "a decay in \\[0, 1\\]"),
    ("cls_loss_scale", "world", "one of"),
])
def test_out_of_range_values_give_one_message_naming_the_field(path, value, expected):
    from eat_plugin.models.data2vec_multi import Data2VecMultiModel

    overrides = {path: value}
    if path == "embed_dim":
        overrides["modalities.image.embed_dim"] = value
    with pytest.raises(ValueError, match=rf"model\.{path}={value!r}: expected {expected}"):
        Data2VecMultiModel(tiny_pretraining_config(**overrides))


def test_decoder_input_dropout_is_the_official_in_place_dropout_of_the_student_output():
    """Official ``decoder_input``: ``F.dropout(x, p, inplace=True)`` on the student's output (CLS included)
    before the mask tokens go in, so the CLS loss also sees the dropped-out CLS."""
    from eat_plugin.losses import regression_loss
    from eat_plugin.models.data2vec_multi import Data2VecMultiModel

    p = 0.5
    model = Data2VecMultiModel(tiny_pretraining_config(**{"modalities.image.decoder.input_dropout": p})).train()
    captured = {}

    def keep_student(module, args, out):
        captured.setdefault("student", out[0].detach())

    def keep_decoder_input(module, args):
        captured["decoder_in"] = args[0].detach()

    model.blocks[-1].register_forward_hook(keep_student)
    model.modality_encoders["IMAGE"].decoder.register_forward_pre_hook(keep_decoder_input)
    source = torch.randn(2, 1, TARGET_LENGTH, 128)
    masks = torch.cat([TINY_MASKS.sample(TARGET_LENGTH, torch.Generator().manual_seed(i)) for i in range(2)])
    torch.manual_seed(123)
    out = model(source, id=[0, 1], precomputed_mask=masks)
    torch.manual_seed(123)  # the dropout is the only draw from the global RNG (noise is keyed by clip id)
    dropped = F.dropout(captured["student"], p, training=True)  # (R, 1 + N_keep, D)
    assert (dropped == 0).float().mean().item() == pytest.approx(p, abs=0.05)
    visible = ~masks.bool()  # (R, N)
    torch.testing.assert_close(captured["decoder_in"][visible], dropped[:, 1:].reshape(-1, dropped.size(-1)))
    targets = model._teacher_targets(source)  # (B, N, D)
    cls_target = targets.mean(1).repeat_interleave(2, 0)  # (R, D)
    sample_size = int(masks.sum())
    expected = regression_loss(dropped[:, 0], cls_target, 0, None) * sample_size
    torch.testing.assert_close(out["losses"]["cls"], expected)
    model.eval()  # no dropout outside training
    captured.clear()
    model(source, id=[0, 1], precomputed_mask=masks)
    torch.testing.assert_close(captured["decoder_in"][visible], captured["student"][:, 1:].reshape(-1, 32))


def test_log_norms_logs_the_official_model_and_ema_norms():
    from eat_plugin.models.data2vec_multi import Data2VecMultiModel

    model = Data2VecMultiModel(tiny_pretraining_config()).train()
    teacher_keys = set(model.teacher.fp32_params)
    before = {k: v.clone() for k, v in model.teacher.fp32_params.items()}
    model.set_num_updates(1)  # one EMA step
    student = dict(model.named_parameters())
    trainable = [k for k in teacher_keys if student[k].requires_grad]
    decay = model.teacher.decay
    expected_model = torch.sqrt(sum((student[k].detach() ** 2).sum() for k in trainable))
    expected_ema = torch.sqrt(sum(((decay * before[k] + (1 - decay) * student[k].detach()) ** 2).sum()
                                  for k in trainable))
    masks = torch.cat([TINY_MASKS.sample(TARGET_LENGTH, torch.Generator().manual_seed(i)) for i in range(2)])
    out = model(torch.randn(2, 1, TARGET_LENGTH, 128), id=[0, 1], precomputed_mask=masks)
    torch.testing.assert_close(out["model_norm"], expected_model)
    torch.testing.assert_close(out["ema_norm"], expected_ema)
    off = Data2VecMultiModel(tiny_pretraining_config(log_norms=False)).train()
    off.set_num_updates(1)
    assert "model_norm" not in off(torch.randn(2, 1, TARGET_LENGTH, 128), id=[0, 1], precomputed_mask=masks)


def test_fine_tuning_specaugment_widths_are_official_integers():
    from eat_plugin.models.mae_image_classification import MaeImageClassificationConfig

    declared = typing.get_type_hints(MaeImageClassificationConfig)
    assert declared["freqm"] is int and declared["timem"] is int


# ------------------------------------------------------------------------------ saved checkpoints
def official_task_fields() -> set:
    return {key.split(".", 1)[1] for key in official_fields() if key.startswith("task:mae_image_classification.")}


def plugin_checkpoint() -> dict:
    """A fine-tuned checkpoint's cfg as the trainer saves it: our task fields at top level and in the stored
    pre-training run config."""
    pretraining_task = {"_name": "mae_image_pretraining", "data": "/d", "target_length": 128, "norm_mean": -5.0,
                        "norm_std": 3.0, "min_sample_size": 100, "skip_bad_clips": True}
    return {"model": {"w": torch.ones(2)}, "extra_state": {},
            "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {}, "num_updates": 0}],
            "cfg": {
        "task": {"_name": "mae_image_classification", "data": "/d", "labels": "lbl", "norm_mean": -4.0,
                 "norm_std": 2.5, "min_sample_size": 10000, "label_type": "single", "skip_bad_clips": False},
        "model": {"_name": "mae_image_classification", "pretrained_model_args": {
            "task": pretraining_task, "model": {"_name": "data2vec_multi", "cls_loss_scale": "local_sample_size"}}},
    }}


def test_saved_checkpoints_hold_only_official_task_fields_and_load_back_whole(tmp_path):
    """The official code rebuilds a checkpoint's pre-training task with fairseq's setup_task, which refuses
    unknown keys: every task section written here holds official fields only, and loading here restores ours."""
    from fairseq import checkpoint_utils
    from eat_plugin.checkpoint import load_checkpoint

    state = plugin_checkpoint()
    path = tmp_path / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save(state, str(path))  # what the trainer calls (patched by the plugin)
    raw = torch.load(path, weights_only=True)
    official = official_task_fields()
    for cfg in (raw["cfg"], raw["cfg"]["model"]["pretrained_model_args"]):
        assert set(cfg["task"]) <= official, set(cfg["task"]) - official
    assert raw["cfg"]["eat_plugin_task"]["norm_mean"] == -4.0
    assert state["cfg"]["task"]["norm_mean"] == -4.0  # the trainer's own dict is not modified
    for loaded in (load_checkpoint(path), checkpoint_utils.load_checkpoint_to_cpu(str(path))):
        cfg = OmegaConf.to_container(OmegaConf.create(loaded["cfg"]))
        assert cfg == plugin_checkpoint()["cfg"]


def test_official_layout_round_trip_and_official_checkpoints_are_left_alone():
    from eat_plugin.checkpoint_cfg import from_official_layout, to_official_layout

    state = plugin_checkpoint()
    stored = to_official_layout(state)
    assert "norm_mean" not in stored["cfg"]["task"] and "eat_plugin_task" not in state["cfg"]
    as_config = {**stored, "cfg": OmegaConf.create(stored["cfg"])}  # fairseq's loader gives a DictConfig
    assert OmegaConf.to_container(from_official_layout(as_config)["cfg"]) == plugin_checkpoint()["cfg"]
    official = {"model": {}, "cfg": {"task": {"_name": "mae_image_pretraining", "data": "/d"}, "model": {}}}
    assert to_official_layout(official) == official and from_official_layout(official) == official
