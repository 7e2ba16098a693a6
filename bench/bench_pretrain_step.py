"""Pre-training step time and peak memory: eat_plugin vs the official code path, measured side by side.

The official-style path runs in the same model with the three things the official implementation
does differently switched back on:
  * attention computed eagerly (softmax(q·kᵀ)·v, the official ``AltAttention``) instead of
    ``F.scaled_dot_product_attention``;
  * clone copies materialised: ``x.repeat_interleave(clone_batch)`` to ``(B·C, N, D)`` before the
    visible tokens are gathered, and the targets repeated to ``(B·C, N, D)`` before masking;
  * masked positions selected with boolean indexing (a host-device sync per step).
Both paths compute the same losses (checked first), with the same weights, masks and inputs.

    python bench/bench_pretrain_step.py --preset base --batch 12 --dtype bf16     # GPU
    python bench/bench_pretrain_step.py --preset tiny --batch 4 --steps 5         # CPU smoke run
"""

import argparse
import time

import torch
from omegaconf import OmegaConf

from eat_plugin.models.data2vec_multi import Data2VecMultiModel
from eat_plugin.models.pretraining_config import Data2VecMultiConfig
from eat_plugin.modules.attention import set_fused_attention
from eat_plugin.masking import compute_block_mask_2d

PRESETS = {
    # official EAT-base (reference §6.1): D 768, depth 12, 16 clones, 1024 frames, CNN decoder 6 x 768
    "base": dict(embed_dim=768, depth=12, num_heads=12, clone_batch=16, target_length=1024,
                 decoder=dict(decoder_dim=768, decoder_groups=16, decoder_kernel=3, decoder_layers=6)),
    "tiny": dict(embed_dim=32, depth=2, num_heads=2, clone_batch=2, target_length=128,
                 decoder=dict(decoder_dim=32, decoder_groups=8, decoder_kernel=3, decoder_layers=2)),
}


def build_config(preset: dict):
    cfg = OmegaConf.structured(Data2VecMultiConfig)
    return OmegaConf.merge(cfg, {
        "embed_dim": preset["embed_dim"], "depth": preset["depth"], "num_heads": preset["num_heads"],
        "average_top_k_layers": preset["depth"], "clone_batch": preset["clone_batch"], "cls_loss": 1.0,
        "ema_decay": 0.9998, "ema_end_decay": 0.99999, "ema_anneal_end_step": 100000, "max_update": 400000,
        "seed": 1, "instance_norm_target_layer": True, "layer_norm_targets": True, "ema_encoder_only": False,
        "encoder_dropout": 0.0, "post_mlp_drop": 0.0, "attention_dropout": 0.0, "supported_modality": "IMAGE",
        "modalities": {"image": {
            "in_chans": 1, "embed_dim": preset["embed_dim"], "target_length": preset["target_length"],
            "inverse_mask": True, "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 5,
            "prenet_depth": 0, "ema_local_encoder": True, "num_extra_tokens": 1, "init_extra_token_zero": False,
            "num_alibi_heads": preset["num_heads"], "model_depth": preset["depth"],
            "decoder": {**preset["decoder"], "input_dropout": 0.0},
        }},
    })


class OfficialStyle(Data2VecMultiModel):
    """Same parameters and maths, the official memory/sync pattern (see the module docstring)."""

    def _encode_visible(self, patches, info, clip_of_row):
        x = patches.repeat_interleave(self.clone_batch, 0)  # (R, N, D): one copy per clone
        visible = x.gather(1, info.ids_keep.unsqueeze(-1).expand(-1, -1, x.size(-1)))  # (R, N_keep, D)
        x = self.dropout_input(self.modality_encoders["IMAGE"].contextualize(visible))
        for block in self.blocks:
            x, _ = block(x)
        return x

    def _gather_masked(self, pred, targets, info, clip_of_row):
        targets = targets.repeat_interleave(self.clone_batch, 0)  # (R, N, D)
        return pred[info.mask], targets[info.mask]  # boolean indexing: syncs on the mask count


def time_steps(model, optimizer, source, masks, steps, autocast_dtype, fused):
    set_fused_attention(fused)
    device = source.device
    timings = []
    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    for step in range(steps + 2):  # 2 warm-up steps
        model.set_num_updates(step + 1)  # the EMA teacher update, as fairseq does each step
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(source=source, precomputed_mask=masks)
            loss = sum(l.float().sum() for l in out["losses"].values()) / out["sample_size"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            timings.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return sorted(timings)[len(timings) // 2], peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--batch", type=int, default=12, help="clips per step (official: 12 per GPU)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    preset = PRESETS[args.preset]
    cfg = build_config(preset)

    torch.manual_seed(0)
    ours = Data2VecMultiModel(cfg).to(device).train()
    official = OfficialStyle(cfg).to(device).train()
    official.load_state_dict(ours.state_dict())
    rows = args.batch * preset["clone_batch"]
    grid = (preset["target_length"] // 16, 8)
    source = torch.randn(args.batch, 1, preset["target_length"], 128, device=device)
    masks = compute_block_mask_2d((rows, grid[0] * grid[1]), 0.8, 5, 0.07, True, img_shape=grid).to(device)

    with torch.no_grad():  # same losses (noise tokens off for the comparison)
        for m in (ours, official):
            m.cfg.modalities.image.mask_noise_std = 0.0
        set_fused_attention(False)
        a = official(source=source, precomputed_mask=masks)
        b = ours(source=source, precomputed_mask=masks)
        diff = max((a["losses"][k] - b["losses"][k]).abs().max().item() for k in a["losses"])
        for m in (ours, official):
            m.cfg.modalities.image.mask_noise_std = 0.01

    results = {}
    for name, model, fused in (("official-style", official, False), ("eat_plugin", ours, True)):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda")
        results[name] = time_steps(model, optimizer, source, masks, args.steps, autocast_dtype, fused)
        del optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{args.preset}: {args.batch} clips x {preset['clone_batch']} clones, T={preset['target_length']}, "
          f"{args.dtype} autocast, {name}; loss max |diff| between paths {diff:.2e}")
    base_time, base_mem = results["official-style"]
    for label, (seconds, peak) in results.items():
        print(f"  {label:15s} {seconds * 1000:8.1f} ms/step  ({base_time / seconds:.2f}x speed)   "
              f"peak {peak:6.2f} GiB  ({peak / base_mem if base_mem == base_mem else float('nan'):.2f}x)")


if __name__ == "__main__":
    main()
