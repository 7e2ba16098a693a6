"""Pre-training model pieces against closed forms, hand-written references and invariants (tiny configs)."""

import math

import pytest
import torch
import torch.nn.functional as F

from eat_plugin.criterions.pretraining import TrainingCollapseError, check_variances
from eat_plugin.losses import dino_loss, normalized_pixels, regression_loss, teacher_targets
from eat_plugin.models.data2vec_multi import Data2VecMultiModel
from eat_plugin.models.pretraining_config import Data2VecMultiConfig, iter_field_paths
from eat_plugin.modules.attention import fused_attention
from eat_plugin.modules.block import PostLNBlock
from eat_plugin.modules.ema import annealed_decay
from eat_plugin.modules.encoder import PatchEmbed, sincos_pos_table
from eat_plugin.masking import compute_block_mask_2d, make_mask_info, num_visible_patches
from helpers import PLUGIN_FIELDS, official_fields
from helpers import tiny_pretraining_config as tiny_config
from helpers import tiny_pretraining_model as tiny_model


# ---------------------------------------------------------------------------------------- masking


def test_inverse_block_mask_keeps_exactly_102_of_512_patches():
    torch.manual_seed(0)
    mask = compute_block_mask_2d((48, 512), 0.8, 5, 0.07, inverse_mask=True, img_shape=(64, 8))
    assert mask.shape == (48, 512)
    assert torch.all((1 - mask).sum(1) == 102) and num_visible_patches(512, 0.8, True) == 102


def test_single_block_is_a_clamped_5x5_square():
    # mask_prob 0.4 on an 8 x 8 grid draws int(64 * 0.4 / 25) = 1 centre
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        mask = compute_block_mask_2d((1, 64), 0.4, 5, require_same_masks=False, img_shape=(8, 8),
                                     generator=generator).view(8, 8)
        rows, cols = mask.nonzero(as_tuple=True)
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        assert mask.sum() == (r1 - r0 + 1) * (c1 - c0 + 1)  # one filled rectangle
        assert r1 - r0 + 1 == 5 or r0 == 0 or r1 == 7  # 5 wide unless clamped at an edge
        assert c1 - c0 + 1 == 5 or c0 == 0 or c1 == 7


def test_masks_are_deterministic_given_a_seed():
    def draw(seed):
        return compute_block_mask_2d((4, 64), 0.8, 5, 0.07, True, img_shape=(8, 8),
                                     generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(5), draw(5)) and not torch.equal(draw(5), draw(6))


def test_mask_info_orders_positions_and_checks_counts():
    mask = torch.tensor([[1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 0, 1]])
    info = make_mask_info(mask, num_visible=2)
    assert info.ids_keep.tolist() == [[1, 3], [0, 4]]
    assert info.ids_masked.tolist() == [[0, 2, 4, 5], [1, 2, 3, 5]]
    with pytest.raises(ValueError, match="keep exactly 3 of 6 patches"):
        make_mask_info(mask, num_visible=3)


# ------------------------------------------------------------------------------- positions, block


