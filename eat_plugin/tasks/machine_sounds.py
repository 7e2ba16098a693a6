"""``machine_sounds`` task: EAT pre-training on machine sounds with note 003's semantic heads.

The data directory is what ``scripts/prepare_machine_sounds.py`` writes: the usual manifests, ``.lbl``
files whose label is the clip's machine id (``id_04``, ``section_00``) and a class table whose class
index IS the machine id (ids {0, 2, 4, 6}: 7 rows). Each clip of a ``train*`` / ``valid*`` split also gets
one of six transformations (``task.transforms``; test splits never do), so the model can learn both the
machine id and the transformation besides the SSL losses (``model.lambda_machine_id`` /
``model.lambda_transform``, from ``model.semantic_start_update``).

The machine-id head is sized ``max(model.num_machine_ids, largest machine id in the training split + 1)``;
the size is logged. Everything else (masks, front end, sampling) is ``mae_image_pretraining``'s.

``machine_sounds_classification`` is the fine-tuning side (note 003's phase 2 on a fine-tuned encoder):
``mae_image_classification`` on the same data directory, single-label, the classifier's classes are the
machine ids (class index == id), and each train / valid clip gets one of the six transformations with its
``transformation_id`` in ``net_input`` for the model's transformation head (``model.lambda_transform``).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fairseq.tasks import register_task
from omegaconf import open_dict

from eat_plugin.data.datasets import MachineSoundDataset
from eat_plugin.data.manifest import read_label_descriptors, read_labels, read_manifest
from eat_plugin.tasks.classification import MaeImageClassificationConfig, MaeImageClassificationTask
from eat_plugin.tasks.pretraining import MaeImagePretrainingConfig, MaeImagePretrainingTask

logger = logging.getLogger(__name__)


@dataclass
class MachineSoundsConfig(MaeImagePretrainingConfig):
    transforms: bool = field(
        default=True, metadata={"help": "give each train / valid clip one of the six transformations of the "
                                        "transform task (test splits never)"})
    label_descriptors: str = field(
        default="label_descriptors.csv", metadata={"help": "class table in task.data: class index == machine id"})
    train_subset: str = field(default="train", metadata={"help": "the split the machine ids are counted in"})


@register_task("machine_sounds", dataclass=MachineSoundsConfig)
class MachineSoundsTask(MaeImagePretrainingTask):
    cfg: MachineSoundsConfig

    def __init__(self, cfg: MachineSoundsConfig):
        super().__init__(cfg)
        self.descriptors = read_label_descriptors(Path(cfg.data) / cfg.label_descriptors)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> MachineSoundDataset:
        transforms = self.cfg.transforms and not split.startswith("test")
        self.datasets[split] = dataset = MachineSoundDataset(
            labels_path=Path(self.cfg.data) / f"{split}.lbl", descriptors=self.descriptors, transforms=transforms,
            **self.dataset_kwargs(split))
        logger.info(f"{split}: {len(dataset)} clips from {dataset.manifest.path}, {dataset.front_end}, "
                    f"transformations {'on' if transforms else 'off'}")
        return dataset

    def machine_ids_in_training(self) -> int:
        """The largest machine id of the training split + 1 (the head's minimum size)."""
        data = Path(self.cfg.data)
        manifest = read_manifest(data / f"{self.cfg.train_subset}.tsv")
        labels = read_labels(data / f"{self.cfg.train_subset}.lbl", self.descriptors, manifest)
        return 1 + max(index for clip in labels for index in clip)

    def build_model(self, cfg, from_checkpoint: bool = False):
        if getattr(cfg, "lambda_machine_id", 0) > 0 and not from_checkpoint:
            needed = self.machine_ids_in_training()
            with open_dict(cfg):
                cfg.num_machine_ids = max(cfg.num_machine_ids, needed)
            logger.info(f"machine-id head: {cfg.num_machine_ids} outputs (largest machine id in "
                        f"{self.cfg.train_subset} + 1 = {needed})")
        return super().build_model(cfg, from_checkpoint)


@dataclass
class MachineSoundsClassificationConfig(MaeImageClassificationConfig):
    transforms: bool = field(
        default=True, metadata={"help": "give each train / valid clip one of the six transformations of the "
                                        "transform task (test splits never)"})
    label_type: str = field(
        default="single", metadata={"help": "single (one machine id per clip); auto reads summary.json"})


@register_task("machine_sounds_classification", dataclass=MachineSoundsClassificationConfig)
class MachineSoundsClassificationTask(MaeImageClassificationTask):
    """Fine-tuning on the machine ids (the classifier) + the transformation ids (``model.lambda_transform``)."""

    cfg: MachineSoundsClassificationConfig

    def __init__(self, cfg: MachineSoundsClassificationConfig):
        super().__init__(cfg)
        if self.multi_label:
            raise ValueError(f"task.label_type={cfg.label_type!r} makes {cfg.data} multi-label; the machine ids are "
                             f"one label per clip (task.label_type=single)")

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> MachineSoundDataset:
        transforms = self.cfg.transforms and not split.startswith("test")
        self.datasets[split] = dataset = MachineSoundDataset(
            labels_path=Path(self.cfg.data) / f"{split}.{self.cfg.labels}", descriptors=self.label_descriptors,
            transforms=transforms, label_vectors=True, **self.dataset_kwargs(split))
        logger.info(f"{split}: {len(dataset)} clips from {dataset.manifest.path}, {self.num_classes} machine-id "
                    f"classes, {dataset.front_end}, transformations {'on' if transforms else 'off'}")
        return dataset
