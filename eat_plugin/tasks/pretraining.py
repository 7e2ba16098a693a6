"""The ``mae_image_pretraining`` task: EAT pre-training data (reference §2.6, §3.3, §5).

The registry name and every config field are the official ones (released checkpoints store this
config), including fields of the image code EAT inherited from data2vec 2.0. Fields whose feature this
re-implementation does not have raise a ``ValueError`` naming the field when they are set, instead of
being ignored (the one table: ``eat_plugin.official_fields``). Features are 16 kHz Kaldi fbanks:
``audio_mae`` must be true (false is the official image pipeline), ``downsr_16hz: true`` resamples
(false accepts 16 kHz clips only, which the official code reads unchanged); ``input_size`` is the
image size of that legacy code: the input is ``(target_length, 128)``.
"""


import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from eat_plugin.data.datasets import BlockMaskSpec, ClipCache, FbankDataset
from eat_plugin.data.fbank import training_norm_stats
from eat_plugin.diagnostics import chance_loss, check_initial_loss, parameters_without_grad
from eat_plugin.layout import PATCH_FRAMES, check_target_length
from eat_plugin.tasks.faults import TrainingFaults
from eat_plugin.official_fields import TASK, check_refused

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
    audio_mae: bool = field(default=False, metadata={"help": "must be true: false is the official image-folder "
                                                             "pipeline; every EAT recipe sets true"})
    h5_format: bool = field(default=False, metadata={"help": "train manifest rows are <file.h5>/<key> at 32 kHz"})
    downsr_16hz: bool = field(default=False, metadata={"help": "resample clips to 16 kHz (every EAT recipe: true); "
                                                               "false accepts 16 kHz clips only"})
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
    skip_bad_clips: bool = field(
        default=False,
        metadata={"help": "a clip that cannot be decoded when read (removed or corrupted after the manifest was "
                          "written) is skipped with a warning naming it and counted as bad_clips in the training "
                          "log, instead of stopping the run; never zero-filled"},
    )
    clip_cache_mb: float = field(
        default=1024,
        metadata={"help": "keep up to this many MB of decoded clips (each clip's fbank, or its 16 kHz waveform "
                          "where roll_aug / transformations come first) in memory, so each clip is read and "
                          "transformed once per run instead of once per epoch; the same items as without. "
                          "Only the training process caches: with dataset.num_workers > 0 the workers decode "
                          "in parallel and keep nothing. 0 turns it off"},
    )


def block_mask_spec(mask_cfg: Optional[ImageMaskingConfig]) -> Optional[BlockMaskSpec]:
    """``precompute_mask_config`` -> ``BlockMaskSpec`` (None when masks are computed in the model)."""
    if mask_cfg is None:
        return None
    prefix = "task.precompute_mask_config"
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
    check_refused(TASK, cfg, "task")
    if cfg.min_sample_size < 0:
        raise ValueError(f"task.min_sample_size={cfg.min_sample_size}: expected a non-negative sample count")
    if (cfg.AS2M_finetune or cfg.spcv1_finetune) and not cfg.weights_file:
        flag = "AS2M_finetune" if cfg.AS2M_finetune else "spcv1_finetune"
        raise ValueError(f"task.{flag}=true samples the train split by weight: set task.weights_file")
    if cfg.num_samples < 1:
        raise ValueError(f"task.num_samples={cfg.num_samples}: expected a positive number of clips per epoch")
    training_norm_stats(cfg)
    block_mask_spec(cfg.precompute_mask_config)


def run_config(cfg: Any) -> Optional[Any]:
    """The whole run's config that ``cfg`` (``task`` or ``model``) sits in, if fairseq built it that way."""
    parent = getattr(cfg, "_get_parent", lambda: None)()
    return parent if parent is not None and "checkpoint" in parent else None


def check_run_options(run: Any) -> None:
    """The training options of the run around the task, checked at start-up: one message per problem."""
    problems = []
    optimization, dataset = run.get("optimization") or {}, run.get("dataset") or {}
    for i, lr in enumerate(optimization.get("lr") or []):
        if not lr > 0:
            problems.append(f"optimization.lr[{i}]={lr!r}: expected a learning rate > 0")
    groups = ((run.get("optimizer") or {}).get("groups") or {})
    for name in groups:
        lr = groups[name].get("lr_float")
        if lr is not None and not lr > 0:
            problems.append(f"optimizer.groups.{name}.lr_float={lr!r}: expected a learning rate > 0")
    for i, freq in enumerate(optimization.get("update_freq") or []):
        if not freq >= 1:
            problems.append(f"optimization.update_freq[{i}]={freq!r}: expected at least 1 batch per update")
    if (optimization.get("clip_norm") or 0) < 0:
        problems.append(f"optimization.clip_norm={optimization.get('clip_norm')!r}: expected >= 0 (0: no clipping)")
    for key in ("batch_size", "batch_size_valid"):
        if dataset.get(key) is not None and not dataset.get(key) >= 1:
            problems.append(f"dataset.{key}={dataset.get(key)!r}: expected at least 1 clip")
    if problems:
        raise ValueError("invalid training options:\n  " + "\n  ".join(problems))


