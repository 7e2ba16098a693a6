"""The ``mae_image_pretraining`` task: EAT pre-training data (reference §2.6, §3.3, §5).

The registry name and every config field are the official ones (released checkpoints store this
config), including fields of the image code EAT inherited from data2vec 2.0. Fields whose feature this
re-implementation does not have raise a ``ValueError`` naming the field when they are set, instead of
being ignored. Features are always 16 kHz Kaldi fbanks (``downsr_16hz`` / ``audio_mae`` are accepted
as the official audio recipes set them; ``input_size`` is the image size of that legacy code: the
input is ``(target_length, 128)``).
"""


import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from eat_plugin.data.datasets import BlockMaskSpec, FbankDataset
from eat_plugin.data.fbank import NORM_STATS, PATCH_FRAMES, NormStats, check_target_length

logger = logging.getLogger(__name__)


@dataclass
class ImageMaskingConfig:
    """Masks computed in the dataset; ``precompute_mask_config: {}`` takes every value from the model."""

    patch_size: int = II("model.modalities.image.patch_size")
    mask_prob: float = II("model.modalities.image.mask_prob")
    mask_prob_adjust: float = II("model.modalities.image.mask_prob_adjust")
    mask_length: int = II("model.modalities.image.mask_length")
    inverse_mask: bool = II("model.modalities.image.inverse_mask")
    mask_dropout: float = II("model.modalities.image.mask_dropout")
    clone_batch: int = II("model.clone_batch")
    expand_adjacent: bool = False  # not implemented: must stay false
    non_overlapping: bool = False  # not implemented: must stay false


@dataclass
class MaeImagePretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    multi_data: Optional[List[str]] = field(default=None, metadata={"help": "not implemented: must be unset"})
    input_size: int = field(default=224, metadata={"help": "legacy image size; unused (input is target_length x 128)"})
    local_cache_path: Optional[str] = field(default=None, metadata={"help": "not implemented: must be unset"})
    key: str = field(default="imgs", metadata={"help": "net_input key of the fbank (pre-training recipes: source)"})
    beit_transforms: bool = field(default=False, metadata={"help": "image-only; must be false"})
    target_transform: bool = field(default=False, metadata={"help": "image-only; must be false"})
    no_transform: bool = field(default=False, metadata={"help": "image-only; audio has no image transforms"})
    rebuild_batches: bool = field(default=True, metadata={"help": "fairseq rebuilds batches every epoch"})
    precompute_mask_config: Optional[ImageMaskingConfig] = field(
        default=None, metadata={"help": "set ({} in YAML) to compute the student masks in the dataset"}
    )
    subsample: float = field(default=1, metadata={"help": "not implemented: must be 1"})
    seed: int = II("common.seed")
    dataset_type: str = field(default="imagefolder", metadata={"help": "only the default is accepted"})
    audio_mae: bool = field(default=False, metadata={"help": "accepted: features are always audio fbanks"})
    h5_format: bool = field(default=False, metadata={"help": "train manifest rows are <file.h5>/<key> at 32 kHz"})
    downsr_16hz: bool = field(default=False, metadata={"help": "accepted: audio is always resampled to 16 kHz"})
    target_length: int = field(default=1024, metadata={"help": "fbank frames per clip, a multiple of 16"})
    flexible_mask: bool = field(default=False, metadata={"help": "not implemented: must be false"})
    esc50_eval: bool = field(default=False, metadata={"help": "normalise with the ESC-50 statistics"})
    spcv2_eval: bool = field(default=False, metadata={"help": "normalise with the Speech Commands v2 statistics"})
    AS2M_finetune: bool = field(default=False, metadata={"help": "balanced sampling of the train split"})
    spcv1_finetune: bool = field(default=False, metadata={"help": "balanced sampling of the train split"})
    roll_aug: bool = field(default=False, metadata={"help": "train: waveform roll + random gain"})
    noise: bool = field(default=False, metadata={"help": "train: fbank noise + time roll"})
    weights_file: str = field(default="", metadata={"help": "one sampling weight per train manifest row"})
    num_samples: int = field(default=200000, metadata={"help": "clips drawn per balanced epoch"})
    is_finetuning: bool = field(default=False, metadata={"help": "deprecated; unused"})
    # --- eat_plugin additions (not in the official config) ---
    min_sample_size: int = field(
        default=10000, metadata={"help": "skip clips with fewer native-rate samples (the official hard-coded cut)"}
    )
    norm_mean: Optional[float] = field(default=None, metadata={"help": "own fbank mean (with norm_std)"})
    norm_std: Optional[float] = field(default=None, metadata={"help": "own fbank std (with norm_mean)"})


