#!/usr/bin/env python3
"""Run an exported EAT model (scripts/export_onnx.py) with ONNX Runtime alone: no fairseq, no eat_plugin.

    pip install onnxruntime soundfile torchaudio numpy
    python scripts/run_onnx.py model.onnx dog.wav rain.flac --top-k 3

The front end, computed here exactly as the plugin does (and as model.json records): audio -> float mono
(channels averaged) -> 16 kHz (torchaudio's sinc resampler) -> DC removed -> Kaldi fbank (128 mel bins,
25 ms Hanning windows every 10 ms, htk_compat, no dither, no energy) -> ``(fbank - mean) / (2 * std)`` ->
windows of the training length (the last one zero-padded); a classifier's logits are averaged over the
windows of a clip. This file is the README's ONNX Runtime recipe; the tests check that its fbank equals
the plugin's and that its outputs equal the PyTorch model's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio


def fbank_windows(path: Path, spec: dict) -> np.ndarray:
    """``(W, 1, T, 128)`` normalised fbank windows of an audio file (T: the model's training length)."""
    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    mono = torch.from_numpy(wave.mean(axis=1))  # (S,): down-mix first, then resample
    front = spec["front_end"]
    if rate != front["sample_rate"]:
        mono = torchaudio.functional.resample(mono, rate, front["sample_rate"])
    mono = mono - mono.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        mono.unsqueeze(0), htk_compat=front["htk_compat"], sample_frequency=front["sample_rate"],
        use_energy=front["use_energy"], window_type=front["window_type"], num_mel_bins=front["num_mel_bins"],
        dither=front["dither"], frame_shift=front["frame_shift_ms"], frame_length=front["frame_length_ms"],
    ).numpy()  # (n_frames, 128)
    length = min(spec["target_length"], spec["max_frames"])
    count = -(-fbank.shape[0] // length)
    padded = np.zeros((count * length, fbank.shape[1]), dtype=np.float32)
    padded[: fbank.shape[0]] = fbank
    normalised = (padded - front["mean"]) / (2.0 * front["std"])
    return normalised.reshape(count, 1, length, fbank.shape[1]).astype(np.float32)  # (W, 1, T, 128)


def run_model(model_path: Path, audio: Sequence[Path]) -> List[np.ndarray]:
    """Per clip: window-averaged logits ``(C,)`` (classifier), or the tokens ``(W, 1 + N, D)`` (encoder)."""
    import onnxruntime

    spec = json.loads(model_path.with_suffix(".json").read_text())
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    results = []
    for path in audio:
        outputs = session.run(None, {"fbank": fbank_windows(path, spec)})
        results.append(outputs[0].mean(axis=0) if spec["kind"] == "classifier" else outputs[0])
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model.onnx (with model.json beside it)")
    parser.add_argument("audio", type=Path, nargs="+", help="audio files")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    spec = json.loads(args.model.with_suffix(".json").read_text())
    names = spec.get("label_names")
    for path, output in zip(args.audio, run_model(args.model, args.audio)):
        if spec["kind"] != "classifier":
            print(f"{path}: tokens {tuple(output.shape)}")
            continue
        top = np.argsort(-output)[: args.top_k]
        print(f"{path}: " + ", ".join(f"{names[i] if names else i} {output[i]:.3f}" for i in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
