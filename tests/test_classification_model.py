"""Fine-tuning model: losses vs formulas, mixup, SpecAugment, layer decay, checkpoint loading and reloading."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from eat_plugin.losses import binary_cross_entropy, cross_entropy, soft_target_cross_entropy
from eat_plugin.models.mae_image_classification import (
    MaeImageClassificationConfig,
    MaeImageClassificationModel,
    PredictionMode,
    layer_scales,
)
from eat_plugin.modules.batch_augment import BatchMixup, spec_augment
from eat_plugin.modules.block import DropPath
from helpers import finetune_config, save_pretrained


@pytest.fixture
def pretrained(tmp_path):
    path = tmp_path / "pretrain.pt"
    return path, save_pretrained(path)


# ----------------------------------------------------------------------------------------- losses


def test_loss_formulas_and_shapes():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 5), torch.tensor([0, 3, 1, 1])
    one_hot = F.one_hot(labels, 5).float()
    log_p = torch.log_softmax(logits, -1)
    torch.testing.assert_close(cross_entropy(logits, labels), -log_p[torch.arange(4), labels])
    smoothed = 0.9 * one_hot + 0.1 / 5
    torch.testing.assert_close(cross_entropy(logits, one_hot, 0.1), -(smoothed * log_p).sum(-1))
    soft = torch.softmax(torch.randn(4, 5), -1)
    assert soft_target_cross_entropy(logits, soft).shape == (4, 5)
    torch.testing.assert_close(soft_target_cross_entropy(logits, soft), -soft * log_p)
    multi = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]])
    sig = torch.sigmoid(logits)
    torch.testing.assert_close(binary_cross_entropy(logits, multi), -(multi * sig.log() + (1 - multi) * (1 - sig).log()))


def test_model_loss_paths(pretrained):
    path, _ = pretrained
    imgs = torch.randn(4, 1, 128, 128)
    one_hot = F.one_hot(torch.tensor([0, 3, 1, 1]), 5).float()
    single = MaeImageClassificationModel(finetune_config(path, esc50_eval=True, audio_mae=True, label_smoothing=0.1))
    out = single.train()(imgs, one_hot)
    assert out["losses"]["regression"].shape == (4,) and out["sample_size"] == 4
    out = single.eval()(imgs, one_hot)
    logits = single(imgs)
    torch.testing.assert_close(out["losses"]["regression"], F.cross_entropy(logits, one_hot.argmax(-1), reduction="none"))
    assert int(out["correct"]) == int((logits.argmax(-1) == one_hot.argmax(-1)).sum())

    multi_hot = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]])
    audioset = MaeImageClassificationModel(finetune_config(path, audio_mae=True)).eval()
    out = audioset(imgs, multi_hot)
    assert out["losses"]["main"].shape == (4, 5) and float(out["sample_size"]) == 7.0  # positive labels
    torch.testing.assert_close(out["_predictions"], torch.sigmoid(audioset(imgs)))
    assert torch.equal(out["_targets"], multi_hot)

    mixed = MaeImageClassificationModel(finetune_config(path, esc50_eval=True, audio_mae=True, mixup=0.8)).train()
    assert mixed(imgs, one_hot)["losses"]["regression"].shape == (4, 5)  # soft-target CE
    spc = MaeImageClassificationModel(finetune_config(path, spcv2_eval=True, audio_mae=True, mixup=0.8))
    assert spc.train()(imgs, one_hot)["losses"]["regression"].shape == (4, 5)  # BCE under mixup
    assert spc.eval()(imgs, one_hot)["losses"]["regression"].shape == (4, 5)


def test_class_index_labels_work(pretrained):
    path, _ = pretrained
    model = MaeImageClassificationModel(finetune_config(path, esc50_eval=True, audio_mae=True, mixup=0.5)).train()
    out = model(torch.randn(3, 1, 128, 128), torch.tensor([1, 0, 4]))  # odd batch, indices
    assert out["losses"]["regression"].shape == (3, 5)


# ---------------------------------------------------------------------------------- augmentation


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda():
    torch.manual_seed(1)
    mixup = BatchMixup(0.8, prob=1.0)
    x = torch.randn(5, 1, 16, 8)
    y = F.one_hot(torch.tensor([0, 1, 2, 3, 4]), 6).float()
    y[0, 5] = 1.0  # a multi-hot row
    mixed_x, mixed_y = mixup(x, y)
    # recover λ from the inputs of row 0 (mixed with row 4), then check every row and label
    lam = float(((mixed_x[0] - x[4]) / (x[0] - x[4])).median())
    assert 0 < lam < 1
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed_y, lam * y + (1 - lam) * y.flip(0), atol=1e-5, rtol=1e-4)
    assert mixed_y.sum().item() == pytest.approx(y.sum().item())  # label mass preserved
    torch.testing.assert_close(mixed_x[2], x[2])  # odd batch: the middle row mixes with itself


def test_mixup_probability_zero_and_cutmix_box():
    x, y = torch.randn(4, 1, 16, 8), torch.eye(4)
    assert BatchMixup(0.8, prob=0.0)(x, y)[0] is x
    torch.manual_seed(0)
    cx, cy = BatchMixup(0.0, cutmix_alpha=1.0)(x, y)
    pasted = (cx != x).any(dim=1)  # (B, T, F): where the flipped batch was pasted
    lam = cy[0, 0].item()
    area = pasted[0].float().mean().item()
    assert lam == pytest.approx(1 - area, abs=1e-6) or area == 0
    with pytest.raises(ValueError, match="only 'batch'"):
        BatchMixup(0.8, mode="elem")


def test_spec_augment_masks_lie_within_the_widths():
    torch.manual_seed(0)
    freqm, timem = 25.6, 40.0
    for _ in range(20):
        out = spec_augment(torch.ones(6, 1, 128, 128), freqm, timem)
        for spec in out[:, 0]:  # (T, F)
            masked_bins = (spec == 0).all(dim=0).nonzero().flatten()
            masked_frames = (spec == 0).all(dim=1).nonzero().flatten()
            for idx, width in ((masked_bins, freqm), (masked_frames, timem)):
                if len(idx):
                    assert idx.max() - idx.min() + 1 == len(idx) < width  # one contiguous band
            zeros = (spec == 0)
            assert torch.equal(zeros, zeros[:, masked_bins].any() * 0 + (zeros.all(0)[None, :] | zeros.all(1)[:, None]))


def test_spec_augment_equals_torchaudios_iid_masks_given_the_same_draws():
    import torchaudio

    fbank = torch.randn(5, 1, 64, 128)
    torch.manual_seed(3)
    spec = torchaudio.transforms.FrequencyMasking(30, iid_masks=True)(fbank.transpose(-2, -1))
    expected = torchaudio.transforms.TimeMasking(20, iid_masks=True)(spec).transpose(-2, -1)
    torch.manual_seed(3)  # torchaudio draws (B, 1) widths then (B, 1) starts, per axis
    draws = torch.cat([torch.rand(5, 1), torch.rand(5, 1), torch.rand(5, 1), torch.rand(5, 1)], dim=1)  # (B, 4)
    assert torch.equal(spec_augment(fbank, 30, 20, draws), expected)
    # and by hand: width 0.5 * 30 = 15 bins from floor(0.25 * (128 - 15)) = 28; time band [0, 10)
    out = spec_augment(torch.ones(1, 1, 64, 128), 30, 20, torch.tensor([[0.5, 0.25, 0.5, 0.0]]))[0, 0]
    assert (out[:, 28:43] == 0).all() and (out[:10] == 0).all()
    assert out[10:, :28].eq(1).all() and out[10:, 43:].eq(1).all()


def test_drop_path_with_given_draws_keeps_a_sample_where_u_is_below_the_keep_rate():
    drop = DropPath(0.25).train()
    x = torch.ones(4, 3, 2)
    out = drop(x, torch.tensor([0.0, 0.74, 0.75, 0.99]))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([4 / 3, 4 / 3, 0.0, 0.0]))
    assert torch.equal(drop.eval()(x, torch.ones(4)), x)  # identity at evaluation


def test_adjacent_mixup_pairs_rows_two_by_two():
    x = torch.arange(5.0).view(5, 1, 1, 1)
    mixup = BatchMixup(0.8, pairs="adjacent")
    assert mixup.partners(x).flatten().tolist() == [1, 0, 3, 2, 4]  # the odd last row is its own partner
    assert BatchMixup(0.8).partners(x).flatten().tolist() == [4, 3, 2, 1, 0]  # official flip
    torch.manual_seed(0)
    mixed, labels = mixup(x, torch.eye(5))
    lam = labels[0, 0].item()
    torch.testing.assert_close(mixed.flatten(), lam * x.flatten() + (1 - lam) * torch.tensor([1.0, 0, 3, 2, 4]))
    with pytest.raises(ValueError, match="model.mixup_pairs='ring'"):
        BatchMixup(0.8, pairs="ring")


def test_a_clips_augmentation_does_not_depend_on_its_batch(pretrained):
    """SpecAugment and stochastic depth keyed by clip: clip 7's loss is the same alone and beside clip 3."""
    path, _ = pretrained
    model = MaeImageClassificationModel(finetune_config(path, specaug=True, mask_ratio=0.3, drop_path_rate=0.5)).train()
    imgs = torch.randn(2, 1, 128, 128)

    def logits(batch_imgs, ids, seed=11):
        torch.manual_seed(seed)  # fairseq reseeds the global RNG per update: the step key
        return model(batch_imgs, id=ids)

    together, alone = logits(imgs, [3, 7]), logits(imgs[1:], [7])
    torch.testing.assert_close(together[1:], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(imgs[1:], [7], seed=12), alone)  # another update draws again
    assert not torch.allclose(logits(imgs[1:], [8]), alone)  # another clip draws other masks