# field -> (default that must be kept, what to say). Checked at task setup; nothing is silently ignored.
UNSUPPORTED_TASK_FIELDS = {
    "multi_data": (None, "several data directories are not implemented; concatenate the manifests"),
    "local_cache_path": (None, "the local data cache is not implemented"),
    "beit_transforms": (False, "BEiT image transforms do not apply to audio"),
    "target_transform": (False, "image target transforms do not apply to audio"),
    "subsample": (1, "subsampling the data set is not implemented; write a smaller manifest"),
    "flexible_mask": (False, "flexible block sizes are not implemented"),
    "dataset_type": ("imagefolder", "the only data set type is the audio manifest one ('imagefolder')"),
}
UNSUPPORTED_MASK_FIELDS = {
    "expand_adjacent": (False, "expand_adjacent masking is not implemented"),
    "non_overlapping": (False, "non-overlapping masking is not implemented"),
    "mask_dropout": (0, "mask dropout is not implemented (EAT uses 0)"),
}


def _check_unsupported(cfg: Any, fields: Dict[str, tuple], prefix: str) -> None:
    """Raise naming the first field of ``fields`` that differs from its required default."""
    for name, (default, reason) in fields.items():
        value = getattr(cfg, name)
        if value != default:
            raise ValueError(f"{prefix}.{name}={value!r} is not supported: {reason}; expected {default!r}")


def norm_stats(cfg: MaeImagePretrainingConfig) -> NormStats:
    """AudioSet statistics, ESC-50 with ``esc50_eval``, SPCv2 with ``spcv2_eval``, or ``norm_mean``/``norm_std``."""
    if cfg.esc50_eval and cfg.spcv2_eval:
        raise ValueError("task.esc50_eval and task.spcv2_eval are both true; set at most one")
    if (cfg.norm_mean is None) != (cfg.norm_std is None):
        missing = "norm_std" if cfg.norm_std is None else "norm_mean"
        raise ValueError(f"task.{missing} is unset: give both task.norm_mean and task.norm_std, or neither")
    if cfg.norm_mean is not None:
        if cfg.esc50_eval or cfg.spcv2_eval:
            flag = "esc50_eval" if cfg.esc50_eval else "spcv2_eval"
            raise ValueError(f"task.norm_mean/norm_std and task.{flag} both choose the statistics; set one")
        mean, std = float(cfg.norm_mean), float(cfg.norm_std)
        if not math.isfinite(mean):
            raise ValueError(f"task.norm_mean={cfg.norm_mean!r}: expected a finite number")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"task.norm_std={cfg.norm_std!r}: expected a finite positive number")
        return NormStats(mean, std)
    if cfg.esc50_eval:
        return NORM_STATS["esc50"]
    if cfg.spcv2_eval:
        return NORM_STATS["spcv2"]
    return NORM_STATS["audioset"]


