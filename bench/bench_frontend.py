"""Front-end throughput: clips per second through FbankDataset, side by side with the official recipe.

Both paths read the same 10 s clips written at AudioSet's download rate (32 kHz) and produce
(1, 1024, 128) features; the official recipe is re-created inline (soundfile -> functional resample
of the (S, C) array -> channel mean -> DC removal -> Kaldi fbank -> pad/crop -> normalise). Also
measures a cached resampling kernel (torchaudio.transforms.Resample), which is NOT bit-identical to
the official call, to show what it would buy.

    .venv/bin/python bench/bench_frontend.py [--clips 40] [--rate 32000] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from eat_plugin.data.datasets import FbankDataset
from eat_plugin.data.manifest import Clip, write_split


def official_recipe(path: Path, target_length: int = 1024) -> torch.Tensor:
    wav, sr = sf.read(str(path), dtype="float32")
    feats = torch.from_numpy(wav).float()
    feats = torchaudio.functional.resample(feats, orig_freq=sr, new_freq=16000)
    if feats.dim() == 2:
        feats = feats.mean(-1)
    feats = feats - feats.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        feats.unsqueeze(0), htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    pad = target_length - fbank.shape[0]
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, pad)) if pad > 0 else fbank[:target_length]
    return ((fbank - (-4.268)) / (4.569 * 2)).unsqueeze(0)


def cached_kernel_recipe(path: Path, resamplers: dict, target_length: int = 1024) -> torch.Tensor:
    wav, sr = sf.read(str(path), dtype="float32")
    x = torch.from_numpy(wav)
    if sr not in resamplers:
        resamplers[sr] = torchaudio.transforms.Resample(sr, 16000)
    x = resamplers[sr](x)
    x = x - x.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        x.unsqueeze(0), htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, max(0, target_length - fbank.shape[0])))[:target_length]
    return ((fbank + 4.268) / 9.138).unsqueeze(0)


def clips_per_second(fns: dict, n: int, rounds: int = 5) -> dict:
    """Best-of-``rounds`` clips/s for each path, rounds interleaved so drift hits all paths alike."""
    for fn in fns.values():
        fn(0)  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for i in range(n):
                fn(i)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: n / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--rate", type=int, default=32000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (data workers use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        n = int(args.seconds * args.rate)
        clips = []
        for i in range(args.clips):
            sf.write(str(root / f"{i}.wav"), (0.1 * rng.standard_normal(n)).astype(np.float32), args.rate)
            clips.append(Clip(f"{i}.wav", n, ("x",)))
        write_split(root, "bench", root, clips, with_labels=False)
        dataset = FbankDataset(root / "bench.tsv", target_length=1024)
        paths = [dataset.audio_path(i) for i in range(len(dataset))]
        resamplers: dict = {}

        rates = clips_per_second(
            {
                "ours": lambda i: dataset[i],
                "official": lambda i: official_recipe(paths[i]),
                "cached": lambda i: cached_kernel_recipe(paths[i], resamplers),
            },
            len(paths),
        )
        ours, official, cached = rates["ours"], rates["official"], rates["cached"]
        diff = (dataset[0]["source"] - official_recipe(paths[0])).abs().max().item()

    print(f"{args.clips} clips of {args.seconds:g} s at {args.rate} Hz -> (1, 1024, 128), {args.threads} thread(s)")
    print(f"  official recipe        {official:8.1f} clips/s   (1.00x)")
    print(f"  eat_plugin FbankDataset {ours:7.1f} clips/s   ({ours / official:.2f}x), max |diff| {diff:.2e}")
    print(f"  cached resample kernel {cached:8.1f} clips/s   ({cached / official:.2f}x), not bit-identical")


if __name__ == "__main__":
    main()