# ----------------------------------------------------------------------------------- layer decay


def test_layer_decay_group_scales(pretrained):
    path, _ = pretrained
    model = MaeImageClassificationModel(finetune_config(path, layer_decay=0.5))
    assert layer_scales(2, 0.5) == [0.25, 0.5]
    for name, param in model.named_parameters():
        opt = getattr(param, "optim_overrides", {}).get("optimizer", {})
        if name.startswith("model.blocks.0."):
            assert opt["lr_scale"] == 0.25, name
        elif name.startswith("model.blocks.1."):
            assert opt["lr_scale"] == 0.5, name
        else:
            assert "lr_scale" not in opt, name
        no_decay = param.ndim == 1 or name.endswith(".bias") or name.startswith("fc_norm")
        assert (opt.get("weight_decay_scale") == 0) == no_decay, name
    assert not model.model.modality_encoders["IMAGE"].fixed_positional_encoder.positions.requires_grad


def test_layer_decay_lr_in_fairseqs_composite_optimizer(pretrained):
    from fairseq.optim.composite import FairseqCompositeOptimizer

    path, _ = pretrained
    model = MaeImageClassificationModel(finetune_config(path, layer_decay=0.5))
    cfg = OmegaConf.create({"_name": "composite", "dynamic_groups": True, "groups": {"default": {
        "lr_float": 0.01, "optimizer": {"_name": "adam", "weight_decay": 0.05, "lr": [0.01], "tpu": False},
        "lr_scheduler": {"_name": "fixed", "lr": [0.01], "force_anneal": None, "lr_shrink": 0.1, "warmup_updates": 0}}}})
    optimizer = FairseqCompositeOptimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    lrs = {id(p): group["lr"] for opt in optimizer.optimizers.values() for group in opt.optimizer.param_groups
           for p in group["params"]}
    assert lrs[id(model.model.blocks[0].attn.qkv.weight)] == pytest.approx(0.01 * 0.25)
    assert lrs[id(model.model.blocks[1].attn.qkv.bias)] == pytest.approx(0.01 * 0.5)
    assert lrs[id(model.head.weight)] == pytest.approx(0.01)
    assert lrs[id(model.model.modality_encoders["IMAGE"].local_encoder.proj.weight)] == pytest.approx(0.01)
    # NB fairseq's composite optimizer applies weight_decay_scale only when the group config has an
    # "optimizer_config" key, which it never has: like the official runs, every group keeps weight decay.


