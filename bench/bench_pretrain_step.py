"""Where a pre-training step's time and memory go: a per-stage breakdown of the plugin's EAT step.

The step is run stage by stage, exactly as ``Data2VecMultiModel.forward`` runs it (the same methods, in the
same order), with the wall time of each stage, the memory autograd keeps for the backward per stage, and
the memory in use after each stage:

    front end   Kaldi fbank of the batch's 10-s clips (what a DataLoader worker does per step)
    EMA         teacher update (``set_num_updates``, as fairseq calls it at the start of each step)
    embed       patch embedding + positions
    student     the visible tokens of every clone through the blocks
    decoder     noise tokens in, CNN decoder over the full grid
    teacher     the EMA teacher on the full clip (once per clip), targets
    losses      regression at the masked patches + CLS
    backward    everything above
    optimizer   the plugin's ``adam_fused``, fairseq's ``adam`` or torch's AdamW (``--optimizer``)

Then ``--plain-steps`` whole steps as training runs them (``model(source, precomputed_mask)``, backward,
optimizer; no per-stage synchronisation or hooks): clips/s, the analytic model FLOPs per clip
(``bench_official.workload_flops``: forward + 2 x backward of student and decoder, the teacher's forward) and
the model-FLOP utilisation against a large matmul's rate measured in the same process and dtype.

Use it to choose the next optimisation from data; `bench/bench_official.py` compares against the official
code. Memory in use: CUDA ``memory_allocated``, CPU the process's RSS; peak: CUDA ``max_memory_allocated``,
CPU the RSS high-water mark (VmHWM); both minus the RSS after the imports on the CPU.

    .venv/bin/python bench/bench_pretrain_step.py --preset base                       # CPU, 2 threads
    .venv/bin/python bench/bench_pretrain_step.py --preset base --checkpoint-activations
    .venv/bin/python bench/bench_pretrain_step.py --preset base --batch 12 --dtype bf16   # GPU
    .venv/bin/python bench/bench_pretrain_step.py --preset base --profile 25   # + the top 25 operators of a step
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator

import torch
from omegaconf import OmegaConf

from eat_plugin.data.fbank import pad_or_crop, wave_to_fbank
from eat_plugin.masking import compute_block_mask_2d
from eat_plugin.models.data2vec_multi import Data2VecMultiModel
from eat_plugin.models.pretraining_config import Data2VecMultiConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_official import ModelShape, gemm_peak, workload_flops  # noqa: E402  (the one FLOP count)

PRESETS = {
    # official EAT-base (reference §6.1): D 768, depth 12, 16 clones, 1024 frames, CNN decoder 6 x 768
    "base": dict(embed_dim=768, depth=12, num_heads=12, clone_batch=16, target_length=1024,
                 decoder=dict(decoder_dim=768, decoder_groups=16, decoder_kernel=3, decoder_layers=6)),
    "small": dict(embed_dim=384, depth=6, num_heads=6, clone_batch=16, target_length=1024,
                  decoder=dict(decoder_dim=384, decoder_groups=16, decoder_kernel=3, decoder_layers=6)),
    "tiny": dict(embed_dim=32, depth=2, num_heads=2, clone_batch=2, target_length=128,
                 decoder=dict(decoder_dim=32, decoder_groups=8, decoder_kernel=3, decoder_layers=2)),
}
STAGES = ("front end", "EMA", "embed", "student", "decoder", "teacher", "losses", "backward", "optimizer")


def build_config(preset: dict, checkpoint_activations: bool = False, torch_compile: bool = False):
    """The base recipe's model section (config/pretraining/base.yaml) at the preset's size."""
    cfg = OmegaConf.structured(Data2VecMultiConfig)
    return OmegaConf.merge(cfg, {
        "embed_dim": preset["embed_dim"], "depth": preset["depth"], "num_heads": preset["num_heads"],
        "average_top_k_layers": preset["depth"], "clone_batch": preset["clone_batch"], "cls_loss": 1.0,
        "ema_decay": 0.9998, "ema_end_decay": 0.99999, "ema_anneal_end_step": 100000, "max_update": 400000,
        "seed": 1, "instance_norm_target_layer": True, "layer_norm_targets": True, "ema_encoder_only": False,
        "encoder_dropout": 0.0, "post_mlp_drop": 0.0, "attention_dropout": 0.0, "supported_modality": "IMAGE",
        "checkpoint_activations": checkpoint_activations, "torch_compile": torch_compile,
        "modalities": {"image": {
            "in_chans": 1, "embed_dim": preset["embed_dim"], "target_length": preset["target_length"],
            "inverse_mask": True, "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 5,
            "prenet_depth": 0, "ema_local_encoder": True, "num_extra_tokens": 1, "init_extra_token_zero": False,
            "num_alibi_heads": preset["num_heads"], "model_depth": preset["depth"],
            "decoder": {**preset["decoder"], "input_dropout": 0.0},
        }},
    })


def memory_gib(device: torch.device, peak: bool) -> float:
    """Memory in use now (``peak=False``) or at most so far, GiB."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**30
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s+(\d+)" if peak else r"VmRSS:\s+(\d+)", status).group(1)) / 2**20