def block_mask_spec(mask_cfg: Optional[ImageMaskingConfig]) -> Optional[BlockMaskSpec]:
    """``precompute_mask_config`` -> ``BlockMaskSpec`` (None when masks are computed in the model)."""
    if mask_cfg is None:
        return None
    prefix = "task.precompute_mask_config"
    _check_unsupported(mask_cfg, UNSUPPORTED_MASK_FIELDS, prefix)
    if mask_cfg.patch_size != PATCH_FRAMES:
        raise ValueError(
            f"{prefix}.patch_size={mask_cfg.patch_size!r} (model.modalities.image.patch_size) is not supported: "
            f"the fbank patch grid is {PATCH_FRAMES}x{PATCH_FRAMES}"
        )
    try:
        return BlockMaskSpec(
            clone_batch=mask_cfg.clone_batch,
            mask_prob=float(mask_cfg.mask_prob),
            mask_prob_adjust=float(mask_cfg.mask_prob_adjust),
            mask_length=mask_cfg.mask_length,
            inverse_mask=bool(mask_cfg.inverse_mask),
        )
    except ValueError as err:
        raise ValueError(f"{prefix}.{err}") from None


def check_config(cfg: MaeImagePretrainingConfig) -> None:
    """Start-up validation: every problem is a ``ValueError`` naming the ``task.*`` field."""
    check_target_length(cfg.target_length, "task.target_length")
    _check_unsupported(cfg, UNSUPPORTED_TASK_FIELDS, "task")
    if cfg.min_sample_size < 0:
        raise ValueError(f"task.min_sample_size={cfg.min_sample_size}: expected a non-negative sample count")
    if (cfg.AS2M_finetune or cfg.spcv1_finetune) and not cfg.weights_file:
        flag = "AS2M_finetune" if cfg.AS2M_finetune else "spcv1_finetune"
        raise ValueError(f"task.{flag}=true samples the train split by weight: set task.weights_file")
    if cfg.num_samples < 1:
        raise ValueError(f"task.num_samples={cfg.num_samples}: expected a positive number of clips per epoch")
    norm_stats(cfg)
    block_mask_spec(cfg.precompute_mask_config)


def is_train_split(split: str) -> bool:
    """The split that gets augmentation, shuffling, weighted sampling and HDF5 input: ``train*``."""
    return split.startswith("train")


@register_task("mae_image_pretraining", dataclass=MaeImagePretrainingConfig)
class MaeImagePretrainingTask(FairseqTask):
    """Unlabelled fbank clips (+ precomputed masks) from ``{data}/{split}.tsv``."""

    cfg: MaeImagePretrainingConfig

    def __init__(self, cfg: MaeImagePretrainingConfig):
        check_config(cfg)
        super().__init__(cfg)
        if cfg.weights_file and not (cfg.AS2M_finetune or cfg.spcv1_finetune):
            logger.info(f"task.weights_file={cfg.weights_file} is unused: AS2M_finetune and spcv1_finetune are false")

    @classmethod
    def setup_task(cls, cfg: MaeImagePretrainingConfig, **kwargs) -> "MaeImagePretrainingTask":
        return cls(cfg)

    def dataset_kwargs(self, split: str) -> Dict[str, Any]:
        """``FbankDataset`` arguments for ``split`` (shared with the fine-tuning task)."""
        cfg, train = self.cfg, is_train_split(split)
        weighted = train and (cfg.AS2M_finetune or cfg.spcv1_finetune)
        return dict(
            manifest_path=Path(cfg.data) / f"{split}.tsv",
            target_length=cfg.target_length,
            norm=norm_stats(cfg),
            min_sample_size=cfg.min_sample_size,
            key=cfg.key,
            roll_aug=train and cfg.roll_aug,
            noise=train and cfg.noise,
            shuffle=train,
            weights_file=cfg.weights_file if weighted else None,
            num_samples=cfg.num_samples if weighted else None,
            seed=cfg.seed,
            mask_spec=block_mask_spec(cfg.precompute_mask_config),
            h5_format=train and cfg.h5_format,
        )

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> FbankDataset:
        self.datasets[split] = dataset = FbankDataset(**self.dataset_kwargs(split))
        logger.info(f"{split}: {len(dataset)} clips from {dataset.manifest.path}, {dataset.front_end}")
        return dataset

    def max_positions(self) -> None:
        return None  # every clip is cropped/padded to target_length: nothing to filter

    @property
    def source_dictionary(self) -> None:
        return None

    @property
    def target_dictionary(self) -> None:
        return None
