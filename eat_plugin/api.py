"""A small Python API: checkpoint -> labels or embeddings in three lines.

    import eat_plugin
    model = eat_plugin.load_model("EAT-base_finetune_AS2M.pt", device="cpu")
    model.predict("dog.wav", top_k=5)          # [[("Dog", 0.93), ("Animal", 0.88), ...]]
    model.embed("dog.wav", granularity="utterance")  # (D,) tensor

Inputs: a file path, a ``(waveform, sample_rate)`` pair, or a non-empty list of them (any rate, any
channel count, float or integer PCM samples: the training front end down-mixes and resamples); bad
input raises ``AudioError`` / ``ValueError`` naming the input (its path or ``input i``). Clips longer
than the model's ``target_length`` are cut into consecutive windows: logits are averaged over windows,
frame features are concatenated (padding trimmed), the utterance embedding is the mean of the
windows' CLS outputs.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from eat_plugin.checkpoint import load_checkpoint
from eat_plugin.data.fbank import FbankFrontEnd, read_audio, training_norm_stats
from eat_plugin.layout import FREQ_PATCHES, PATCH_FRAMES
from eat_plugin.data.manifest import read_label_descriptors
from eat_plugin.models.data2vec_multi import Data2VecMultiModel
from eat_plugin.models.mae_image_classification import MaeImageClassificationModel
from eat_plugin.models.stored import network_from_checkpoint

logger = logging.getLogger(__name__)

Audio = Union[str, Path, Tuple[Union[np.ndarray, Tensor], int]]
GRANULARITIES = ("utterance", "frame", "all")


@dataclass
class Clip:
    """One input's windows ``(W, 1, T, 128)`` and its real frame count."""

    windows: Tensor
    n_frames: int
    name: str


def load_model(path: Union[str, Path], device: str = "cpu", labels: Optional[Union[str, Path]] = None,
               target_length: Optional[int] = None, norm=None, batch_size: int = 16,
               semantic_heads: bool = False) -> "EATModel":
    """Load a pre-trained (``data2vec_multi``) or fine-tuned (``mae_image_classification``) checkpoint.

    Args:
        path: fairseq checkpoint; loaded with ``weights_only`` (nothing in it can run code).
        device: ``"cpu"``, ``"cuda"`` or a torch device.
        labels: class table (``label_descriptors.csv`` or AudioSet's ``class_labels_indices.csv``);
            default: the fine-tuning data's ``label_descriptors.csv`` if it still exists, else the ids
            stored in the checkpoint.
        target_length: frames per window (default: the model's training length).
        norm: fbank statistics (default: those of the training run, AudioSet otherwise).
        batch_size: windows per forward pass.
        semantic_heads: keep a pre-trained model's machine-sound heads (``machine_log_probs``).
    """
    state = load_checkpoint(path)
    network, model_target_length = network_from_checkpoint(state, path, keep_semantic_heads=semantic_heads)
    cfg = state["cfg"]
    if norm is None:  # the training run's statistics
        norm = training_norm_stats(cfg.get("task") or {}, prefix=f"{path}: cfg.task")
    front_end = FbankFrontEnd(target_length or model_target_length, norm)
    names = None
    if isinstance(network, MaeImageClassificationModel):
        names = _label_names(state, labels, network.head.out_features)
    return EATModel(network, front_end, names, device, batch_size)


