"""The memory / speed paths of training give the same numbers as the plain ones.

* activation checkpointing (``checkpoint_activations``) of the student blocks, the decoder layers and the
  fine-tuning encoder: same losses and gradients with dropout and stochastic depth on (the recomputation
  replays the draws), and it really keeps less for the backward;
* the channels-last CNN decoder equals the official layout's computation written out here (NCHW conv,
  channel LayerNorm through explicit transposes);
* the fp32 EMA teacher shares its parameters with the fp32 masters, and a half-precision teacher does not;
* ``torch_compile`` gives the eager losses and gradients up to float rounding.
"""

import pytest
import torch
import torch.nn.functional as F

from eat_plugin.masking import compute_block_mask_2d
from eat_plugin.models.mae_image_classification import MaeImageClassificationModel
from eat_plugin.modules.decoder import CNNDecoder
from helpers import TARGET_LENGTH, finetune_config, save_pretrained, tiny_pretraining_model

DROPOUTS = {"encoder_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1, "post_mlp_drop": 0.1,
            "end_drop_path_rate": 0.2}


def saved_bytes(fn):
    """Run ``fn()`` and return (its result, bytes of the distinct storages autograd kept for the backward)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, sum(storages.values())


def pretraining_step(checkpoint: bool):
    model = tiny_pretraining_model(seed=3, checkpoint_activations=checkpoint, **DROPOUTS).train()
    model.set_num_updates(1)
    source = torch.randn(2, 1, TARGET_LENGTH, 128, generator=torch.Generator().manual_seed(0))
    masks = compute_block_mask_2d((4, 64), 0.8, 5, 0.07, True, img_shape=(8, 8))
    torch.manual_seed(11)  # dropout, drop path and mask noise from the global RNG
    out, kept = saved_bytes(lambda: model(source=source, precomputed_mask=masks))
    loss = sum(term.sum() for term in out["losses"].values()) / out["sample_size"]
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out["losses"].items()}, grads, kept


def test_pretraining_checkpointing_same_losses_and_gradients():
    plain_losses, plain_grads, plain_kept = pretraining_step(checkpoint=False)
    losses, grads, kept = pretraining_step(checkpoint=True)
    assert set(losses) == set(plain_losses) and set(grads) == set(plain_grads)
    for name in losses:
        torch.testing.assert_close(losses[name], plain_losses[name], rtol=0, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for name, g in grads.items() if "decoder" in name)
    assert kept < 0.6 * plain_kept, (kept, plain_kept)


def test_finetuning_checkpointing_same_loss_and_gradients(tmp_path):
    path = tmp_path / "pretrain.pt"
    save_pretrained(path)
    imgs = torch.randn(3, 1, TARGET_LENGTH, 128, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 4])
    results = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        model = MaeImageClassificationModel(finetune_config(
            path, checkpoint_activations=checkpoint, drop_path_rate=0.2, encoder_dropout=0.1,
            esc50_eval=True, audio_mae=True, prediction_mode="MEAN_POOLING")).train()
        torch.manual_seed(5)
        out, kept = saved_bytes(lambda: model(imgs, label=labels))
        loss = sum(term.sum() for term in out["losses"].values())
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, kept))
    (plain_loss, plain_grads, plain_kept), (loss, grads, kept) = results
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    assert set(grads) == set(plain_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert kept < 0.6 * plain_kept, (kept, plain_kept)


def test_checkpointing_is_off_without_gradients():
    model = tiny_pretraining_model(checkpoint_activations=True).eval()
    source = torch.randn(1, 1, TARGET_LENGTH, 128)
    with torch.no_grad():
        features = model.extract_features(source)["x"]
    reference = tiny_pretraining_model(checkpoint_activations=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(features, reference.extract_features(source)["x"], rtol=0, atol=0)


def official_layout_decoder(decoder: CNNDecoder, x: torch.Tensor) -> torch.Tensor:
    """The official ``Decoder2d`` computation: NCHW copies, LayerNorm over channels via transposes."""
    rows, tokens, dim = x.shape
    h = x.transpose(1, 2).reshape(rows, dim, decoder.grid_h, decoder.grid_w).contiguous()  # (R, D, H, W)
    for layer in decoder.blocks:
        conv = layer[0]
        out = F.conv2d(h, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
        out = F.layer_norm(out.transpose(-3, -1), (out.size(1),), eps=1e-5).transpose(-3, -1)
        out = F.gelu(out)
        h = out + h
    return decoder.proj(h.reshape(rows, -1, tokens).transpose(1, 2))


@pytest.mark.parametrize("checkpoint", [False, True])
def test_channels_last_decoder_equals_the_official_layout(checkpoint):
    torch.manual_seed(0)
    decoder = CNNDecoder(64, 64, 16, 3, 3, grid_h=6, grid_w=8, checkpoint=checkpoint).train()
    x = torch.randn(5, 48, 64, requires_grad=True)
    out = decoder(x)
    expected = official_layout_decoder(decoder, x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_fp32_teacher_is_its_masters_and_half_teacher_is_not():
    model = tiny_pretraining_model().train()
    teacher = model.teacher
    params = dict(teacher.model.named_parameters())
    assert all(params[name].data_ptr() == master.data_ptr() for name, master in teacher.fp32_params.items())
    before = {name: master.clone() for name, master in teacher.fp32_params.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    model.set_num_updates(1)  # one EMA step
    decay = teacher.decay
    name = "blocks.0.attn.qkv.weight"
    student = dict(model.named_parameters())[name].detach().clone()
    torch.testing.assert_close(params[name], decay * before[name] + (1 - decay) * student, rtol=1e-6, atol=1e-7)

    model.to(torch.bfloat16)
    params = dict(teacher.model.named_parameters())
    assert params[name].dtype == torch.bfloat16 and teacher.fp32_params[name].dtype == torch.float32
    assert params[name].data_ptr() != teacher.fp32_params[name].data_ptr()
    torch.testing.assert_close(params[name], teacher.fp32_params[name].to(torch.bfloat16), rtol=0, atol=0)
    model.to(torch.float32)  # back to fp32: shared again, values kept
    params = dict(teacher.model.named_parameters())
    assert params[name].data_ptr() == teacher.fp32_params[name].data_ptr()
    torch.testing.assert_close(params[name], decay * before[name] + (1 - decay) * student, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_bf16_step_is_close_to_fp32(seed):
    """fairseq's common.bf16 (the model in bf16, fp32 EMA masters): losses within 5e-3 relative of fp32
    (measured <= 6.3e-4 over three seeds), gradients pointing the same way."""
    model = tiny_pretraining_model(seed=seed, **{"modalities.image.mask_noise_std": 0.0}).train()
    source = torch.randn(4, 1, TARGET_LENGTH, 128, generator=torch.Generator().manual_seed(seed))
    masks = compute_block_mask_2d((8, 64), 0.8, 5, 0.07, True, img_shape=(8, 8))
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype).zero_grad(set_to_none=True)
        out = model(source=source.to(dtype), precomputed_mask=masks)
        losses = {name: term.float().sum() / out["sample_size"] for name, term in out["losses"].items()}
        sum(losses.values()).backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results.append(({name: value.item() for name, value in losses.items()}, grads))
    (fp32_losses, fp32_grads), (bf16_losses, bf16_grads) = results
    assert set(bf16_losses) == {"cls", "IMAGE_regression"}
    for name, value in fp32_losses.items():
        assert bf16_losses[name] == pytest.approx(value, rel=5e-3), name
    assert F.cosine_similarity(fp32_grads, bf16_grads, dim=0) > 0.99


def two_pretraining_steps(compiled: bool):
    """Two SGD steps with the EMA in between: losses of both steps, the second step's gradients, the state."""
    model = tiny_pretraining_model(seed=3, torch_compile=compiled).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    source = torch.randn(2, 1, TARGET_LENGTH, 128, generator=torch.Generator().manual_seed(0))
    masks = compute_block_mask_2d((4, 64), 0.8, 5, 0.07, True, img_shape=(8, 8))
    losses = []
    for update in (1, 2):
        model.set_num_updates(update)  # the teacher folds in the student of the step before
        optimizer.zero_grad()
        torch.manual_seed(11)  # mask-token noise from the global RNG
        out = model(source=source, precomputed_mask=masks)
        loss = sum(term.sum() for term in out["losses"].values()) / out["sample_size"]
        loss.backward()
        optimizer.step()
        losses.append({k: v.detach() for k, v in out["losses"].items()})
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return losses, grads, model.state_dict()


@pytest.mark.slow
def test_torch_compile_gives_the_eager_losses_gradients_and_state_names():
    """``torch_compile``: inductor's kernels, so equal up to float rounding (measured: losses within 2e-6
    relative); parameter names unchanged, and the teacher sees the EMA's in-place updates."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager_losses, eager_grads, eager_state = two_pretraining_steps(compiled=False)
    assert counters["stats"]["unique_graphs"] == 0
    losses, grads, state = two_pretraining_steps(compiled=True)
    assert counters["stats"]["unique_graphs"] >= 3  # student block, decoder layer, teacher block (no grad)
    assert list(state) == list(eager_state)
    for step, (ours, theirs) in enumerate(zip(losses, eager_losses)):
        for name in theirs:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=f"step {step}: {name}")
    for name in eager_grads:
        torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(state["_ema"], eager_state["_ema"], rtol=1e-4, atol=1e-6)
