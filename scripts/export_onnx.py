#!/usr/bin/env python3
"""Export an EAT checkpoint to ONNX, verified with ONNX Runtime against the PyTorch model.

    pip install .[onnx]    # onnx, onnxruntime, onnxscript (the export only; the rest never needs them)
    python scripts/export_onnx.py runs/esc50/checkpoint_best.pt runs/esc50/model.onnx            # logits
    python scripts/export_onnx.py EAT-base_epoch30_pretrain.pt eat_encoder.onnx --kind encoder --all-layers

Input ``fbank`` ``(batch, 1, frames, 128)``: dynamic batch; frames a multiple of 16 up to ``--max-frames``
(default: the training length). ``model.json`` next to it says how to compute that fbank (16 kHz mono,
Kaldi fbank parameters, normalisation) and lists the outputs and class names; ``scripts/run_onnx.py`` runs
the exported model with ONNX Runtime alone, front end included.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__":  # keep the command line free of fairseq's import-time log and warning noise
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from eat_plugin import cli  # noqa: E402
from eat_plugin.console import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_arguments(parser)
    parser.add_argument("output", type=Path, metavar="OUTPUT.onnx", help="the ONNX file (model.json beside it)")
    parser.add_argument("--kind", choices=("classifier", "encoder"), default=None,
                        help="classifier (fine-tuned: logits) or encoder (tokens); default: by the checkpoint")
    parser.add_argument("--all-layers", action="store_true", help="encoder: also every block's layer_results")
    parser.add_argument("--max-frames", type=int, default=None, metavar="T",
                        help="longest input in frames (multiple of 16; default: the training length)")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        from eat_plugin.onnx_export import export_onnx
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise cli.CLIError(f"ONNX export needs the optional extra: pip install .[onnx] ({err})") from None
    model = cli.load(args, check_names=False)
    kind = args.kind or ("classifier" if model.is_classifier else "encoder")
    try:
        spec = export_onnx(model, args.output, kind, all_layers=args.all_layers, max_frames=args.max_frames)
    except ValueError as err:
        raise cli.CLIError(str(err)) from None
    checks = ", ".join(f"{shape}: {diff:.1e}" for shape, diff in spec.verified.items())
    print(f"wrote {args.output} and {args.output.with_suffix('.json')} ({kind}, outputs {', '.join(spec.outputs)}, "
          f"frames {spec.min_frames}..{spec.max_frames} in steps of {spec.frame_step}); ONNX Runtime vs PyTorch, "
          f"max |diff| per batch x frames: {checks}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
