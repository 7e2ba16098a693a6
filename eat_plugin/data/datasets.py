"""fairseq datasets over the official manifests: unlabelled (pre-training) and labelled (fine-tuning).

Batch layout (the official keys; released checkpoints' configs refer to them):
    pre-training   {"id": (B,), "net_input": {"source": (B, 1, T, 128), "id": [B ints], "precomputed_mask": (B * clones, N)}}
    fine-tuning    {"id": (B,), "net_input": {"imgs": (B, 1, T, 128), "id": [B ints], "label": (B, C)}}

``precomputed_mask`` is present only with a ``BlockMaskSpec`` (``task.precompute_mask_config``); row
``b * clones + c`` is clone ``c`` of clip ``b`` (the model's ``repeat_interleave`` order), 1 = masked,
``N = (T // 16) * 8`` patches.

``size()`` / ``num_tokens()`` are 1 for every clip, so fairseq's ``batch_size`` counts clips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fairseq.data import FairseqDataset

from eat_plugin.data.augment import apply_transform, draw_transform, noise_and_time_roll, roll_and_gain
from eat_plugin.data.fbank import AudioError, FbankFrontEnd, NormStats, read_audio, to_mono_16k
from eat_plugin.data.hdf5 import read_h5_audio, split_h5_path
from eat_plugin.data.manifest import LabelDescriptors, ManifestError, read_labels, read_manifest
from eat_plugin.layout import NUM_MEL_BINS, PATCH_FRAMES
from eat_plugin.masking import compute_block_mask_2d
from eat_plugin.seeding import MASK_STREAM, TRANSFORM_STREAM, keyed_generator

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
MAX_LOGGED_SKIPS = 20


@dataclass(frozen=True)
class BlockMaskSpec:
    """Per-clip inverse block masks precomputed in the dataset (``task.precompute_mask_config``).

    Each clip gets ``clone_batch`` independent masks over its ``(T // 16) x 8`` patch grid from
    ``compute_block_mask_2d(..., require_same_masks=True)``, so every row keeps the same count.
    """

    clone_batch: int
    mask_prob: float
    mask_prob_adjust: float = 0.0
    mask_length: int = 5
    inverse_mask: bool = True

    def __post_init__(self):
        if isinstance(self.clone_batch, bool) or not isinstance(self.clone_batch, int) or self.clone_batch < 1:
            raise ValueError(f"clone_batch={self.clone_batch!r}: expected a positive integer (masked copies per clip)")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob={self.mask_prob!r}: expected a fraction strictly between 0 and 1")
        if self.mask_prob_adjust < 0:
            raise ValueError(f"mask_prob_adjust={self.mask_prob_adjust!r}: expected >= 0")
        if isinstance(self.mask_length, bool) or not isinstance(self.mask_length, int) or self.mask_length < 2:
            raise ValueError(f"mask_length={self.mask_length!r}: block masking needs an integer side >= 2")

    @staticmethod
    def grid(target_length: int) -> Tuple[int, int]:
        """Patch grid ``(time, frequency)`` of a ``(target_length, 128)`` fbank: ``(T // 16, 8)``."""
        return target_length // PATCH_FRAMES, NUM_MEL_BINS // PATCH_FRAMES

    def sample(self, target_length: int, generator: torch.Generator) -> torch.Tensor:
        """``(clone_batch, N)`` float mask, 1 = masked, ``N = (T // 16) * 8``."""
        grid = self.grid(target_length)
        return compute_block_mask_2d(
            shape=(self.clone_batch, grid[0] * grid[1]),
            mask_prob=self.mask_prob,
            mask_length=self.mask_length,
            mask_prob_adjust=self.mask_prob_adjust,
            inverse_mask=self.inverse_mask,
            require_same_masks=True,
            img_shape=grid,
            generator=generator,
        )  # (clone_batch, N)


class BadClips:
    """Which clips of a dataset were skipped as undecodable, visible from every DataLoader worker.

    In shared memory (like the epoch): a flag per clip and a counter per process, so workers mark the
    clips they skip without racing and the training process reads the count cheaply (every step). A
    clip read twice (fairseq also builds each epoch's first batch outside the DataLoader) or skipped
    again in a later epoch counts once.
    """

    SLOTS = 256  # counter 0: the main process; 1 + worker id (mod 255): DataLoader workers

    def __init__(self, num_clips: int):
        self.flags = torch.zeros(num_clips, dtype=torch.bool).share_memory_()  # (N,)
        self.counts = torch.zeros(self.SLOTS, dtype=torch.long).share_memory_()  # (SLOTS,)

    def mark(self, index: int) -> None:
        if bool(self.flags[index]):
            return
        self.flags[index] = True
        worker = torch.utils.data.get_worker_info()
        self.counts[0 if worker is None else 1 + worker.id % (self.SLOTS - 1)] += 1

    def count(self) -> int:
        return int(self.counts.sum())

    def indices(self) -> List[int]:
        return torch.nonzero(self.flags).flatten().tolist()


class ClipCache:
    """Decoded clips kept in memory, so a clip is read, resampled and turned into an fbank once per run.

    What is kept is everything of a clip that is the same in every epoch: its ``(1, T, 128)`` fbank, or,
    where a random step comes before the fbank (``roll_aug``, the machine-sound transformations), its
    16 kHz mono waveform; augmentation and masks are drawn afresh from ``(seed, epoch, index)`` as before,
    so a cached run gives exactly the items of an uncached one. One cache serves all splits of a task, up
    to ``budget_mb`` in all; past that, further clips are decoded every time (logged once).

    Only the process that owns the dataset caches: in a DataLoader worker (``dataset.num_workers > 0``) the
    workers already decode in parallel, and a per-worker copy would multiply the memory by their number,
    so nothing is kept there (a pickled cache arrives empty). A file changed on disk during the run is not
    read again once cached.
    """

    def __init__(self, budget_mb: float):
        if not budget_mb >= 0:
            raise ValueError(f"task.clip_cache_mb={budget_mb!r}: expected megabytes >= 0 (0 turns the cache off)")
        self.budget_bytes = int(budget_mb * 2**20)
        self.used_bytes = 0
        self.items: Dict[Tuple[str, int, str], torch.Tensor] = {}  # (namespace, index, level)
        self.full = False

    def __getstate__(self) -> Dict:
        return {**self.__dict__, "items": {}, "used_bytes": 0}  # workers start empty (and never fill it)

    @property
    def active(self) -> bool:
        return self.budget_bytes > 0 and torch.utils.data.get_worker_info() is None

    def get(self, key: Tuple[str, int, str]) -> Optional[torch.Tensor]:
        """A copy of the kept tensor (callers may change it in place), or None."""
        kept = self.items.get(key)
        return None if kept is None else kept.clone()

    def put(self, key: Tuple[str, int, str], tensor: torch.Tensor) -> None:
        """Keep a copy of ``tensor`` if it fits in the budget."""
        size = tensor.numel() * tensor.element_size()
        if self.used_bytes + size > self.budget_bytes:
            if not self.full:
                self.full = True
                logger.info(f"clip cache full ({self.used_bytes / 2**20:.0f} MB, {len(self.items)} clips; "
                            f"task.clip_cache_mb={self.budget_bytes / 2**20:g}): further clips are decoded every time")
            return
        self.items[key] = tensor.clone()
        self.used_bytes += size


class FbankDataset(FairseqDataset):
    """Manifest rows -> normalised fbank clips.

    Args:
        manifest_path: ``{split}.tsv`` (root line, then ``relpath<TAB>num_samples``).
        target_length: frames per clip (multiple of 16); clips are zero-padded or cropped.
        norm: fbank statistics: ``"audioset"``, ``"esc50"``, ``"spcv2"``, ``NormStats`` or ``(mean, std)``.
        min_sample_size: rows with fewer native samples are skipped (count and lines logged).
        key: batch key of the fbank in ``net_input`` (``"source"`` pre-training, ``"imgs"`` fine-tuning).
        roll_aug: waveform roll + Beta(10,10)+0.5 gain (training only).
        noise: fbank noise + time roll (training only).
        shuffle: a fresh permutation each epoch (seeded by ``seed`` and the epoch).
        weights_file: one sampling weight per manifest row; each epoch draws ``num_samples`` distinct
            clips with probability proportional to the weights (balanced AudioSet training).
        num_samples: clips drawn per epoch with ``weights_file``.
        seed: seeds shuffling, weighted draws, augmentation and masks (with the epoch and clip index).
        mask_spec: add ``precomputed_mask`` ``(clone_batch, N)`` to each item (see ``BlockMaskSpec``).
        h5_format: manifest paths are ``<file.h5>/<key>`` HDF5 datasets at 32 kHz (``eat_plugin.data.hdf5``).
        skip_bad_clips: a clip that cannot be decoded when it is read (removed, truncated or corrupted after
            the manifest was written) is dropped from its batch with a warning naming it, instead of raising
            (``task.skip_bad_clips``). Never zero-filled; ``num_bad_clips`` counts them (see ``BadClips``).
        resample: resample every clip to 16 kHz (``task.downsr_16hz: true``, what every EAT recipe sets).
            False reads clips at their own rate, as the official code does, so only 16 kHz clips are
            accepted: the fbank is a 16 kHz one, and the official code's fbank of other rates is wrong.
        clip_cache: keep each clip's decoded fbank (or waveform) in this ``ClipCache`` (None: decode every time).

    Items depend only on ``(seed, epoch, index)``, never on the worker that loads them: the epoch lives in
    shared memory, so fairseq's persistent DataLoader workers see ``set_epoch`` too.
    """

    def __init__(
        self,
        manifest_path: PathLike,
        target_length: int = 1024,
        norm: Union[str, NormStats, Tuple[float, float], None] = "audioset",
        min_sample_size: int = 0,
        key: str = "source",
        roll_aug: bool = False,
        noise: bool = False,
        shuffle: bool = False,
        weights_file: Optional[PathLike] = None,
        num_samples: Optional[int] = None,
        seed: int = 1,
        mask_spec: Optional[BlockMaskSpec] = None,
        h5_format: bool = False,
        skip_bad_clips: bool = False,
        resample: bool = True,
        clip_cache: Optional[ClipCache] = None,
    ):
        super().__init__()
        self.front_end = FbankFrontEnd(target_length, norm)
        self.manifest = read_manifest(manifest_path)
        self.key = key
        self.roll_aug = roll_aug
        self.noise = noise
        self.shuffle = shuffle
        self.seed = seed
        self.mask_spec = mask_spec
        self.h5_format = h5_format
        self.resample = resample
        self._epoch = torch.ones(1, dtype=torch.long).share_memory_()  # (1,), shared with DataLoader workers
        self.kept = self._drop_short_rows(min_sample_size)  # manifest row index of each dataset item
        self.weights = self._load_weights(weights_file) if weights_file else None  # (N,) float64
        self.num_samples = self._check_num_samples(num_samples) if self.weights is not None else None
        self.bad_clips = BadClips(len(self)) if skip_bad_clips else None
        self.clip_cache = clip_cache
        self.cache_namespace = f"{self.manifest.path} {self.front_end!r}"  # the cache's keys: + (index, level)

    # ------------------------------------------------------------------ construction helpers
    def _drop_short_rows(self, min_sample_size: int) -> List[int]:
        kept, skipped = [], []
        for i, row in enumerate(self.manifest.rows):
            (kept if row.num_samples >= min_sample_size else skipped).append(i)
        if skipped:
            shown = [f"line {self.manifest.rows[i].line}: {self.manifest.rows[i].relpath}" for i in skipped]
            more = f" ... and {len(skipped) - MAX_LOGGED_SKIPS} more" if len(skipped) > MAX_LOGGED_SKIPS else ""
            logger.warning(
                f"{self.manifest.path}: skipped {len(skipped)} of {len(self.manifest)} clips shorter than "
                f"min_sample_size={min_sample_size} samples: {'; '.join(shown[:MAX_LOGGED_SKIPS])}{more}"
            )
        if not kept:
            raise ManifestError(f"{self.manifest.path}: no clips left after skipping clips shorter than {min_sample_size}")
        return kept

    def _load_weights(self, weights_file: PathLike) -> np.ndarray:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: sampling weights file not found")
        try:
            weights = np.loadtxt(path, dtype=np.float64, ndmin=1)  # (rows,)
        except ValueError as err:
            raise ManifestError(f"{path}: expected one number per line ({err})") from None
        if weights.ndim != 1 or len(weights) != len(self.manifest):
            raise ManifestError(
                f"{path}: has {weights.size} weights but manifest {self.manifest.path} has {len(self.manifest)} "
                f"rows; expected one weight per manifest row"
            )
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ManifestError(f"{path}: weights must be finite and non-negative")
        return weights[self.kept]  # (N,)

    def _check_num_samples(self, num_samples: Optional[int]) -> int:
        available = int((self.weights > 0).sum())
        num_samples = available if num_samples is None else int(num_samples)
        if not 0 < num_samples <= available:
            raise ValueError(
                f"num_samples={num_samples}: a weighted epoch draws distinct clips, so it must be between 1 and "
                f"the {available} clips with a non-zero weight in {self.manifest.path}"
            )
        return num_samples

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.kept)

    def audio_path(self, index: int) -> Path:
        return self.manifest.audio_path(self.kept[index])

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _read(self, relpath: str) -> Tuple[np.ndarray, int]:
        """``(S, C)`` float32 samples and their rate (a file, or a file's HDF5 dataset)."""
        if self.h5_format:
            file_part, h5_key = split_h5_path(relpath)
            return read_h5_audio(self.manifest.root / file_part, h5_key)  # (S, C)
        return read_audio(self.manifest.root / relpath)  # (S, C)

    def _source(self, relpath: str) -> str:
        """A manifest path's name in messages: the file, or the file and its HDF5 key."""
        if self.h5_format:
            file_part, h5_key = split_h5_path(relpath)
            return f"{self.manifest.root / file_part} key {h5_key!r}"
        return str(self.manifest.root / relpath)

    def load_fbank(self, index: int) -> torch.Tensor:
        """Read clip ``index`` and return its ``(1, T, 128)`` fbank; errors name the clip and manifest line."""
        row = self.manifest.rows[self.kept[index]]
        try:
            rng = self._rng(index) if (self.roll_aug or self.noise) else None
            fbank = self._kept(index, "fbank")  # (1, T, 128) when the clip's fbank is in the cache
            if fbank is None:
                wave_16k = self._kept(index, "wave")  # (S16,) when its waveform is
                if wave_16k is None:
                    wave_16k = self.decode(row)  # (S16,)
                    self._keep(index, "wave", wave_16k)
                if self.roll_aug:
                    wave_16k = roll_and_gain(wave_16k, rng)  # (S16,)
                wave_16k = self.transform_wave(index, wave_16k)  # (S16,)
                fbank = self.front_end.features(wave_16k, self._source(row.relpath))  # (1, T, 128)
                self._keep(index, "fbank", fbank)
            if self.noise:
                fbank = noise_and_time_roll(fbank, rng)  # (1, T, 128)
        except (AudioError, FileNotFoundError) as err:
            raise AudioError(f"{self.manifest.path} line {row.line}: {err}") from err
        return fbank

    def decode(self, row) -> torch.Tensor:
        """A manifest row's audio as checked ``(S16,)`` 16 kHz mono float32."""
        wave, sample_rate = self._read(row.relpath)  # (S, C)
        path = self._source(row.relpath)
        if wave.shape[0] != row.num_samples:
            raise AudioError(
                f"{path}: has {wave.shape[0]} samples but the manifest lists {row.num_samples}; "
                f"the file changed or was truncated since the manifest was written"
            )
        if not self.resample and sample_rate != 16000:
            raise AudioError(
                f"{path}: {sample_rate} Hz, but task.downsr_16hz=false reads clips at their own rate and the "
                f"fbank expects 16 kHz; set task.downsr_16hz=true (every EAT recipe does) or resample the data")
        return to_mono_16k(wave, sample_rate, path)  # (S16,)

    # ------------------------------------------------------------------ the clip cache
    @property
    def wave_is_random(self) -> bool:
        """A random step comes before the fbank, so the cache keeps the waveform instead of the fbank."""
        return self.roll_aug

    def _cache_level(self) -> Optional[str]:
        """What the cache keeps of a clip in this process: ``"fbank"``, ``"wave"`` or nothing (None)."""
        if self.clip_cache is None or not self.clip_cache.active:
            return None
        return "wave" if self.wave_is_random else "fbank"

    def _kept(self, index: int, level: str) -> Optional[torch.Tensor]:
        if self._cache_level() != level:
            return None
        return self.clip_cache.get((self.cache_namespace, index, level))

    def _keep(self, index: int, level: str, tensor: torch.Tensor) -> None:
        if self._cache_level() == level:
            self.clip_cache.put((self.cache_namespace, index, level), tensor)

    def transform_wave(self, index: int, wave_16k: torch.Tensor) -> torch.Tensor:
        """A subclass's per-clip waveform transformation (``MachineSoundDataset``); none here."""
        return wave_16k

    def mask_generator(self, index: int) -> torch.Generator:
        """The mask RNG of clip ``index`` this epoch: seeded from ``(seed, epoch, index)`` only."""
        return keyed_generator(self.seed, self.epoch, index, MASK_STREAM)

    def precomputed_mask(self, index: int) -> torch.Tensor:
        """``(clone_batch, N)`` float masks of clip ``index`` (1 = masked); needs ``mask_spec``."""
        return self.mask_spec.sample(self.front_end.target_length, self.mask_generator(index))  # (clone_batch, N)

    @property
    def skip_bad_clips(self) -> bool:
        return self.bad_clips is not None

    @property
    def num_bad_clips(self) -> int:
        """Distinct clips skipped so far as undecodable (0 without ``skip_bad_clips``), in every process."""
        return self.bad_clips.count() if self.bad_clips is not None else 0

    def load_or_skip(self, index: int) -> Optional[torch.Tensor]:
        """``load_fbank(index)``; with ``skip_bad_clips``, None (and a warning naming the clip) if it fails."""
        try:
            return self.load_fbank(index)
        except AudioError as err:
            if self.bad_clips is None:
                err.args = (f"{err} (to skip such clips instead: ++task.skip_bad_clips=true)",)
                raise
            self.bad_clips.mark(index)
            logger.warning(
                f"skipped a clip that cannot be decoded (task.skip_bad_clips=true; bad clips so far in "
                f"{self.manifest.path}: {self.num_bad_clips}): {err}"
            )
            return None

    def __getitem__(self, index: int) -> Optional[Dict]:
        fbank = self.load_or_skip(index)  # (1, T, 128), or None: a skipped bad clip
        if fbank is None:
            return None
        item = {"id": index, self.key: fbank}
        if self.mask_spec is not None:
            item["precomputed_mask"] = self.precomputed_mask(index)  # (clone_batch, N)
        return item

    def collater(self, samples: Sequence[Optional[Dict]]) -> Dict:
        samples = [s for s in samples if s is not None]  # skipped bad clips (skip_bad_clips) are None
        if not samples:
            return {}  # fairseq's trainer runs its dummy batch with the loss multiplied by 0 instead
        ids = [s["id"] for s in samples]
        # the clip ids travel in net_input too, as a list (it stays on the host: no device sync to read it):
        # the models key their random draws on (seed, update, clip id)
        net_input = {self.key: torch.stack([s[self.key] for s in samples]), "id": ids}  # (B, 1, T, 128)
        if self.mask_spec is not None:
            # row b * clone_batch + c = clone c of clip b (the model's repeat_interleave order)
            masks = [s["precomputed_mask"] for s in samples]
            net_input["precomputed_mask"] = torch.cat(masks)  # (B * clone_batch, N)
        return {"id": torch.LongTensor(ids), "net_input": net_input}  # id: (B,)

    # ------------------------------------------------------------------ fairseq batching
    def num_tokens(self, index: int) -> int:
        return 1

    def size(self, index: int) -> int:
        return 1

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch  # in shared memory: persistent DataLoader workers see it too

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return not (self.shuffle or self.weights is not None)

    def ordered_indices(self) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            weights = torch.from_numpy(self.weights)  # (N,)
            return torch.multinomial(weights, self.num_samples, replacement=False, generator=generator).numpy()
        if self.shuffle:
            return torch.randperm(len(self), generator=generator).numpy()
        return np.arange(len(self))


class LabelledFbankDataset(FbankDataset):
    """``FbankDataset`` plus multi-hot label vectors from ``{split}.lbl`` and ``label_descriptors.csv``.

    Args:
        labels_path: ``{split}.lbl``, one line per manifest row (before skipping).
        descriptors: the class table (``read_label_descriptors``).
        multi_label: allow several labels per clip (AudioSet); otherwise exactly one is required.
        **kwargs: ``FbankDataset`` arguments; ``key`` defaults to ``"imgs"``.
    """

    def __init__(
        self,
        manifest_path: PathLike,
        labels_path: PathLike,
        descriptors: LabelDescriptors,
        multi_label: bool = True,
        key: str = "imgs",
        **kwargs,
    ):
        super().__init__(manifest_path, key=key, **kwargs)
        self.descriptors = descriptors
        labels = read_labels(labels_path, descriptors, self.manifest)  # one list per manifest row
        if not multi_label:
            for row, clip_labels in zip(self.manifest.rows, labels):
                if len(clip_labels) != 1:
                    raise ManifestError(
                        f"{labels_path}: the clip of manifest line {row.line} ({row.relpath}) has "
                        f"{len(clip_labels)} labels; a single-label dataset needs exactly one"
                    )
        self.labels = [labels[i] for i in self.kept]  # aligned with the kept rows

    @property
    def num_classes(self) -> int:
        return len(self.descriptors)

    def label_vector(self, index: int) -> torch.Tensor:
        target = torch.zeros(self.num_classes)  # (C,)
        target[self.labels[index]] = 1.0
        return target

    def __getitem__(self, index: int) -> Optional[Dict]:
        fbank = self.load_or_skip(index)  # (1, T, 128), or None: a skipped bad clip
        if fbank is None:
            return None
        return {"id": index, self.key: fbank, "label": self.label_vector(index)}

    def collater(self, samples: Sequence[Optional[Dict]]) -> Dict:
        samples = [s for s in samples if s is not None]
        batch = super().collater(samples)
        if batch:
            batch["net_input"]["label"] = torch.stack([s["label"] for s in samples])  # (B, C)
        return batch


class MachineSoundDataset(LabelledFbankDataset):
    """Machine-sound clips for the semantic heads: fbank (+ masks), the machine id and a transformation.

    The class table of a machine-sound data directory (``scripts/prepare_machine_sounds.py``) has class
    index == machine id, so a clip's machine id is its one label's index. With ``transforms`` each clip
    gets one of the six transformations of ``data.augment.SEMANTIC_TRANSFORMS``, drawn with its
    parameters from ``(seed, epoch, index)`` alone; without, every clip is ``identity`` (id 0).

    ``net_input`` carries ``machine_id`` and ``transformation_id``, both ``(B,)`` int64, besides the fbank
    (``key``, default ``"source"``) and the clip ids; with ``label_vectors`` (fine-tuning) the machine id
    comes as the classifier's one-hot ``label`` ``(B, C)`` instead of ``machine_id``.
    """

    def __init__(self, manifest_path: PathLike, labels_path: PathLike, descriptors: LabelDescriptors,
                 transforms: bool = True, key: str = "source", label_vectors: bool = False, **kwargs):
        super().__init__(manifest_path, labels_path, descriptors, multi_label=False, key=key, **kwargs)
        self.transforms = transforms
        self.label_vectors = label_vectors

    def machine_id(self, index: int) -> int:
        return int(self.labels[index][0])

    def _transform_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, TRANSFORM_STREAM])

    def transformation_id(self, index: int) -> int:
        """The transformation clip ``index`` gets this epoch (0 = identity without ``transforms``)."""
        return draw_transform(self._transform_rng(index)) if self.transforms else 0

    @property
    def wave_is_random(self) -> bool:
        return self.roll_aug or self.transforms

    def transform_wave(self, index: int, wave_16k: torch.Tensor) -> torch.Tensor:
        if not self.transforms:
            return wave_16k
        rng = self._transform_rng(index)
        return apply_transform(wave_16k, draw_transform(rng), rng)  # (S16,)

    def __getitem__(self, index: int) -> Optional[Dict]:
        item = super().__getitem__(index) if self.label_vectors else FbankDataset.__getitem__(self, index)
        if item is not None:
            item.update(machine_id=self.machine_id(index), transformation_id=self.transformation_id(index))
        return item

    def collater(self, samples: Sequence[Optional[Dict]]) -> Dict:
        samples = [s for s in samples if s is not None]
        batch = super().collater(samples) if self.label_vectors else FbankDataset.collater(self, samples)
        if batch and not self.label_vectors:
            batch["net_input"]["machine_id"] = torch.LongTensor([s["machine_id"] for s in samples])  # (B,)
        if batch:
            batch["net_input"]["transformation_id"] = torch.LongTensor([s["transformation_id"] for s in samples])  # (B,)
        return batch
