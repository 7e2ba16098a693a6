"""One optimizer step for EAT-base's parameters: fairseq's Adam vs ``adam_fused`` (eat_plugin/optim.py), each
implementation, measured side by side in one run.

The parameters are the shapes of the EAT-base pre-training student (``config/pretraining/base.yaml``: 163
trainable tensors, 87.8M values; written out here so that the bench does not build the model), fp32, in the
two groups fairseq's composite optimizer makes of them (57 tensors without overrides, 106 with
``weight_decay_scale: 0``; both get weight decay 0.05, see README "Note on weight decay"), lr 5e-4, betas
(0.9, 0.95). All optimizers update the same parameters with the same gradients (the timing does not depend
on the values); each has its own state. Rounds run every optimizer once, in a rotating order; the table
gives each one's median and fastest step time and the speed-ups over fairseq's Adam (on a shared machine the
fastest step is the one least disturbed by other work); a second fairseq Adam, its state allocated last,
shows how far identical work differs on the machine. ``adam_fused fused fp16`` is ``fp16_adam_stats: true``
(moments in fp16 with a per-tensor scale: half the state memory).

    python bench/bench_optimizer.py                        # CPU, 2 threads
    python bench/bench_optimizer.py --device cuda --rounds 20
"""

import argparse
import statistics
import time

import torch
from fairseq.optim.adam import Adam

from eat_plugin.optim import AdamFused

D, MLP, DEPTH, DECODER_LAYERS = 768, 3072, 12, 6


def eat_base_shapes():
    """(shape, no-weight-decay override) of each trainable tensor of the EAT-base pre-training student."""
    shapes = [((1, 1, D), False), ((D, 1, 16, 16), False), ((D,), True),  # extra token, patch embedding
              ((D,), True), ((D,), True)]  # context encoder norm
    for _ in range(DECODER_LAYERS):  # CNN decoder: grouped 3x3 convs (16 groups)
        shapes += [((D, D // 16, 3, 3), False), ((D,), True)]
    shapes += [((D, D), False), ((D,), True)]  # decoder projection
    for _ in range(DEPTH):
        shapes += [((3 * D, D), False), ((3 * D,), True), ((D, D), False), ((D,), True),  # attention
                   ((D,), True), ((D,), True),  # norm1
                   ((MLP, D), False), ((MLP,), True), ((D, MLP), False), ((D,), True),  # MLP
                   ((D,), True), ((D,), True)]  # norm2
    return shapes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)

    shapes = eat_base_shapes()
    params = [torch.nn.Parameter((torch.randn(s, generator=generator) * 0.02).to(device)) for s, _ in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(device)
    no_decay = [p for p, (_, nd) in zip(params, shapes) if nd]
    default = [p for p, (_, nd) in zip(params, shapes) if not nd]

    def groups():
        return [{"params": default}, {"params": no_decay}]

    options = dict(lr=5e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    optimizers = {"fairseq adam": Adam(groups(), **options)}
    for implementation in ("loop", "foreach", "fused"):
        optimizers[f"adam_fused {implementation}"] = AdamFused(groups(), implementation=implementation, **options)
    # fp16_adam_stats: the moments in fp16 (half the state), dequantised and requantised every step
    optimizers["adam_fused fused fp16"] = AdamFused(groups(), implementation="fused", fp16_stats=True, **options)
    # the same code as the first, its state allocated last: how far identical work differs on this machine
    optimizers["fairseq adam again"] = Adam(groups(), **options)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for optimizer in optimizers.values():  # warm-up: allocates the state
        optimizer.step()
    sync()
    times = {name: [] for name in optimizers}
    names = list(optimizers)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            start = time.perf_counter()
            optimizers[name].step()
            sync()
            times[name].append(time.perf_counter() - start)

    numel = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads: {len(params)} fp32 tensors, "
          f"{numel / 1e6:.1f}M parameters, groups {len(default)} + {len(no_decay)}, {args.rounds} rounds")
    base, base_min = statistics.median(times["fairseq adam"]), min(times["fairseq adam"])
    print(f"{'optimizer':<20} {'median ms':>10} {'min ms':>8}   speed-up vs fairseq adam: median  min")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {median * 1e3:>10.1f} {min(values) * 1e3:>8.1f} {'':>26}{base / median:>6.2f}x"
              f" {base_min / min(values):>5.2f}x")


if __name__ == "__main__":
    main()
