"""ONNX export of an EAT model: the fine-tuned classifier (fbank -> logits) or the encoder (fbank -> tokens,
optionally every block's layer_results), with a dynamic batch axis and a dynamic time axis in steps of 16
frames, verified with ONNX Runtime against the PyTorch model after export.

Needs the optional extra (``pip install .[onnx]``: onnx, onnxruntime, onnxscript; torch's dynamo exporter).
Next to ``model.onnx`` a ``model.json`` records what a runtime needs to feed it: the front end
(16 kHz mono, the Kaldi fbank parameters, the normalisation statistics), the frame range, the outputs and
the class names. ``scripts/run_onnx.py`` is a runtime-only client (numpy, soundfile, torchaudio,
onnxruntime; no fairseq, no plugin).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from eat_plugin.api import EATModel
from eat_plugin.data.fbank import FRAME_LENGTH_MS, FRAME_SHIFT_MS
from eat_plugin.layout import NUM_MEL_BINS, PATCH_FRAMES, SAMPLE_RATE

KINDS = ("classifier", "encoder")


@dataclass
class OnnxSpec:
    """``model.json``: how to feed the exported graph (input ``fbank`` ``(B, 1, T, 128)``)."""

    kind: str
    outputs: List[str]
    min_frames: int
    max_frames: int
    frame_step: int = PATCH_FRAMES
    target_length: int = 1024  # the frames per window the model was trained with
    front_end: Dict = field(default_factory=dict)
    label_names: Optional[List[str]] = None
    verified: Dict = field(default_factory=dict)


class _Classifier(nn.Module):
    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, fbank: Tensor) -> Tensor:
        return self.network(fbank)  # (B, C)


class _Encoder(nn.Module):
    def __init__(self, backbone: nn.Module, all_layers: bool):
        super().__init__()
        self.backbone, self.all_layers = backbone, all_layers

    def forward(self, fbank: Tensor):
        out = self.backbone.extract_features(fbank, mask=False, remove_extra_tokens=False)
        if self.all_layers:
            return out["x"], torch.stack(out["layer_results"], dim=1)  # (B, 1+N, D), (B, L, 1+N, D)
        return out["x"]  # (B, 1+N, D)


def front_end_spec(model: EATModel) -> Dict:
    stats = model.front_end.stats
    return {"sample_rate": SAMPLE_RATE, "num_mel_bins": NUM_MEL_BINS, "frame_length_ms": FRAME_LENGTH_MS,
            "frame_shift_ms": FRAME_SHIFT_MS, "window_type": "hanning", "htk_compat": True, "dither": 0.0,
            "use_energy": False, "remove_dc": True, "mean": stats.mean, "std": stats.std,
            "normalise": "(fbank - mean) / (2 * std)"}


def export_onnx(model: EATModel, path: Union[str, Path], kind: str = "classifier", all_layers: bool = False,
                max_frames: Optional[int] = None, verify_shapes: Sequence[Tuple[int, int]] = ((1, 0), (3, 16), (2, -1)),
                tolerance: float = 1e-4) -> OnnxSpec:
    """Export ``model`` to ``path`` (``.onnx``) and ``path.with_suffix('.json')``; verify with ONNX Runtime.

    Args:
        kind: ``classifier`` (a fine-tuned model: logits) or ``encoder`` (tokens ``(B, 1+N, D)``, CLS first;
            with ``all_layers`` also ``(B, L, 1+N, D)`` layer_results).
        max_frames: the longest input in frames (a multiple of 16, at most the position table's
            ``max_length * 16``); default: the model's training length.
        verify_shapes: ``(batch, frames)`` pairs run through both PyTorch and ONNX Runtime after export;
            frames 0 means the training length, -1 the longest, other values as given.
        tolerance: the largest absolute difference accepted (``RuntimeError`` beyond it).
    """
    import onnxruntime  # noqa: F401  (fail early without the extra)

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if kind == "classifier" and not model.is_classifier:
        raise ValueError("a pre-trained checkpoint has no classifier head: export kind='encoder'")
    limit = model.backbone.cfg.modalities.image.max_length * PATCH_FRAMES
    target_length = model.front_end.target_length
    max_frames = max_frames or target_length
    if max_frames % PATCH_FRAMES or not PATCH_FRAMES <= max_frames <= limit:
        raise ValueError(f"max_frames={max_frames}: expected a multiple of {PATCH_FRAMES} in {PATCH_FRAMES}..{limit} "
                         f"(the model's position table covers {limit} frames)")
    module = (_Classifier(model.network) if kind == "classifier" else _Encoder(model.backbone, all_layers)).eval()
    outputs = ["logits"] if kind == "classifier" else (["tokens", "layer_results"] if all_layers else ["tokens"])
    example = torch.zeros(2, 1, min(target_length, max_frames), NUM_MEL_BINS)  # (B, 1, T, 128)
    batch = torch.export.Dim("batch", min=1, max=4096)
    steps = torch.export.Dim("steps", min=1, max=max_frames // PATCH_FRAMES)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=["fbank"], output_names=outputs,
                          dynamic_shapes={"fbank": {0: batch, 2: PATCH_FRAMES * steps}}, verbose=False)
    spec = OnnxSpec(kind, outputs, PATCH_FRAMES, max_frames, target_length=target_length,
                    front_end=front_end_spec(model), label_names=model.label_names)
    spec.verified = verify(module, path, spec, verify_shapes, tolerance)
    path.with_suffix(".json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return spec


def verify(module: nn.Module, path: Path, spec: OnnxSpec, shapes: Sequence[Tuple[int, int]],
           tolerance: float) -> Dict:
    """Largest |ONNX Runtime - PyTorch| per verified shape; ``RuntimeError`` beyond ``tolerance``."""
    session = OnnxSession(path, spec)
    generator = torch.Generator().manual_seed(0)
    report = {}
    for batch, frames in shapes:
        frames = {0: spec.target_length, -1: spec.max_frames}.get(frames, frames)
        frames = min(frames, spec.max_frames)
        fbank = torch.randn(batch, 1, frames, NUM_MEL_BINS, generator=generator)
        with torch.no_grad():
            expected = module(fbank)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(fbank.numpy())
        diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
        report[f"{batch}x{frames}"] = diff
        if not diff <= tolerance:
            raise RuntimeError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.3g} > {tolerance} at batch "
                               f"{batch}, {frames} frames")
    return report


class OnnxSession:
    """ONNX Runtime over an exported model, refusing inputs outside the exported range with one message."""

    def __init__(self, path: Union[str, Path], spec: Optional[OnnxSpec] = None):
        import onnxruntime

        path = Path(path)
        self.spec = spec or OnnxSpec(**json.loads(path.with_suffix(".json").read_text()))
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, fbank: np.ndarray) -> List[np.ndarray]:
        check_input(fbank.shape, self.spec)
        return self.session.run(None, {"fbank": np.ascontiguousarray(fbank, dtype=np.float32)})


def check_input(shape: Tuple[int, ...], spec: OnnxSpec) -> None:
    """``(B, 1, T, 128)`` with T a multiple of 16 in the exported range, else ``ValueError`` saying so."""
    if len(shape) != 4 or shape[1] != 1 or shape[3] != NUM_MEL_BINS or shape[0] < 1:
        raise ValueError(f"fbank of shape {tuple(shape)}: expected (batch, 1, frames, {NUM_MEL_BINS})")
    frames = shape[2]
    if frames % spec.frame_step or not spec.min_frames <= frames <= spec.max_frames:
        raise ValueError(f"fbank of {frames} frames: this export takes multiples of {spec.frame_step} from "
                         f"{spec.min_frames} to {spec.max_frames} (pad or cut windows, or export with a larger "
                         f"max_frames)")
