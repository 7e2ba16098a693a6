"""Design note 003's transformation head on a fine-tuned encoder (``mae_image_classification`` with
``model.lambda_transform``) and the ``machine_sounds_classification`` task that feeds it."""

import logging

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from eat_plugin.criterions.classification import EATClassificationCriterion
from eat_plugin.models.mae_image_classification import MaeImageClassificationModel
from helpers import load_script
from helpers.tiny import NUM_CLASSES, TARGET_LENGTH, finetune_config, save_pretrained

SEMANTIC = {"num_machine_ids": 7, "lambda_machine_id": 1.0, "lambda_transform": 0.5}
SINGLE_LABEL = {"esc50_eval": True, "audio_mae": True, "specaug": False}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("transform_head")
    heads = save_pretrained(root / "machine_sounds.pt", seed=3, **SEMANTIC)
    save_pretrained(root / "plain.pt", seed=4)
    return root, heads


def classifier(path, **overrides):
    torch.manual_seed(0)
    return MaeImageClassificationModel(finetune_config(path, **{**SINGLE_LABEL, **overrides}))


def clips(n=3, seed=0):
    torch.manual_seed(seed)
    return torch.randn(n, 1, TARGET_LENGTH, 128), torch.tensor([0, 3, 4])[:n], torch.tensor([1, 0, 5])[:n]