# ------------------------------------------------------------------------------ checkpoint loading


def test_loads_pretrained_weights_and_reloads_without_the_pretraining_file(pretrained, tmp_path):
    path, pre = pretrained
    cfg = finetune_config(path, prediction_mode="MEAN_POOLING")
    model = MaeImageClassificationModel(cfg).eval()
    pre_state = pre.state_dict()
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, pre_state[key]), key  # student weights, not the teacher's
    assert cfg.pretrained_model_args is not None and cfg.pretrained_model_args.model._name == "data2vec_multi"
    assert not any(k.startswith("model.modality_encoders.IMAGE.decoder") or "_ema" in k for k in model.state_dict())

    imgs = torch.randn(2, 1, 128, 128)
    expected = model(imgs)
    saved_cfg = OmegaConf.to_container(cfg, enum_to_str=True)  # as fairseq saves it
    torch.save({"cfg": saved_cfg, "model": model.state_dict()}, tmp_path / "finetuned.pt")
    path.unlink()  # the pre-training file is gone
    state = torch.load(tmp_path / "finetuned.pt", weights_only=True)
    reloaded = MaeImageClassificationModel(OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig),
                                                           state["cfg"]))
    reloaded.load_state_dict(state["model"], strict=True)
    torch.testing.assert_close(reloaded.eval()(imgs), expected)