def classification_losses(model, logging_output: Dict[str, Any], sample_size) -> Dict[str, Tuple[float, int]]:
    """``{name: (mean cross-entropy, classes)}`` of the model's classification heads in a logging output:
    a single-label classifier's loss (its own term when the transformation head adds one), and the semantic
    heads' plain CEs."""
    heads = {}
    cfg = getattr(model, "cfg", None)
    if getattr(model, "single_label", False) and sample_size:
        classifier = logging_output.get("loss_regression", logging_output["loss"])  # (sum over the clips)
        heads["loss"] = (float(classifier) / float(sample_size), int(cfg.num_classes))
    semantic = getattr(model, "semantic_heads", None)
    for name in ("machine_id", "transform"):
        head = getattr(semantic, name, None) if semantic is not None else None
        if head is not None and f"{name}_ce" in logging_output:
            heads[f"{name}_ce"] = (float(logging_output[f"{name}_ce"]), int(head[-1].out_features))
    return heads


def first_update_report(model, logging_output: Dict[str, Any], sample_size) -> None:
    """Note 002's sanity checks, once: each classification head's first loss beside its chance value
    ``ln K`` (a warning when far off), and the trainable parameters that got no gradient."""
    for name, (value, classes) in classification_losses(model, logging_output, sample_size).items():
        warning = check_initial_loss(name, value, classes)
        if warning:
            logger.warning(f"first update: {warning}")
        else:
            logger.info(f"first update: {name} {value:.3f}, chance ln {classes} = {chance_loss(classes):.3f}")
    missing = parameters_without_grad(model)
    semantic_phase_one = (getattr(model, "semantic_heads", None) is not None
                          and getattr(model, "num_updates", 0) < getattr(model.cfg, "semantic_start_update", 0))
    if semantic_phase_one:  # the heads' terms are 0 until semantic_start_update: no gradient is expected
        missing = [name for name in missing if not name.startswith("semantic_heads.")]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        logger.warning(f"first update: {len(missing)} trainable parameters got no gradient (an unused branch or a "
                       f"detached path?): {shown}")


def is_train_split(split: str) -> bool:
    """The split that gets augmentation, shuffling, weighted sampling and HDF5 input: ``train*``."""
    return split.startswith("train")


@register_task("mae_image_pretraining", dataclass=MaeImagePretrainingConfig)
class MaeImagePretrainingTask(FairseqTask):
    """Unlabelled fbank clips (+ precomputed masks) from ``{data}/{split}.tsv``."""

    cfg: MaeImagePretrainingConfig

    def __init__(self, cfg: MaeImagePretrainingConfig):
        check_config(cfg)
        if run_config(cfg) is not None:
            check_run_options(run_config(cfg))
        super().__init__(cfg)
        self.faults = TrainingFaults(self)  # NaN/Inf stops name the update and its clips; bad_clips count
        self.clip_cache = ClipCache(cfg.clip_cache_mb)  # one budget for all splits (data.datasets.ClipCache)
        if cfg.clip_cache_mb > 0:
            logger.info(f"clip cache: up to {cfg.clip_cache_mb:g} MB of decoded clips kept in the training process "
                        f"(not in DataLoader workers); task.clip_cache_mb=0 turns it off")
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
            norm=training_norm_stats(cfg),
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
            resample=cfg.downsr_16hz,
            skip_bad_clips=cfg.skip_bad_clips,
            clip_cache=self.clip_cache,
        )

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> FbankDataset:
        self.datasets[split] = dataset = FbankDataset(**self.dataset_kwargs(split))
        logger.info(f"{split}: {len(dataset)} clips from {dataset.manifest.path}, {dataset.front_end}")
        return dataset

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's step; remembers the batch's clip ids for a NaN/Inf report (``eat_plugin.tasks.faults``);
        after the first real backward, the loss guide's sanity checks (``first_update_report``)."""
        self.faults.before_train_step(sample, update_num, ignore_grad)
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad)
        if not ignore_grad and not getattr(self, "_first_update_checked", False):
            self._first_update_checked = True
            first_update_report(getattr(model, "module", model), logging_output, sample_size)
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        self.faults.after_reduce_metrics()  # a non-finite training loss stops the run, naming the clips

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq's iterator, without its shuffling of the batch list: the dataset already draws a fresh
        clip order every epoch (``ordered_indices``), and a second shuffle over batches would make the clips
        of an update depend on the batch size, so 2 ranks x b clips would not see what 1 x 2b clips sees."""
        iterator = super().get_batch_iterator(dataset, *args, **kwargs)
        iterator.disable_shuffling = True
        return iterator

    def max_positions(self) -> None:
        return None  # every clip is cropped/padded to target_length: nothing to filter

    @property
    def source_dictionary(self) -> None:
        return None

    @property
    def target_dictionary(self) -> None:
        return None