def test_the_head_starts_from_the_pretraining_checkpoints_transformation_head_else_fresh(checkpoints, caplog):
    root, pretrained = checkpoints
    caplog.set_level(logging.INFO, logger="eat_plugin.models.mae_image_classification")
    model = classifier(root / "machine_sounds.pt", lambda_transform=0.5)
    assert "transformation head: from the pre-training checkpoint's" in caplog.text
    assert model.semantic_heads.machine_id is None  # the classifier is the machine-id head in fine-tuning
    ours, theirs = model.semantic_heads.transform.state_dict(), pretrained.semantic_heads.transform.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    caplog.clear()
    fresh = classifier(root / "plain.pt", lambda_transform=0.5)
    assert "transformation head: fresh" in caplog.text
    assert not torch.equal(fresh.semantic_heads.transform[0].weight, theirs["0.weight"])
    # without a lambda there is no head: the official fine-tuned key set
    plain = classifier(root / "machine_sounds.pt")
    assert plain.semantic_heads is None and not any(k.startswith("semantic_heads") for k in plain.state_dict())
    assert {k for k in model.state_dict() if k.startswith("semantic_heads.")} == {
        f"semantic_heads.transform.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}


@pytest.mark.parametrize("per_patch", [False, True])
def test_the_term_is_lambda_times_the_clips_cross_entropy_on_its_patch_tokens(checkpoints, per_patch):
    root, _ = checkpoints
    model = classifier(root / "machine_sounds.pt", lambda_transform=0.5, semantic_head_dropout=0.0,
                       transform_head_per_patch=per_patch, prediction_mode="CLS_TOKEN").train()
    imgs, labels, transforms = clips()
    out = model(imgs, label=labels, transformation_id=transforms)
    with torch.no_grad():  # by hand: the encoder's patch tokens (CLS dropped) -> the head -> -log softmax
        patches = model.model.extract_features(imgs, mask=False)["x"]  # (B, N, D)
        head = model.semantic_heads.transform
        if per_patch:
            log_p = F.log_softmax(head(patches), -1)  # (B, N, 6)
            nll = -log_p.gather(-1, transforms.view(-1, 1, 1).expand(-1, patches.size(1), 1)).squeeze(-1)  # (B, N)
            expected, predictions = 0.5 * nll.mean(1), log_p.argmax(-1) == transforms.unsqueeze(1)
        else:
            log_p = F.log_softmax(head(patches.mean(1)), -1)  # (B, 6)
            nll = -log_p[torch.arange(3), transforms]
            expected, predictions = 0.5 * nll, log_p.argmax(-1) == transforms
        classifier_ce = -F.log_softmax(model.head(model.fc_norm(
            model.model.extract_features(imgs, mask=False, remove_extra_tokens=False)["x"][:, 0])), -1)[
            torch.arange(3), labels]
    torch.testing.assert_close(out["losses"]["transform"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["losses"]["regression"], classifier_ce, rtol=1e-5, atol=1e-6)  # unchanged
    assert float(out["transform_ce"]) == pytest.approx(float(nll.mean()), rel=1e-5)
    assert int(out["_transform_correct"]) == int(predictions.sum())
    assert out["_transform_count"] == predictions.numel()
    # the head learns through the term, the encoder through both
    sum(loss.sum() for loss in out["losses"].values()).backward()
    assert head[0].weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0


def test_label_smoothing_focal_loss_and_learning_rate_scale_of_the_head(checkpoints):
    root, _ = checkpoints
    imgs, labels, transforms = clips()
    base = dict(lambda_transform=1.0, semantic_head_dropout=0.0)
    plain = classifier(root / "machine_sounds.pt", **base).train()(imgs, label=labels, transformation_id=transforms)
    smooth = classifier(root / "machine_sounds.pt", semantic_label_smoothing=0.2, **base).train()(
        imgs, label=labels, transformation_id=transforms)
    focal = classifier(root / "machine_sounds.pt", semantic_focal_gamma=2.0, **base).train()(
        imgs, label=labels, transformation_id=transforms)
    # same logits in all three (same weights, no dropout): smoothing adds (eps / K) sum_c -log p_c, focal
    # multiplies each clip's CE by (1 - p_t)^2 < 1; the logged CE is the plain one in every case
    assert float(smooth["transform_ce"]) == pytest.approx(float(plain["transform_ce"]), rel=1e-6)
    assert not torch.allclose(smooth["losses"]["transform"], plain["losses"]["transform"])
    assert bool((focal["losses"]["transform"] < plain["losses"]["transform"]).all())
    p_t = torch.exp(-plain["losses"]["transform"])
    torch.testing.assert_close(focal["losses"]["transform"], (1 - p_t) ** 2 * plain["losses"]["transform"],
                               rtol=1e-4, atol=1e-6)
    scaled = classifier(root / "machine_sounds.pt", semantic_lr_scale=0.1, **base)
    for name, param in scaled.semantic_heads.named_parameters():
        overrides = param.optim_overrides["optimizer"]
        assert overrides["lr_scale"] == 0.1, name
        assert overrides.get("weight_decay_scale", 1) == (0 if name.endswith("bias") else 1), name


def test_refused_combinations_and_missing_labels_are_clear_errors(checkpoints):
    root, _ = checkpoints
    with pytest.raises(ValueError, match="model.lambda_transform > 0 with mixup"):
        classifier(root / "plain.pt", lambda_transform=0.5, mixup=0.8)
    for field, value, message in (("lambda_transform", -1.0, "model.lambda_transform=-1.0"),
                                  ("semantic_head_dropout", 1.0, "model.semantic_head_dropout=1.0"),
                                  ("semantic_label_smoothing", 1.5, "model.semantic_label_smoothing=1.5"),
                                  ("semantic_lr_scale", 0.0, "model.semantic_lr_scale=0.0"),
                                  ("semantic_focal_gamma", -2.0, "model.semantic_focal_gamma=-2.0")):
        with pytest.raises(ValueError, match=message):
            classifier(root / "plain.pt", **{"lambda_transform": 0.5, field: value})
    model = classifier(root / "plain.pt", lambda_transform=0.5).train()
    imgs, labels, _ = clips()
    with pytest.raises(ValueError, match="needs the clips' transformation ids.*machine_sounds_classification"):
        model(imgs, label=labels)
    assert model.eval()(imgs).shape == (3, NUM_CLASSES)  # inference needs no transformation ids


def test_a_fine_tuned_checkpoint_with_the_head_reloads_strictly_through_the_api(checkpoints, tmp_path):
    from eat_plugin.models.stored import network_from_checkpoint

    root, _ = checkpoints
    cfg = finetune_config(root / "machine_sounds.pt", lambda_transform=0.5, **SINGLE_LABEL)
    model = MaeImageClassificationModel(cfg).eval()
    state = {"cfg": {"model": {**OmegaConf.to_container(cfg, enum_to_str=True), "_name": "mae_image_classification"}},
             "model": model.state_dict()}
    network, _ = network_from_checkpoint(state, "ft.pt")  # without the pre-training file: stored config
    imgs, labels, transforms = clips()
    with torch.no_grad():
        torch.testing.assert_close(network.eval()(imgs), model(imgs), rtol=0, atol=0)
        theirs = network(imgs, label=labels, transformation_id=transforms)["losses"]["transform"]
        torch.testing.assert_close(theirs, model(imgs, label=labels, transformation_id=transforms)["losses"]["transform"])


# ----------------------------------------------------------------------------------------------------
# the task


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fans")
    assert load_script("make_demo_data").main(["--layout", "mimii", "--out", str(root / "raw"), "--seconds", "0.7",
                                               "--normal-per-id", "6", "--anomalous-per-id", "2"]) == 0
    assert load_script("prepare_machine_sounds").main(["--root", str(root / "raw"), "--out", str(root / "data"),
                                                       "--val-fraction", "0.25"]) == 0
    return root / "data"


def machine_task(data, **overrides):
    from eat_plugin.tasks.machine_sounds import MachineSoundsClassificationConfig, MachineSoundsClassificationTask

    values = dict(data=str(data), seed=1, target_length=TARGET_LENGTH, audio_mae=True, downsr_16hz=True,
                  min_sample_size=0, **overrides)
    return MachineSoundsClassificationTask(OmegaConf.merge(OmegaConf.structured(MachineSoundsClassificationConfig),
                                                           values))


def test_the_task_gives_machine_ids_as_labels_and_transformation_ids_on_train_and_valid_only(prepared):
    from eat_plugin.data.machine_sounds import read_machine_metadata

    task = machine_task(prepared)
    assert task.num_classes == 7 and not task.multi_label  # ids {0, 2, 4, 6}: class index == id
    seen = set()
    for split in ("train", "valid", "test"):
        task.load_dataset(split)
        dataset = task.datasets[split]
        batch = dataset.collater([dataset[i] for i in range(len(dataset))])
        net_input = batch["net_input"]
        assert set(net_input) == {"imgs", "id", "label", "transformation_id"}
        ids = [row.machine_id for row in read_machine_metadata(prepared, split)]
        assert net_input["label"].shape == (len(dataset), 7)
        assert net_input["label"].argmax(-1).tolist() == ids and net_input["label"].sum(-1).eq(1).all()
        drawn = net_input["transformation_id"].tolist()
        assert drawn == [dataset.transformation_id(i) for i in range(len(dataset))]
        if split == "test":
            assert set(drawn) == {0}  # test clips are scored as they are
        else:
            seen |= set(drawn)
    assert len(seen) >= 4 and seen <= set(range(6))  # 16 clips, six transformations drawn uniformly
    with pytest.raises(ValueError, match="one label per clip"):
        machine_task(prepared, label_type="multi")


def test_criterion_sums_both_terms_per_clip_and_logs_the_heads_accuracy(prepared, checkpoints):
    from fairseq import metrics

    root, _ = checkpoints
    task = machine_task(prepared)
    task.load_dataset("train")
    dataset = task.datasets["train"]
    sample = dataset.collater([dataset[i] for i in range(4)])
    model = MaeImageClassificationModel(finetune_config(root / "machine_sounds.pt", num_classes=7, lambda_transform=0.5,
                                                        semantic_head_dropout=0.0, **SINGLE_LABEL)).train()
    criterion = EATClassificationCriterion(task)
    torch.manual_seed(0)
    loss, sample_size, log = criterion(model, sample)
    assert sample_size == 4
    assert log["loss_transform"] > 0 and log["loss_regression"] > 0
    assert float(loss.detach()) == pytest.approx(log["loss_regression"] + log["loss_transform"], rel=1e-5)
    with metrics.aggregate() as agg:
        EATClassificationCriterion.reduce_metrics([log])
    values = agg.get_smoothed_values()
    assert values["transform_accuracy"] == pytest.approx(100.0 * log["_transform_correct"] / 4, abs=0.01)
    assert values["loss_transform"] == pytest.approx(log["loss_transform"] / 4, abs=1e-3)


@pytest.mark.parametrize("name", ["machine_sounds", "machine_sounds_tiny"])
def test_fine_tuning_recipes_compose_into_the_task_and_a_valid_head_config(name):
    from eat_plugin.models.mae_image_classification import MaeImageClassificationConfig, check_loss_options
    from eat_plugin.tasks.machine_sounds import MachineSoundsClassificationConfig
    from helpers.runs import compose_recipe

    cfg = compose_recipe("finetuning", name, ["task.data=/data", "checkpoint.save_dir=/run", "common.user_dir=/x",
                                              "model.model_path=m.pt", "model.transform_head_per_patch=true"])
    assert cfg.task._name == "machine_sounds_classification" and cfg.task.transforms and cfg.task.label_type == "single"
    OmegaConf.merge(OmegaConf.structured(MachineSoundsClassificationConfig), cfg.task)  # every task key is declared
    model = OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig),
                            {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ("_name", "data")})
    check_loss_options(model)  # in range, and no mixup with the head
    assert model.lambda_transform > 0 and model.transform_head_per_patch  # every head field is a recipe key
    assert model.target_length == cfg.task.target_length
    assert cfg.checkpoint.best_checkpoint_metric == "accuracy" and cfg.checkpoint.maximize_best_checkpoint_metric