def make_optimizer(name: str, params, device: torch.device):
    if name == "fairseq":  # fairseq's own Adam, as the recipes' composite optimizer runs it
        from fairseq.optim.adam import Adam
        return Adam(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    if name == "adam_fused":  # the plugin's fairseq optimizer (fairseq Adam's update, fused kernel)
        from eat_plugin.optim import AdamFused
        return AdamFused(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)


class StepBreakdown:
    """Times each stage and tallies the storages autograd saves for the backward during it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: Dict[str, float] = {}
        self.saved: Dict[str, int] = {}
        self.in_use: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        storages: Dict[int, int] = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        self._sync()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
        self._sync()
        self.seconds[name] = time.perf_counter() - start
        self.saved[name] = sum(storages.values())
        self.in_use[name] = memory_gib(self.device, peak=False)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def run_step(model: Data2VecMultiModel, optimizer, waves: torch.Tensor, masks: torch.Tensor, update: int,
             autocast_dtype, target_length: int) -> StepBreakdown:
    """One training step, stage by stage, as ``Data2VecMultiModel.forward`` + fairseq's train step run it."""
    device = masks.device
    timer = StepBreakdown(device)
    with timer.stage("front end"):
        source = torch.stack([pad_or_crop(wave_to_fbank(w), target_length) for w in waves])  # (B, T, 128)
        source = source.unsqueeze(1).to(device)  # (B, 1, T, 128)
    with timer.stage("EMA"):
        model.set_num_updates(update)
    encoder = model.modality_encoders["IMAGE"]
    batch, rows = source.size(0), source.size(0) * model.clone_batch
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        with timer.stage("embed"):
            patches = encoder.embed(source)  # (B, N, D)
            info = model._mask_info(masks, rows, patches.size(1), device)
            clip_of_row = torch.arange(batch, device=device).repeat_interleave(model.clone_batch)  # (R,)
        with timer.stage("student"):
            student = model.decoder_input_dropout(model._encode_visible(patches, info, clip_of_row))  # (R, E+K, D)
        with timer.stage("decoder"):
            pred = model._decode(student, info, None)  # (R, N, D)
        with timer.stage("teacher"):
            targets = model._teacher_targets(source)  # (B, N, D)
        with timer.stage("losses"):
            result = model._losses(source, student, pred, targets, info, clip_of_row)
            loss = sum(term.float().sum() for term in result["losses"].values()) / result["sample_size"]
    del student, pred, targets, result, patches
    with timer.stage("backward"):
        loss.backward()
    with timer.stage("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return timer


def plain_steps(model: Data2VecMultiModel, optimizer, source: torch.Tensor, masks: torch.Tensor, first_update: int,
                steps: int, autocast_dtype) -> float:
    """Seconds per whole training step (median of ``steps`` after one warm-up), timed with one device sync
    per step: what fairseq's train step runs, without the breakdown's instrumentation."""
    device = masks.device
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.set_num_updates(first_update + i)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = model(source=source, precomputed_mask=masks)
            loss = sum(term.float().sum() for term in out["losses"].values()) / out["sample_size"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[steps // 2] if steps else times[0]  # steps=0: the one step, unwarmed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--batch", type=int, default=1, help="clips per step (official: 12 per GPU)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps, after 2 warm-up steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--optimizer", choices=["adam_fused", "fairseq", "adamw"], default="adam_fused",
                        help="the plugin's adam_fused, fairseq's adam (the recipes' default), or torch's AdamW")
    parser.add_argument("--checkpoint-activations", action="store_true",
                        help="model.checkpoint_activations=true (student blocks and decoder layers)")
    parser.add_argument("--compile", action="store_true",
                        help="model.torch_compile=true (every block and decoder layer; the warm-up steps compile)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plain-steps", type=int, default=3, help="whole steps timed without the breakdown (0: none)")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="also profile one whole step with torch.profiler: the ROWS operators with the most "
                             "self time, by input shape (0: no profile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    preset = PRESETS[args.preset]
    base_memory = memory_gib(device, peak=False) if device.type == "cpu" else 0.0

    torch.manual_seed(0)
    model = Data2VecMultiModel(build_config(preset, args.checkpoint_activations, args.compile)).to(device).train()
    optimizer = make_optimizer(args.optimizer, [p for p in model.parameters() if p.requires_grad], device)
    frames, grid = preset["target_length"], (preset["target_length"] // 16, 8)
    waves = 0.1 * torch.randn(args.batch, 160 * frames + 240)  # clips of exactly `frames` fbank frames
    masks = compute_block_mask_2d((args.batch * preset["clone_batch"], grid[0] * grid[1]), 0.8, 5, 0.07, True,
                                  img_shape=grid).to(device)
    steps = [run_step(model, optimizer, waves, masks, update, autocast_dtype, frames)
             for update in range(1, args.steps + 3)][2:]

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.preset}: {params:.1f} M parameters, {args.batch} clip(s) x {preset['clone_batch']} clones, "
          f"T={frames}, {args.dtype}, optimizer {args.optimizer}, checkpoint_activations="
          f"{args.checkpoint_activations}, torch_compile={args.compile}, {name}, torch {torch.__version__}")
    median: Callable[[list], float] = lambda values: sorted(values)[len(values) // 2]
    total = median([sum(s.seconds.values()) for s in steps])
    print(f"  {'stage':10s} {'ms':>9s} {'share':>6s} {'saved for bwd':>14s} {'in use after':>13s}")
    for stage in STAGES:
        seconds = median([s.seconds[stage] for s in steps])
        saved = median([s.saved[stage] for s in steps]) / 2**20
        in_use = max(s.in_use[stage] for s in steps) - base_memory
        print(f"  {stage:10s} {seconds * 1e3:9.1f} {seconds / total:6.1%} {saved:10.0f} MiB {in_use:9.2f} GiB")
    print(f"  {'step':10s} {total * 1e3:9.1f}   (median of {len(steps)}; {args.batch / total:.2f} clips/s)")
    print(f"  peak memory {memory_gib(device, peak=True) - base_memory:.2f} GiB"
          + (" (RSS high-water mark minus the RSS after the imports)" if device.type == "cpu" else ""))
    source = torch.stack([pad_or_crop(wave_to_fbank(w), frames) for w in waves]).unsqueeze(1).to(device)
    if args.plain_steps > 0:
        seconds = plain_steps(model, optimizer, source, masks, args.steps + 3, args.plain_steps, autocast_dtype)
        shape = ModelShape(OmegaConf.to_container(build_config(preset), resolve=True, enum_to_str=True))
        flops = workload_flops("pretrain", shape, args.batch)  # per step
        peak, gemm = gemm_peak(device, autocast_dtype or torch.float32)
        print(f"  whole step {seconds * 1e3:.1f} ms (median of {args.plain_steps}): {args.batch / seconds:.2f} clips/s, "
              f"{flops / args.batch / 1e12:.3f} TFLOP per clip, {flops / seconds / 1e12:.2f} TFLOP/s = "
              f"{flops / seconds / peak:.1%} of the {gemm} rate ({peak / 1e12:.1f} TFLOP/s)")
    if args.profile > 0:
        print(operator_profile(model, optimizer, source, masks, args.steps + args.plain_steps + 4, autocast_dtype,
                               args.profile))


def operator_profile(model: Data2VecMultiModel, optimizer, source: torch.Tensor, masks: torch.Tensor, update: int,
                     autocast_dtype, rows: int) -> str:
    """torch.profiler's table of one whole step (as ``plain_steps`` runs it): the ``rows`` operators with the
    most self time, one row per operator and input shapes (where the element-wise time and the copies go)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if masks.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        plain_steps(model, optimizer, source, masks, update, 0, autocast_dtype)  # one step, no warm-up
    sort_by = "self_cuda_time_total" if masks.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=rows,
                                                               max_name_column_width=40, max_shapes_column_width=60)


if __name__ == "__main__":
    main()