def test_sincos_table_closed_form():
    dim, grid_h, grid_w = 32, 6, 8
    table = sincos_pos_table(dim, grid_h, grid_w).double()  # (48, 32)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    for t in range(grid_h):
        for f in range(grid_w):
            expected = torch.cat([torch.sin(f * omega), torch.cos(f * omega), torch.sin(t * omega), torch.cos(t * omega)])
            torch.testing.assert_close(table[t * grid_w + f], expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("in_chans, height, width", [(1, 64, 128), (2, 37, 50)])
def test_patch_embed_is_the_strided_convolution(in_chans, height, width):
    """Tokens and gradients equal torch's conv2d with the module's own (D, C, 16, 16) kernel, time-major;
    rows / columns past the last whole patch (37 x 50: 2 x 3 patches) are dropped, as by the conv."""
    torch.manual_seed(0)
    embed = PatchEmbed(24, in_chans=in_chans)
    x = torch.randn(3, in_chans, height, width)
    tokens = embed(x)  # (3, N, 24)
    expected = F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=16).flatten(2).transpose(1, 2)
    assert tokens.shape == (3, (height // 16) * (width // 16), 24)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    # token n = time patch n // cols, frequency patch n % cols: one hand-computed patch
    t, f, cols = 1, 2, width // 16
    patch = x[1, :, t * 16:(t + 1) * 16, f * 16:(f + 1) * 16]  # (C, 16, 16)
    by_hand = (patch * embed.proj.weight).sum(dim=(1, 2, 3)) + embed.proj.bias  # (24,)
    torch.testing.assert_close(tokens[1, t * cols + f], by_hand, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(tokens)
    grads = torch.autograd.grad((tokens * weight).sum(), [embed.proj.weight, embed.proj.bias])
    expected_grads = torch.autograd.grad((expected * weight).sum(), [embed.proj.weight, embed.proj.bias])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def reference_block(block: PostLNBlock, x: torch.Tensor):
    """The post-LN block written out by hand: attention, residual, LN, MLP, residual, LN."""
    B, N, D = x.shape
    H = block.attn.num_heads
    W, b = block.attn.qkv.weight, block.attn.qkv.bias
    q, k, v = [(x @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D]).view(B, N, H, D // H).transpose(1, 2) for i in range(3)]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
    attn = (weights @ v).transpose(1, 2).reshape(B, N, D) @ block.attn.proj.weight.T + block.attn.proj.bias

    def layer_norm(y, ln):
        mean, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
        return (y - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    h = layer_norm(x + attn, block.norm1)
    hidden = F.gelu(h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    ffn = hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return layer_norm(h + ffn, block.norm2), ffn


@pytest.mark.parametrize("fused", [True, False])
def test_post_ln_block_matches_hand_written_reference(fused):
    torch.manual_seed(0)
    block = PostLNBlock(32, 4).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 7, 32)
    with fused_attention(fused):
        out, ffn = block(x)
    expected_out, expected_ffn = reference_block(block, x)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ffn, expected_ffn, atol=1e-5, rtol=1e-5)


def test_fused_and_eager_attention_agree():
    model = tiny_model().eval()
    source = torch.randn(2, 1, 128, 128)
    with fused_attention(True):  # explicitly: EAT_FUSED_ATTN=0 would otherwise compare eager with eager
        fused = model.extract_features(source, remove_extra_tokens=False)["x"]
    with fused_attention(False):
        eager = model.extract_features(source, remove_extra_tokens=False)["x"]
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------- targets, losses


def test_targets_against_direct_formula():
    torch.manual_seed(0)
    layers = [torch.randn(2, 10, 6) * (i + 1) + i for i in range(3)]

    def instance_norm(y):  # each channel over the patches of each clip, biased variance
        return (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5)

    average = (instance_norm(layers[1]) + instance_norm(layers[2])) / 2
    expected = (average - average.mean(-1, keepdim=True)) / torch.sqrt(average.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(teacher_targets(layers, top_k=2), expected, atol=1e-5, rtol=1e-5)


def test_regression_loss_formula_and_shape():
    pred, target = torch.randn(5, 16), torch.randn(5, 16)
    torch.testing.assert_close(regression_loss(pred, target), (pred - target) ** 2 / 4.0)  # 1/sqrt(16)
    diff = (pred - target).abs()
    smooth = torch.where(diff < 0.5, 0.5 * diff**2 / 0.5, diff - 0.25)
    torch.testing.assert_close(regression_loss(pred, target, loss_beta=0.5, loss_scale=2.0), 2 * smooth)


def test_normalized_pixels_and_dino_by_hand():
    patch = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    expected = (patch - 3.0) / math.sqrt(patch.var().item() + 1e-6)
    torch.testing.assert_close(normalized_pixels(patch), expected)
    student, teacher, center = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2)
    t = torch.softmax(torch.tensor([0.0, 1.0]) / 0.5, 0)
    expected = -(t * torch.log_softmax(torch.tensor([1.0, 0.0]) / 0.25, 0)).sum()
    torch.testing.assert_close(dino_loss(student, teacher, center, 0.25, 0.5), expected)


def test_loss_shapes_and_scaling():
    model = tiny_model(recon_loss=1.0).train()
    out = model(source=torch.randn(3, 1, 128, 128))
    rows, masked = 3 * 2, 64 - num_visible_patches(64, 0.8, True)  # 6 rows x 52 masked patches
    assert out["sample_size"] == rows * masked == 312
    assert out["losses"]["IMAGE_regression"].shape == (312, 32)
    assert out["losses"]["cls"].shape == (rows, 32)
    assert out["losses"]["recon"].shape == (312, 256)
    assert out["masked_pct"] == pytest.approx(1 - 12 / 64)
    assert out["ema_decay"] == pytest.approx(900.0)
    with pytest.raises(ValueError, match="precomputed_mask must be"):
        model(source=torch.randn(3, 1, 128, 128), precomputed_mask=torch.zeros(3, 64))


def test_cls_loss_is_scaled_by_weight_and_sample_size():
    no_noise = {"modalities": {"image": {"mask_noise_std": 0.0}}}
    model = tiny_model(**no_noise).eval()  # eval: no dropout anywhere, deterministic
    weighted = tiny_model(cls_loss=0.5, **no_noise).eval()
    weighted.load_state_dict(model.state_dict())
    source = torch.randn(2, 1, 128, 128)
    mask = compute_block_mask_2d((4, 64), 0.8, 5, 0.07, True, img_shape=(8, 8))
    full, half = model(source=source, precomputed_mask=mask), weighted(source=source, precomputed_mask=mask)
    torch.testing.assert_close(half["losses"]["cls"], 0.5 * full["losses"]["cls"])
    # by hand: student CLS of each clone row vs the mean target of its clip, MSE / sqrt(D), x sample_size
    targets = model._teacher_targets(source)  # (2, 64, 32)
    info = make_mask_info(mask, 12)
    student = model._encode_visible(model.modality_encoders["IMAGE"].embed(source), info, torch.tensor([0, 0, 1, 1]))
    cls_target = targets.mean(1).repeat_interleave(2, 0)  # (4, 32)
    expected = (student[:, 0] - cls_target) ** 2 / math.sqrt(32) * full["sample_size"]
    torch.testing.assert_close(full["losses"]["cls"], expected, atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------------------- EMA


def test_ema_schedule_endpoints():
    assert annealed_decay(0, 0.9998, 0.99999, 100000) == pytest.approx(0.9998)
    assert annealed_decay(50000, 0.9998, 0.99999, 100000) == pytest.approx((0.9998 + 0.99999) / 2)
    assert annealed_decay(100000, 0.9998, 0.99999, 100000) == 0.99999
    assert annealed_decay(250000, 0.9998, 0.99999, 100000) == 0.99999


def test_ema_closed_form_update_and_frozen_copy():
    model = tiny_model().train()
    teacher_before = {k: v.clone() for k, v in model.teacher.fp32_params.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # trainable params move; the frozen table does not
        model.modality_encoders["IMAGE"].fixed_positional_encoder.positions.mul_(2)
    model.set_num_updates(1)
    decay = annealed_decay(1, 0.9, 0.99, 10)
    assert model.teacher.decay == pytest.approx(decay)
    student = dict(model.named_parameters())
    for name, master in model.teacher.fp32_params.items():
        if student[name].requires_grad:
            expected = decay * teacher_before[name] + (1 - decay) * student[name]
        else:
            expected = student[name]  # frozen: copied
        torch.testing.assert_close(master, expected.detach(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(dict(model.teacher.model.named_parameters())[name], master)


def test_no_ema_step_on_resume_or_in_eval():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.teacher.fp32_params.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.set_num_updates(7)  # first call with n > 1 on a fresh model: a resume, no step
    assert all(torch.equal(before[k], v) for k, v in model.teacher.fp32_params.items())
    model.eval()
    model.set_num_updates(8)
    assert all(torch.equal(before[k], v) for k, v in model.teacher.fp32_params.items())


def test_a_reset_update_counter_restarts_the_ema_schedule():
    """checkpoint.reset_optimizer: fairseq sets the checkpoint's count at load, then trains from 0."""
    model = tiny_model().train()
    model.set_num_updates(400000)  # at load: a released checkpoint's count (no step)
    model.set_num_updates(0)  # the reset trainer's first train step
    before = {k: v.clone() for k, v in model.teacher.fp32_params.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.set_num_updates(1)
    assert model.num_updates == 1 and model.teacher.decay == pytest.approx(annealed_decay(1, 0.9, 0.99, 10))
    name = "blocks.0.mlp.fc1.weight"
    expected = model.teacher.decay * before[name] + (1 - model.teacher.decay) * dict(model.named_parameters())[name]
    torch.testing.assert_close(model.teacher.fp32_params[name], expected.detach(), rtol=1e-6, atol=1e-6)


def test_teacher_gets_no_gradient_and_every_student_parameter_does():
    model = tiny_model(recon_loss=1.0).train()
    assert not any(p is t for p in model.parameters() for t in model.teacher.model.parameters())
    out = model(source=torch.randn(2, 1, 128, 128))
    sum(loss.sum() for loss in out["losses"].values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []
    assert all(p.grad is None for p in model.teacher.model.parameters())
    assert not model.modality_encoders["IMAGE"].fixed_positional_encoder.positions.requires_grad


# ----------------------------------------------------------------------------------- state dict


OFFICIAL_KEYS_TINY = (
    ["modality_encoders.IMAGE.extra_tokens", "modality_encoders.IMAGE.local_encoder.proj.weight",
     "modality_encoders.IMAGE.local_encoder.proj.bias", "modality_encoders.IMAGE.fixed_positional_encoder.positions",
     "modality_encoders.IMAGE.context_encoder.norm.weight", "modality_encoders.IMAGE.context_encoder.norm.bias"]
    + [f"modality_encoders.IMAGE.decoder.blocks.{i}.0.{p}" for i in range(2) for p in ("weight", "bias")]
    + ["modality_encoders.IMAGE.decoder.proj.weight", "modality_encoders.IMAGE.decoder.proj.bias"]
    + [f"blocks.{i}.{m}.{p}" for i in range(2)
       for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")]
)


def test_state_dict_has_the_official_keys_and_round_trips(tmp_path):
    model = tiny_model().train()
    state = model.state_dict()
    assert sorted(k for k in state if k != "_ema") == sorted(OFFICIAL_KEYS_TINY)
    assert sorted(state["_ema"]) == sorted(k for k in OFFICIAL_KEYS_TINY if ".decoder." not in k)
    assert state["modality_encoders.IMAGE.fixed_positional_encoder.positions"].shape == (1, 64 * 8, 32)
    assert state["modality_encoders.IMAGE.decoder.blocks.0.0.weight"].shape == (32, 4, 3, 3)  # groups 8
    model.set_num_updates(1)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = tiny_model()
    torch.manual_seed(123)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    for key, value in model.state_dict().items():
        if key == "_ema":
            assert all(torch.equal(value[k], other.teacher.fp32_params[k]) for k in value)
        else:
            assert torch.equal(value, other.state_dict()[key]), key
    with pytest.raises(RuntimeError, match="_ema"):
        tiny_model().load_state_dict({k: v for k, v in state.items() if k != "_ema"}, strict=True)


def test_remove_pretraining_modules():
    model = tiny_model()
    model.remove_pretraining_modules()
    state = model.state_dict()
    assert "_ema" not in state and not any(".decoder." in k for k in state)
    x = model.extract_features(torch.randn(1, 1, 128, 128))["x"]
    assert x.shape == (1, 64, 32)
    with pytest.raises(RuntimeError, match="no EMA teacher"):
        model(source=torch.randn(1, 1, 128, 128))


# --------------------------------------------------------------------------------------- config


def test_iter_field_paths_walks_exactly_the_official_fields_and_ours():
    """Nested dataclasses as dotted paths: the official table's data2vec_multi fields plus our additions."""
    section = "model:data2vec_multi."
    expected = {key[len(section):] for key in {*official_fields(), *PLUGIN_FIELDS} if key.startswith(section)}
    assert sorted(iter_field_paths(Data2VecMultiConfig)) == sorted(expected)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"modalities": {"image": {"use_alibi_encoder": True}}}, "use_alibi_encoder=True"),
        ({"layer_norm_first": True}, "layer_norm_first=True"),
        ({"ema_encoder_only": True}, "ema_encoder_only=True"),
        ({"modalities": {"image": {"in_chans": 3}}}, "in_chans=3"),
        ({"modalities": {"image": {"mask_dropout": 0.1}}}, "mask_dropout=0.1"),
        ({"modalities": {"image": {"target_length": 100}}}, "target_length=100 is not a positive multiple of 16"),
    ],
)
def test_unsupported_values_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        Data2VecMultiModel(tiny_config(**override))


def test_collapse_check_names_the_floor():
    check_variances({"target_var": 0.5, "pred_var": 0.5}, 0.1, 0.01, 6000)
    with pytest.raises(TrainingCollapseError, match=r"update 6000: target_var=0.05 < model.min_target_var=0.1"):
        check_variances({"target_var": 0.05, "pred_var": 0.5}, 0.1, 0.01, 6000)
    with pytest.raises(TrainingCollapseError, match=r"pred_var=0.001 < model.min_pred_var=0.01"):
        check_variances({"target_var": 0.5, "pred_var": 0.001}, 0.1, 0.01, 6000)


def test_checkpoints_of_another_kind_or_size_give_one_message():
    from eat_plugin.models.state_check import CheckpointMismatchError

    state = tiny_model().state_dict()
    bigger = tiny_model(embed_dim=48, depth=3, average_top_k_layers=3, modalities={"image": {"embed_dim": 48}})
    with pytest.raises(CheckpointMismatchError) as err:
        bigger.load_state_dict(dict(state), strict=True)
    message = str(err.value)
    assert message.count("\n") == 0 and "a pre-training (data2vec_multi) checkpoint of another configuration" in message
    assert "2 transformer blocks in the checkpoint, 3 in the model (depth)" in message
    assert "checkpoint (32,), model (48,)" in message or "checkpoint (1, 512, 32), model (1, 512, 48)" in message
    finetuned = {f"model.{k}": v for k, v in state.items() if k != "_ema"}
    finetuned.update({"head.weight": torch.zeros(5, 32), "head.bias": torch.zeros(5)})
    with pytest.raises(CheckpointMismatchError, match="this is a fine-tuned \\(mae_image_classification\\) checkpoint, "
                                                      "but the model expects a pre-training"):
        tiny_model().load_state_dict(finetuned, strict=True)
    with pytest.raises(CheckpointMismatchError, match="not an EAT checkpoint"):
        tiny_model().load_state_dict({"encoder.weight": torch.zeros(3)}, strict=True)


def test_logged_std_is_the_mean_per_channel_sample_std():
    """``pred_var`` / ``target_var``: mean over channels of sqrt(unbiased variance over rows + 1e-6), here
    against numpy's ddof=1 variance in float64 (rows with a large offset: a one-pass formula would cancel)."""
    import numpy as np

    from eat_plugin.losses import compute_var

    rng = np.random.default_rng(0)
    y = (rng.normal(size=(2, 300, 8)) * rng.uniform(0.1, 3.0, size=8) + 100.0).astype(np.float32)
    expected = np.sqrt(y.reshape(-1, 8).astype(np.float64).var(axis=0, ddof=1) + 1e-6).mean()
    assert float(compute_var(torch.from_numpy(y))) == pytest.approx(expected, rel=1e-5)
