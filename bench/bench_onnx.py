"""10-s clips per second through the encoder: PyTorch eager vs ONNX Runtime, measured side by side.

A random-init EAT encoder (EAT-base by default: 12 x 768, 1024 frames) is exported with
``eat_plugin.onnx_export`` (verified against PyTorch), then both runtimes run the same fbank batches,
alternating A B A B (``--pairs``), on the CPU with ``--threads`` threads each. Prints clips/s per batch
size and the ratio ONNX Runtime / PyTorch (> 1: ORT faster), with the machine and the versions.

    python bench/bench_onnx.py                       # EAT-base, batch 1 and 8, 3 pairs, 2 threads
    python bench/bench_onnx.py --preset tiny --pairs 2   # seconds: a smoke run
"""

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eat_plugin.api import EATModel
from eat_plugin.data.fbank import FbankFrontEnd
from eat_plugin.models.data2vec_multi import student_encoder
from eat_plugin.models.pretraining_config import config_from_dict
from eat_plugin.onnx_export import OnnxSession, export_onnx

PRESETS = {
    "base": dict(embed_dim=768, depth=12, num_heads=12, target_length=1024, max_length=768),
    "tiny": dict(embed_dim=64, depth=2, num_heads=4, target_length=1024, max_length=64),
}


def encoder(preset: str) -> EATModel:
    p = PRESETS[preset]
    cfg = config_from_dict({"embed_dim": p["embed_dim"], "depth": p["depth"], "num_heads": p["num_heads"],
                            "average_top_k_layers": p["depth"], "modalities": {"image": {
                                "embed_dim": p["embed_dim"], "target_length": p["target_length"],
                                "max_length": p["max_length"], "in_chans": 1, "ema_local_encoder": True,
                                "inverse_mask": True, "fixed_positions": True}},
                            "ema_encoder_only": False, "supported_modality": "IMAGE"})
    torch.manual_seed(0)
    return EATModel(student_encoder(cfg), FbankFrontEnd(p["target_length"]), None, "cpu", 8)


def clips_per_second(run, fbank: np.ndarray, repeats: int) -> float:
    run(fbank)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run(fbank)
    return repeats * fbank.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="forward passes per measurement")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    model = encoder(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.onnx"
        spec = export_onnx(model, path, "encoder", verify_shapes=((1, 0),), tolerance=1e-3)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = OnnxSession(path, spec)
        session.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        network = model.backbone.eval()

        def eager(fbank):
            with torch.no_grad():
                return network.extract_features(torch.from_numpy(fbank), mask=False, remove_extra_tokens=False)

        print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
              f"onnxruntime {onnxruntime.__version__}, preset {args.preset}, 10-s clips (1024 frames), "
              f"verified max |diff| {max(spec.verified.values()):.1e}")
        for batch in args.batches:
            fbank = np.random.default_rng(0).standard_normal((batch, 1, 1024, 128)).astype(np.float32)
            torch_rates, ort_rates = [], []
            for _ in range(args.pairs):
                torch_rates.append(clips_per_second(eager, fbank, args.repeats))
                ort_rates.append(clips_per_second(session.run, fbank, args.repeats))
            ratios = [o / t for o, t in zip(ort_rates, torch_rates)]
            print(f"batch {batch}: PyTorch {statistics.median(torch_rates):.2f} clips/s, ONNX Runtime "
                  f"{statistics.median(ort_rates):.2f} clips/s, ratio ORT / PyTorch {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f} over {args.pairs} pairs)")


if __name__ == "__main__":
    main()
