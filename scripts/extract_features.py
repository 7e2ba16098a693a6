#!/usr/bin/env python
"""EAT features of audio clips, one ``.npy`` per clip (the official ``feature_extract/feature_extract.py``, batched).

INPUT is an audio file, a folder (recursive) or a manifest ``.tsv``; the features of clip ``a/b.wav``
(its path relative to the folder / manifest root) go to ``OUTDIR/a/b.npy`` (a single file: ``OUTDIR/b.npy``),
float32. Features are the last block's output (no extra norm), as in the official script:

    all        (1 + N, D)   CLS token, then the N = 8 * ceil(frames / 16) patch tokens, time-major
    frame      (N, D)       patch tokens only; with --reshape (ceil(frames / 16), 8, D): time x frequency
    utterance  (D,)         CLS token

Pre-trained and fine-tuned checkpoints both work (for a fine-tuned one the backbone is used: official
issue #5). Clips longer than the target length are cut into windows: patch tokens are concatenated
(padding trimmed), the CLS token is the mean of the windows' CLS tokens.

Resumable: a clip whose ``.npy`` exists is skipped unless --overwrite; files are written to a temporary
name and renamed, so an interrupted run leaves no partial ``.npy``. A clip that fails is listed at the
end and makes the exit status 1; the others are written.

Example:

    python scripts/extract_features.py EAT-base_epoch30_finetune_AS2M.pt data/wavs feats --granularity frame
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

if __name__ == "__main__":  # keep the command line free of fairseq's import-time log and warning noise
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from eat_plugin.console import run_cli  # noqa: E402
from eat_plugin import cli  # noqa: E402
from eat_plugin.api import GRANULARITIES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write EAT features of each clip to OUTDIR/<relative path>.npy (float32); skips clips "
                    "whose .npy exists unless --overwrite.",
        epilog="Granularities: all = (1 + N, D) CLS then patch tokens; frame = (N, D) patch tokens, or "
               "(time, 8, D) with --reshape; utterance = (D,) CLS token. N = 8 patches per 16 frames (160 ms). "
               "Clips longer than the target length are cut into windows: patch tokens concatenated, CLS averaged.",
    )
    cli.add_model_arguments(parser)
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="an audio file, a folder (recursive) or a manifest .tsv")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR",
                        help="output folder (mirrors the input's relative paths)")
    parser.add_argument("--granularity", choices=GRANULARITIES, default="all",
                        help="all (CLS + patches, default), frame (patches) or utterance (CLS)")
    parser.add_argument("--reshape", action="store_true",
                        help="frame features as (time patches, 8 frequency patches, D) instead of (N, D)")
    parser.add_argument("--layers", type=parse_layers, default=None, metavar="all|I,J,...",
                        help="the given transformer blocks' outputs (official layer_results, 0-based, negative from "
                             "the end) stacked in front: (L, ...) per clip; default: the last block's output")
    parser.add_argument("--overwrite", action="store_true", help="recompute clips whose .npy already exists")
    parser.add_argument("--json", default=None, metavar="FILE|-",
                        help="write the summary (counts, output shape of the first clip, failed clips) as JSON")
    return parser


def parse_layers(text: str):
    """``all`` or comma-separated block indices (``0,5,-1``)."""
    if text == "all":
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated block indices (e.g. 0,5,-1), got {text!r}")


def output_path(outdir: Path, name: str) -> Path:
    """``OUTDIR/a/b.npy`` for clip ``a/b.wav``; an absolute name or one with ``..`` keeps only its file name."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        relative = Path(relative.name)
    return outdir / relative.with_suffix(".npy")


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename: never a partial .npy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args: argparse.Namespace) -> int:
    if args.reshape and args.granularity != "frame":
        raise cli.CLIError(f"--reshape applies to --granularity frame only, not {args.granularity}")
    items = cli.collect_inputs(args.input)
    targets = {item: output_path(args.outdir, item.name) for item in items}
    clashes = [path for path, count in Counter(targets.values()).items() if count > 1]
    if clashes:
        names = [item.name for item, path in targets.items() if path == clashes[0]]
        raise cli.CLIError(f"clips {names} would all be written to {clashes[0]}; rename one of them")
    todo = [item for item in items if args.overwrite or not targets[item].exists()]
    skipped = len(items) - len(todo)
    if not args.checkpoint.is_file():
        raise cli.CLIError(f"{args.checkpoint}: checkpoint not found")
    model = cli.load(args) if todo else None  # nothing to do: no need to load it
    if model is not None and args.layers is not None:
        try:
            model.block_indices(args.layers)
        except ValueError as err:
            raise cli.CLIError(f"--layers: {err}") from None

    written, failed, shape = 0, [], None
    embed = lambda paths: model.embed(list(paths), args.granularity, reshape=args.reshape, layers=args.layers)  # noqa: E731
    for item, features, error in cli.map_batches(todo, embed, args.batch_size, "extracting"):
        if error is not None:
            failed.append({"file": str(item.path), "reason": error})
            continue
        array = features.numpy().astype(np.float32)
        try:
            save_atomic(targets[item], array)
        except OSError as err:
            failed.append({"file": str(item.path), "reason": f"cannot write {targets[item]}: {err}"})
            continue
        written += 1
        shape = shape or list(array.shape)

    summary = {"outdir": str(args.outdir), "granularity": args.granularity, "reshape": args.reshape, "layers": args.layers,
               "clips": len(items), "written": written, "skipped_existing": skipped, "failed": failed,
               "first_shape": shape}
    report(summary, sys.stderr if args.json == "-" else sys.stdout)
    if args.json is not None:
        cli.write_json(summary, args.json)
    return 1 if failed else 0


def report(summary: Dict, console) -> None:
    shape = f", shape {tuple(summary['first_shape'])} (first clip)" if summary["first_shape"] else ""
    print(f"{summary['clips']} clips: written {summary['written']}{shape}, skipped (existing) "
          f"{summary['skipped_existing']}, failed {len(summary['failed'])}", file=console)
    for failure in summary["failed"]:
        print(f"  failed: {failure['file']}: {failure['reason']}", file=console)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
