#!/usr/bin/env python
"""Convert EAT checkpoints between fairseq and the Hugging Face layout of the released models.

    to-hf   INPUT.pt  OUTPUT_DIR   fairseq checkpoint -> config.json + model.safetensors
    from-hf INPUT_DIR OUTPUT.pt    HF folder (model.safetensors or pytorch_model.bin) -> fairseq checkpoint

to-hf keeps the student encoder (+ fc_norm / head of a fine-tuned model) and drops the pre-training
decoder and EMA teacher. from-hf of a pre-trained model writes a full pre-training checkpoint with a
freshly initialised decoder and teacher = student (the HF model has neither); use it as
model.model_path for fine-tuning. A fine-tuned model loads with fairseq given a data folder holding
label_descriptors.csv:

    checkpoint_utils.load_model_ensemble_and_task([OUTPUT.pt], arg_overrides={"data": DIR})

--labels CSV (index,id,name, e.g. AudioSet's class_labels_indices.csv) writes that folder's
label_descriptors.csv next to OUTPUT.pt and stores the folder as task.data, so no override is needed.
Values the HF config does not carry come from --template (a fairseq checkpoint) or the official
EAT-base / EAT-large recipes. See eat_plugin/hf.py for the key mapping.

Examples:

    python scripts/convert_hf.py to-hf checkpoints/checkpoint_last.pt EAT-base_hf/
    python scripts/convert_hf.py from-hf EAT-base_epoch30_finetune_AS2M/ eat_as2m.pt --labels class_labels_indices.csv
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from eat_plugin.checkpoint import load_checkpoint
from eat_plugin.console import run_cli
from eat_plugin.hf import eat_config, fairseq_to_hf, hf_to_fairseq, install_class_table, load_hf, save_hf


def describe(config: Mapping, weights: Mapping) -> str:
    """``fine-tuned EAT (12 blocks, width 768, 527 classes), 200 tensors, 88.1M values``."""
    finetuned = config["model_variant"] == "finetune"
    tensors = [v for v in weights.values() if isinstance(v, torch.Tensor)]
    classes = f", {config['num_classes']} classes" if finetuned else ""
    return (f"{'fine-tuned' if finetuned else 'pre-trained'} EAT ({config['depth']} blocks, width "
            f"{config['embed_dim']}{classes}), {len(tensors)} tensors, "
            f"{sum(t.numel() for t in tensors) / 1e6:.1f}M values")


def to_hf(args: argparse.Namespace) -> str:
    hf_state, config = fairseq_to_hf(load_checkpoint(args.input))
    save_hf(args.output, hf_state, config)
    return f"wrote {args.output} (config.json, model.safetensors): {describe(config, hf_state)}"


def from_hf(args: argparse.Namespace) -> str:
    hf_state, config = load_hf(args.input)
    checked = eat_config(config)
    output = Path(args.output)
    template = load_checkpoint(args.template)["cfg"] if args.template else None
    data, label_ids, extra = None, None, ""
    if args.labels:
        if checked["model_variant"] != "finetune":
            raise ValueError("--labels applies to fine-tuned models only (config.json has model_variant 'pretrain')")
        path, label_ids = install_class_table(args.labels, output.parent, checked["num_classes"])
        data = str(output.parent.resolve())
        extra = f"; wrote {path} (task.data = {data})"
    state = hf_to_fairseq(hf_state, config, template, data=data, label_ids=label_ids, seed=args.seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, output)
    weights = {k: v for k, v in state["model"].items() if k != "_ema"}
    return f"wrote {output}: {describe(checked, weights)} ({state['cfg']['model']['_name']}){extra}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    to = sub.add_parser("to-hf", help="fairseq checkpoint -> Hugging Face folder")
    to.add_argument("input", metavar="INPUT.pt", help="fairseq checkpoint (data2vec_multi or mae_image_classification)")
    to.add_argument("output", metavar="OUTPUT_DIR", help="folder for config.json and model.safetensors")
    back = sub.add_parser("from-hf", help="Hugging Face folder -> fairseq checkpoint")
    back.add_argument("input", metavar="INPUT_DIR",
                      help="folder with config.json and model.safetensors / pytorch_model.bin")
    back.add_argument("output", metavar="OUTPUT.pt", help="fairseq checkpoint to write")
    back.add_argument("--labels", metavar="CSV", help="class table (index,id,name) of a fine-tuned model: written as "
                      "label_descriptors.csv next to OUTPUT.pt, whose folder becomes task.data")
    back.add_argument("--template", metavar="CKPT", help="fairseq checkpoint whose cfg supplies the values the HF "
                      "config lacks (default: the official recipes)")
    back.add_argument("--seed", type=int, default=1, help="seed of a pre-trained model's fresh decoder (default: 1)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    def run() -> int:
        print(to_hf(args) if args.command == "to-hf" else from_hf(args))
        return 0

    # an HF folder / checkpoint that does not match the EAT layout raises ValueError / KeyError naming it
    return run_cli(run, ValueError, KeyError, pickle.UnpicklingError)


if __name__ == "__main__":
    sys.exit(main())