def test_no_pretrained_weights_and_linear_probe(pretrained):
    path, pre = pretrained
    scratch = MaeImageClassificationModel(finetune_config(path, no_pretrained_weights=True))
    weight = "blocks.0.attn.qkv.weight"
    assert scratch.model.state_dict()[weight].shape == pre.state_dict()[weight].shape
    assert not torch.equal(scratch.model.state_dict()[weight], pre.state_dict()[weight])
    probe = MaeImageClassificationModel(finetune_config(path, linear_classifier=True, esc50_eval=True, audio_mae=True))
    out = probe.train()(torch.randn(2, 1, 128, 128), torch.tensor([0, 1]))
    out["losses"]["regression"].sum().backward()
    assert all(p.grad is None for p in probe.model.parameters())
    assert probe.head.weight.grad is not None


@pytest.mark.parametrize("mode", ["CLS_TOKEN", "MEAN_POOLING", "LIN_SOFTMAX", "PredictionMode.MEAN_POOLING"])
def test_prediction_modes(pretrained, mode):
    path, _ = pretrained
    model = MaeImageClassificationModel(finetune_config(path, prediction_mode=mode.split(".")[-1])).eval()
    imgs = torch.randn(2, 1, 128, 128)
    features = model.model.extract_features(imgs, remove_extra_tokens=False)["x"]  # (2, 65, 32)
    pooled = {"CLS_TOKEN": features[:, 0], "MEAN_POOLING": features[:, 1:].mean(1)}.get(mode.split(".")[-1])
    if pooled is not None:
        torch.testing.assert_close(model(imgs), model.head(model.fc_norm(pooled)))
    assert model(imgs).shape == (2, 5) and torch.isfinite(model(imgs)).all()
    assert model.prediction_mode == PredictionMode[mode.split(".")[-1]]


def test_missing_model_path_is_a_clear_error():
    cfg = OmegaConf.merge(OmegaConf.structured(MaeImageClassificationConfig), {"num_classes": 2, "data": "x"})
    with pytest.raises(ValueError, match="model.model_path must name the pre-trained checkpoint"):
        MaeImageClassificationModel(cfg)
    assert math.isclose(layer_scales(12, 0.65)[0], 0.65**12)