class EATModel:
    """Inference wrapper: the network, the training front end and the class names."""

    def __init__(self, network: nn.Module, front_end: FbankFrontEnd, label_names: Optional[List[str]],
                 device="cpu", batch_size: int = 16):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer (windows per forward pass)")
        self.network = network.to(device).eval()
        self.front_end = front_end
        self.label_names = label_names
        self.device = torch.device(device)
        self.batch_size = batch_size

    @property
    def is_classifier(self) -> bool:
        return isinstance(self.network, MaeImageClassificationModel)

    @property
    def backbone(self) -> Data2VecMultiModel:
        return self.network.model if self.is_classifier else self.network

    # ------------------------------------------------------------------ inputs
    def clips(self, inputs: Union[Audio, Sequence[Audio]], sample_rate: Optional[int] = None) -> List[Clip]:
        """Normalise one input or a list of inputs into windowed fbank clips."""
        if isinstance(inputs, (str, Path)) or (isinstance(inputs, tuple) and len(inputs) == 2
                                               and not isinstance(inputs[0], (str, Path))):
            inputs = [inputs]
        elif isinstance(inputs, (np.ndarray, Tensor)):
            inputs = [(inputs, sample_rate)]
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError(f"expected a path, a (waveform, sample_rate) pair or a non-empty list of them, got {inputs!r:.80}")
        return [self._clip(item, sample_rate, i) for i, item in enumerate(inputs)]

    def _clip(self, item, sample_rate: Optional[int], index: int) -> Clip:
        if isinstance(item, (str, Path)):
            wave, rate = read_audio(item)  # (S, C)
            name = str(item)
        else:
            if isinstance(item, tuple) and len(item) != 2:
                raise ValueError(f"input {index}: a tuple of {len(item)} items; expected (waveform, sample_rate)")
            wave, rate = item if isinstance(item, tuple) else (item, sample_rate)
            if rate is None:
                raise ValueError(f"input {index}: a raw waveform needs its sample rate: pass (wave, sample_rate)")
            name = f"input {index}"
        windows, n_frames = self.front_end.windows(wave, rate, name)  # (W, 1, T, 128)
        return Clip(windows, n_frames, name)

    @torch.no_grad()
    def _run(self, clips: List[Clip], fn) -> List[Tensor]:
        """Apply ``fn`` to all windows of all clips in batches; results split back per clip."""
        windows = torch.cat([c.windows for c in clips])  # (sum W, 1, T, 128)
        outputs = [fn(windows[i:i + self.batch_size].to(self.device)).float().cpu()
                   for i in range(0, windows.size(0), self.batch_size)]
        return list(torch.cat(outputs).split([c.windows.size(0) for c in clips]))

    # ------------------------------------------------------------------ outputs
    def logits(self, inputs, sample_rate: Optional[int] = None) -> Tensor:
        """Window-averaged logits ``(B, C)``."""
        if not self.is_classifier:
            raise ValueError("this is a pre-trained checkpoint without a classifier head: use embed()")
        return torch.stack([w.mean(0) for w in self._run(self.clips(inputs, sample_rate), self.network)])

    def scores(self, inputs, sample_rate: Optional[int] = None) -> Tensor:
        """Class probabilities ``(B, C)``: sigmoid for multi-label models, softmax for single-label ones."""
        logits = self.logits(inputs, sample_rate)
        return torch.softmax(logits, -1) if self.network.single_label else torch.sigmoid(logits)

    def predict(self, inputs, top_k: int = 5, sample_rate: Optional[int] = None) -> List[List[Tuple[str, float]]]:
        """Top-k ``(label, score)`` pairs per input, best first."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k={top_k!r}: expected a positive integer (labels per input)")
        scores = self.scores(inputs, sample_rate)  # (B, C)
        k = min(top_k, scores.size(1))
        values, indices = scores.topk(k, dim=-1)
        names = self.label_names or [f"class_{i}" for i in range(scores.size(1))]
        return [[(names[i], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values, indices)]

    def machine_log_probs(self, inputs, sample_rate: Optional[int] = None) -> Tensor:
        """Log-probabilities ``(B, K)`` of the machine-id head (``load_model(..., semantic_heads=True)``), on
        the mean of each window's patch latents, averaged over the windows of a clip."""
        heads = getattr(self.backbone, "semantic_heads", None)
        if heads is None or heads.machine_id is None:
            raise ValueError("this model has no machine-id head: load a machine_sounds pre-training checkpoint "
                             "(model.lambda_machine_id > 0) with load_model(..., semantic_heads=True)")
        per_clip = self._run(self.clips(inputs, sample_rate), self._machine_log_probs)  # per clip (W, K)
        return torch.stack([w.mean(0) for w in per_clip])  # (B, K)

    def _machine_log_probs(self, windows: Tensor) -> Tensor:
        patches = self.backbone.extract_features(windows, mask=False)["x"]  # (W, N, D)
        return torch.log_softmax(self.backbone.semantic_heads.machine_logits(patches).float(), -1)  # (W, K)

    def embed(self, inputs, granularity: str = "utterance", sample_rate: Optional[int] = None,
              reshape: bool = False,
              layers: Union[None, str, int, Sequence[int]] = None) -> Union[Tensor, List[Tensor]]:
        """Backbone features (the last block's output, as the official feature extraction).

        Args:
            granularity: ``"utterance"`` -> ``(D,)`` CLS (mean over windows); ``"frame"`` -> ``(N, D)``
                patch tokens, time-major, padding trimmed; ``"all"`` -> ``(1 + N, D)`` CLS then patches.
            reshape: frame features as ``(time patches, 8, D)`` (``"frame"`` only).
            layers: ``None`` (default): the last block's output, as above. Otherwise the given blocks'
                outputs as the official ``layer_results`` (each block's FFN output before its residual and
                ``norm2``: the data2vec targets), stacked in front: ``(L, D)``, ``(L, N, D)`` or
                ``(L, 1 + N, D)``. Block indices from 0 (negative from the end), or ``"all"``.

        Returns:
            one tensor for a single input, a list for a list of inputs.
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity={granularity!r}: expected one of {GRANULARITIES}")
        blocks = None if layers is None else self.block_indices(layers)
        single = not isinstance(inputs, list)
        clips = self.clips(inputs, sample_rate)
        if blocks is None:
            tokens = self._run(clips, self._tokens)  # per clip (W, 1 + N_w, D)
            results = [self._aggregate(t, c.n_frames, granularity, reshape) for t, c in zip(tokens, clips)]
        else:
            tokens = self._run(clips, lambda windows: self._layer_tokens(windows, blocks))  # per clip (W, L, 1+N_w, D)
            results = [torch.stack([self._aggregate(t[:, i], c.n_frames, granularity, reshape)
                                    for i in range(len(blocks))]) for t, c in zip(tokens, clips)]
        return results[0] if single else results

    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    def block_indices(self, layers: Union[str, int, Sequence[int]]) -> List[int]:
        """``"all"``, an index or indices (negative from the end) -> block indices in ``0..depth-1``."""
        if isinstance(layers, str) and layers == "all":
            return list(range(self.depth))
        chosen = [layers] if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool) else layers
        if isinstance(chosen, str) or not isinstance(chosen, Sequence) or not chosen:
            raise ValueError(f"layers={layers!r}: expected 'all', a block index or a list of them")
        indices = []
        for value in chosen:
            valid = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if not valid or not -self.depth <= value < self.depth:
                raise ValueError(f"layers={layers!r}: {value!r} is not a block of this {self.depth}-block model "
                                 f"(0..{self.depth - 1}, or -{self.depth}..-1 from the end)")
            indices.append(int(value) % self.depth)
        return indices

    def _tokens(self, windows: Tensor) -> Tensor:
        return self.backbone.extract_features(windows, mask=False, remove_extra_tokens=False)["x"]  # (W, 1+N, D)

    def _layer_tokens(self, windows: Tensor, blocks: Sequence[int]) -> Tensor:
        layer_results = self.backbone.extract_features(windows, mask=False, remove_extra_tokens=False)["layer_results"]
        return torch.stack([layer_results[i] for i in blocks], dim=1)  # (W, L, 1+N, D)

    def _aggregate(self, tokens: Tensor, n_frames: int, granularity: str, reshape: bool) -> Tensor:
        cls = tokens[:, 0].mean(0)  # (D,)
        if granularity == "utterance":
            return cls
        time_patches = -(-n_frames // PATCH_FRAMES)  # real (unpadded) time steps
        frames = tokens[:, 1:].reshape(-1, FREQ_PATCHES, tokens.size(-1))[:time_patches]  # (t, 8, D)
        if granularity == "frame":
            return frames if reshape else frames.reshape(-1, tokens.size(-1))  # (t*8, D)
        return torch.cat([cls[None], frames.reshape(-1, tokens.size(-1))])  # (1 + t*8, D)


# ---------------------------------------------------------------------------------------------------


def _label_names(state: dict, labels: Optional[Union[str, Path]], num_classes: int) -> Optional[List[str]]:
    """Display names by class index: a given csv, else the training data's descriptors, else stored ids.

    A given csv must list exactly ``num_classes`` classes (``ValueError`` naming it otherwise); training
    descriptors that no longer match the model (the data changed since) are passed over with a warning.
    """
    if labels is not None:
        names = read_label_descriptors(labels).names
        if len(names) != num_classes:
            raise ValueError(f"{labels}: lists {len(names)} classes but the model has {num_classes}; "
                             f"expected the class table the model was fine-tuned with")
        return names
    task = state["cfg"].get("task") or {}
    descriptors = Path(str(task.get("data", ""))) / str(task.get("label_descriptors", "label_descriptors.csv"))
    if task.get("data") and descriptors.is_file():
        names = read_label_descriptors(descriptors).names
        if len(names) == num_classes:
            return names
        logger.warning(f"{descriptors} lists {len(names)} classes but the model has {num_classes} (the data changed "
                       f"since fine-tuning?); using the class ids stored in the checkpoint")
    stored = (state.get("task_state") or {}).get("labels")
    if stored:
        by_index = {int(index): label_id for label_id, index in stored.items()}
        return [by_index.get(i, f"class_{i}") for i in range(max(by_index) + 1)]
    return None
