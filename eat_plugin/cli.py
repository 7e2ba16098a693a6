"""Shared machinery of the inference scripts (``scripts/inference.py``, ``evaluate.py``, ``extract_features.py``).

* the common options (checkpoint, ``--device``, ``--batch-size``, ``--target-length``, ``--norm``) and
  :func:`load` (everything goes through :func:`eat_plugin.api.load_model`, so the front end is the
  training one);
* :func:`collect_inputs`: an audio file, a folder (recursive) or a manifest ``.tsv`` -> a list of :class:`AudioItem`;
* :func:`map_batches`: several clips per forward pass; a clip that cannot be read is reported on its
  own while the others go on;
* the error wrapper, progress bar and skip reasons come from :mod:`eat_plugin.console` (shared with the preparers).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import soundfile as sf
import torch

from eat_plugin.api import EATModel, load_model
from eat_plugin.console import InputError, failure_reason, progress
from eat_plugin.data.fbank import AudioError, resolve_norm_stats
from eat_plugin.layout import check_target_length
from eat_plugin.data.manifest import Manifest, ManifestError, read_manifest
from eat_plugin.data.audio_files import AUDIO_EXTENSIONS, walk_audio_files

# Errors of one clip (missing, unreadable, too short): reported for that clip, the others go on.
CLIP_ERRORS = (AudioError, OSError, sf.SoundFileError)


class CLIError(InputError):
    """Bad input; the message names the file and what was expected. Printed as ``error: ...`` (exit 1)."""


@dataclass(frozen=True)
class AudioItem:
    """One input clip: where it is and the name it is reported (and, for features, saved) under."""

    path: Path
    name: str  # relative path (folder / manifest input) or the path as given (single file)


# ------------------------------------------------------------------------------------------ options


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N")
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _target_length(text: str) -> int:
    try:
        return check_target_length(positive_int(text), "--target-length")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _norm(text: str):
    try:
        return resolve_norm_stats(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """CHECKPOINT plus ``--device``, ``--batch-size``, ``--target-length`` and ``--norm``."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="fairseq EAT checkpoint (.pt); loaded without unpickling code (weights_only)")
    parser.add_argument("--device", type=_device, default=default_device(),
                        help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                        help="clips (windows of target-length frames) per forward pass (default: 16)")
    parser.add_argument("--target-length", type=_target_length, default=None, metavar="N",
                        help="frames per window, a multiple of 16 (default: the model's training length, "
                             "e.g. 1024 = 10.24 s)")
    parser.add_argument("--norm", type=_norm, default=None, metavar="NAME|MEAN,STD",
                        help="fbank statistics: audioset, esc50, spcv2 or MEAN,STD (default: those the checkpoint "
                             "was trained with)")


def load(args: argparse.Namespace, labels: Optional[Path] = None, check_names: bool = True,
         semantic_heads: bool = False) -> EATModel:
    """:func:`eat_plugin.api.load_model` with the common options; any load problem becomes a ``CLIError``.

    ``check_names``: a class table (``labels`` or the one found through the checkpoint) must have one
    name per class of the model.
    """
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    path = Path(args.checkpoint)
    if not path.is_file():
        raise CLIError(f"{path}: checkpoint not found")
    if labels is not None and not Path(labels).is_file():
        raise CLIError(f"{labels}: class table (--labels) not found; expected a csv 'index,id,display name'")
    try:
        model = load_model(path, device=args.device, labels=labels, target_length=args.target_length,
                           norm=args.norm, batch_size=args.batch_size, semantic_heads=semantic_heads)
    except ManifestError:
        raise  # a bad --labels file: its message names the file
    except (KeyError, EOFError, zipfile.BadZipFile) as err:  # torch.load of a truncated / non-torch file
        raise CLIError(f"{path}: not a readable fairseq checkpoint ({type(err).__name__}: {err})") from None
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as err:
        message = str(err) or type(err).__name__
        named = message.startswith(str(path)) or (labels is not None and message.startswith(str(labels)))
        raise CLIError(message if named else f"{path}: cannot load the checkpoint: {message}") from None
    if check_names:
        check_label_names(model, labels)
    return model


def num_classes(model: EATModel) -> int:
    return model.network.head.out_features


def check_label_names(model: EATModel, labels: Optional[Path]) -> None:
    """A class table must name every class of the model, no more, no fewer."""
    if not model.is_classifier or model.label_names is None or len(model.label_names) == num_classes(model):
        return
    source = labels if labels is not None else "the class table found through the checkpoint"
    raise CLIError(f"{source} lists {len(model.label_names)} classes but the model has {num_classes(model)}; "
                   f"pass --labels with the model's class table")


# ------------------------------------------------------------------------------------------- inputs


def manifest_items(manifest: Manifest) -> List[AudioItem]:
    """The clips of a manifest, in its row order (``CLIError`` for an empty one)."""
    if not len(manifest):
        raise CLIError(f"{manifest.path}: the manifest lists no clips")
    return [AudioItem(manifest.audio_path(i), row.relpath) for i, row in enumerate(manifest.rows)]


def collect_inputs(source: Path) -> List[AudioItem]:
    """An audio file, a folder (recursive) or a manifest ``.tsv`` -> the clips to process."""
    source = Path(source)
    if source.is_dir():
        items = [AudioItem(p, p.relative_to(source).as_posix()) for p in walk_audio_files(source)[0]]
        if not items:
            raise CLIError(f"{source}: no audio files in this folder or below "
                           f"(looked for {', '.join(AUDIO_EXTENSIONS)})")
        return items
    if source.suffix == ".tsv":
        return manifest_items(read_manifest(source))  # ManifestError / FileNotFoundError name the line / file
    if not source.is_file():
        raise CLIError(f"{source}: not found; expected an audio file, a folder of audio files or a manifest .tsv")
    return [AudioItem(source, str(source))]


# ----------------------------------------------------------------------------------------- batching


def map_batches(items: Sequence[AudioItem], fn: Callable[[List[Path]], Sequence[Any]], batch_size: int,
                desc: str) -> Iterator[Tuple[AudioItem, Any, Optional[str]]]:
    """Apply ``fn`` (paths -> one output per path) to batches of ``items``.

    Yields ``(item, output, None)`` per clip, or ``(item, None, reason)`` for a clip that could not be
    read; a batch with a bad clip is redone clip by clip, so the others still get their output.
    """
    batch: List[AudioItem] = []
    for item in progress(items, desc):
        batch.append(item)
        if len(batch) == batch_size:
            yield from _run_batch(batch, fn)
            batch = []
    if batch:
        yield from _run_batch(batch, fn)


def _run_batch(batch: List[AudioItem], fn) -> Iterator[Tuple[AudioItem, Any, Optional[str]]]:
    try:
        outputs = fn([item.path for item in batch])
    except CLIP_ERRORS:
        for item in batch:
            try:
                output = fn([item.path])[0]
            except CLIP_ERRORS as err:
                yield item, None, failure_reason(err, item.path)
            else:
                yield item, output, None
        return
    yield from ((item, output, None) for item, output in zip(batch, outputs))


# ------------------------------------------------------------------------------------------ outputs


def write_json(data: Any, dest: str) -> None:
    """Write ``data`` as JSON to ``dest`` (``-``: stdout); NaN becomes ``null``."""
    text = json.dumps(_finite(data), indent=2) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        return
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def open_text(dest: Path):
    """Open an output text file, creating its folder."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return open(dest, "w", encoding="utf-8", newline="")
