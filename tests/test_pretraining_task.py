"""The ``mae_image_pretraining`` task: official config fields, validation, normalisation, precomputed
masks, weighted sampling, HDF5 input and the pre-training recipes."""

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fairseq import tasks as fairseq_tasks
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask
from omegaconf import OmegaConf

from conftest import REPO, broadband, write_wav
from eat_plugin.data.datasets import BlockMaskSpec, FbankDataset
from eat_plugin.data.fbank import NORM_STATS, AudioError, FbankFrontEnd, NormStats
from eat_plugin.data.hdf5 import split_h5_path
from eat_plugin.data.manifest import Clip, write_split
from eat_plugin.tasks.pretraining import ImageMaskingConfig, MaeImagePretrainingConfig, MaeImagePretrainingTask
from helpers import official_defaults, plugin_names, recipe_strings
from helpers.official import PRETRAINING_TASK

RECIPES = REPO / "config" / "pretraining"
LOG_KEYS = ["ema_decay", "target_var", "pred_var", "model_norm", "ema_norm", "masked_pct"]  # official criterion
SECONDS = [0.7, 1.0, 0.9]  # 11200, 16000, 14400 samples at 16 kHz: all above min_sample_size 10000

# every official field of the pre-training task config and its official default (the official field table)
OFFICIAL_DEFAULTS = {k: v for k, v in official_defaults(PRETRAINING_TASK).items() if k not in ("_name", "data", "seed")}
# reference §2.6: ImageMaskingConfig, interpolated from the model config (not in the field table: a nested type)
MASK_INTERPOLATIONS = dict(
    patch_size="${model.modalities.image.patch_size}", mask_prob="${model.modalities.image.mask_prob}",
    mask_prob_adjust="${model.modalities.image.mask_prob_adjust}", mask_length="${model.modalities.image.mask_length}",
    inverse_mask="${model.modalities.image.inverse_mask}", mask_dropout="${model.modalities.image.mask_dropout}",
    clone_batch="${model.clone_batch}", expand_adjacent=False, non_overlapping=False,
)
MASK = dict(patch_size=16, mask_prob=0.8, mask_prob_adjust=0.07, mask_length=5, inverse_mask=True, mask_dropout=0.0,
            clone_batch=3, expand_adjacent=False, non_overlapping=False)


def make_data(root: Path, seconds=SECONDS, split: str = "train") -> Path:
    clips = []
    for i, sec in enumerate(seconds):
        write_wav(root / "audio" / f"{split}{i}.wav", broadband(sec, seed=i), 16000)
        clips.append(Clip(f"{split}{i}.wav", int(sec * 16000)))
    write_split(root, split, root / "audio", clips, with_labels=False)
    return root


def task_cfg(data: Path, **overrides):
    """A task config node with concrete values where the official config interpolates."""
    values = dict(data=str(data), seed=1, key="source", target_length=64, audio_mae=True, downsr_16hz=True)
    values.update(overrides)
    return OmegaConf.merge(OmegaConf.structured(MaeImagePretrainingConfig), values)


def make_task(data: Path, **overrides) -> MaeImagePretrainingTask:
    return MaeImagePretrainingTask.setup_task(task_cfg(data, **overrides))


# ------------------------------------------------------------------------------------- config


def test_official_fields_and_defaults():
    fields = {f.name: f for f in dataclasses.fields(MaeImagePretrainingConfig)}
    for name, default in OFFICIAL_DEFAULTS.items():
        assert fields[name].default == default, name
    node = OmegaConf.structured(MaeImagePretrainingConfig)
    assert OmegaConf.is_missing(node, "data")
    assert OmegaConf.to_container(node)["seed"] == "${common.seed}"
    masks = OmegaConf.to_container(OmegaConf.structured(ImageMaskingConfig))
    assert masks == MASK_INTERPOLATIONS
    ours = set(fields) - set(OFFICIAL_DEFAULTS) - {"data", "seed", "_name"}
    assert ours == plugin_names(PRETRAINING_TASK)
    # the official dataset skips clips under 10000 samples (golden README); the other additions are off by default
    assert [fields[n].default for n in ("min_sample_size", "norm_mean", "norm_std", "skip_bad_clips")] == [
        10000, None, None, False]


def test_every_official_field_is_accepted(tmp_path):
    data = make_data(tmp_path)
    every = dict(OFFICIAL_DEFAULTS, data=str(data), seed=5, key="source", target_length=64, input_size=128,
                 no_transform=True, rebuild_batches=False, precompute_mask_config=MASK, audio_mae=True,
                 downsr_16hz=True, roll_aug=True, noise=True, is_finetuning=True, weights_file="unused.csv")
    task = MaeImagePretrainingTask.setup_task(OmegaConf.merge(OmegaConf.structured(MaeImagePretrainingConfig), every))
    dataset = task.load_dataset("train")
    assert (dataset.seed, dataset.roll_aug, dataset.noise, dataset.weights) == (5, True, True, None)
    assert task.max_positions() is None and task.source_dictionary is None and task.target_dictionary is None


def test_mask_config_interpolates_from_the_model_and_registers_with_fairseq(tmp_path):
    data = make_data(tmp_path)
    root = OmegaConf.create({
        "common": {"seed": 7},
        "model": {"clone_batch": 4, "modalities": {"image": {
            "patch_size": 16, "mask_prob": 0.75, "mask_prob_adjust": 0.1, "mask_length": 5,
            "inverse_mask": True, "mask_dropout": 0.0}}},
    })
    root.task = OmegaConf.merge(OmegaConf.structured(MaeImagePretrainingConfig),
                                {"_name": "mae_image_pretraining", "data": str(data), "target_length": 64,
                                 "precompute_mask_config": {}, "audio_mae": True})
    task = fairseq_tasks.setup_task(root.task)
    assert isinstance(task, MaeImagePretrainingTask)
    dataset = task.load_dataset("train")
    assert dataset.seed == 7
    assert dataset.mask_spec == BlockMaskSpec(clone_batch=4, mask_prob=0.75, mask_prob_adjust=0.1, mask_length=5,
                                              inverse_mask=True)


@pytest.mark.parametrize("field, value", [
    ("multi_data", ["a", "b"]), ("local_cache_path", "cache"), ("beit_transforms", True),
    ("target_transform", True), ("subsample", 0.5), ("flexible_mask", True), ("dataset_type", "other"),
])
def test_unsupported_task_fields_raise_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"task\.{field}=.* is not supported"):
        make_task(tmp_path, **{field: value})


@pytest.mark.parametrize("field, value", [
    ("expand_adjacent", True), ("non_overlapping", True), ("mask_dropout", 0.1), ("patch_size", 8),
])
def test_unsupported_mask_fields_raise_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"task\.precompute_mask_config\.{field}=.* is not supported"):
        make_task(tmp_path, precompute_mask_config=dict(MASK, **{field: value}))


def test_bad_values_raise_at_setup_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="task.target_length=100 is not a positive multiple of 16"):
        make_task(tmp_path, target_length=100)
    with pytest.raises(ValueError, match=r"task\.precompute_mask_config\.mask_prob=1\.0"):
        make_task(tmp_path, precompute_mask_config=dict(MASK, mask_prob=1.0))
    with pytest.raises(ValueError, match=r"task\.AS2M_finetune=true .* set task\.weights_file"):
        make_task(tmp_path, AS2M_finetune=True)
    with pytest.raises(ValueError, match="task.min_sample_size=-1"):
        make_task(tmp_path, min_sample_size=-1)


# ------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("flags, stats", [
    ({}, NORM_STATS["audioset"]),
    ({"esc50_eval": True}, NORM_STATS["esc50"]),
    ({"spcv2_eval": True}, NORM_STATS["spcv2"]),
    ({"norm_mean": -5.0, "norm_std": 3.0}, NormStats(-5.0, 3.0)),
])
def test_normalisation_follows_flags_and_user_stats(tmp_path, flags, stats):
    data = make_data(tmp_path)
    dataset = make_task(data, **flags).load_dataset("train")
    expected = FbankFrontEnd(64, stats).from_file(data / "audio" / "train1.wav")
    torch.testing.assert_close(dataset.load_fbank(1), expected, rtol=0, atol=0)


@pytest.mark.parametrize("flags, message", [
    ({"esc50_eval": True, "spcv2_eval": True}, "esc50_eval and task.spcv2_eval are both true"),
    ({"norm_mean": -5.0}, "task.norm_std is unset"),
    ({"norm_std": 3.0}, "task.norm_mean is unset"),
    ({"norm_mean": -5.0, "norm_std": 0.0}, r"task.norm_std=0.0: expected a finite positive number"),
    ({"norm_mean": -5.0, "norm_std": 3.0, "esc50_eval": True}, "norm_mean/norm_std and task.esc50_eval"),
])
def test_normalisation_conflicts(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        make_task(tmp_path, **flags)


# ------------------------------------------------------------------------------------- splits


def test_train_split_augments_shuffles_and_samples_by_weight(tmp_path):
    data = make_data(tmp_path)
    make_data(tmp_path, split="eval")
    np.savetxt(data / "weights.csv", [1.0, 0.0, 2.0])
    task = make_task(data, roll_aug=True, noise=True, AS2M_finetune=True, weights_file=str(data / "weights.csv"),
                     num_samples=2)
    train, evaluation = task.load_dataset("train"), task.load_dataset("eval")
    assert (train.roll_aug, train.noise, train.shuffle) == (True, True, True)
    assert (evaluation.roll_aug, evaluation.noise, evaluation.shuffle) == (False, False, False)
    assert evaluation.weights is None
    assert train.weights.tolist() == [1.0, 0.0, 2.0] and train.num_samples == 2
    for epoch in range(1, 6):
        train.set_epoch(epoch)
        assert sorted(train.ordered_indices().tolist()) == [0, 2]  # 2 distinct clips, never the zero weight
    assert evaluation.ordered_indices().tolist() == [0, 1, 2]
    unweighted = make_task(data, weights_file=str(data / "weights.csv")).load_dataset("train")
    assert unweighted.weights is None  # weights_file alone (as official fine-tuning YAML sets it) samples nothing


def test_one_clip_cache_serves_every_split_of_a_task(tmp_path):
    """task.clip_cache_mb: one budget shared by the task's splits (default 1024 MB), 0 turns it off."""
    data = make_data(tmp_path)
    make_data(tmp_path, split="eval")
    task = make_task(data, target_length=64)
    train, evaluation = task.load_dataset("train"), task.load_dataset("eval")
    assert train.clip_cache is evaluation.clip_cache is task.clip_cache
    assert task.clip_cache.budget_bytes == 1024 * 2**20
    train[0], evaluation[0], evaluation[1]
    assert sorted((index, level) for _, index, level in task.clip_cache.items) == [(0, "fbank")] * 2 + [(1, "fbank")]
    assert task.clip_cache.used_bytes == 3 * 64 * 128 * 4
    off = make_task(data, target_length=64, clip_cache_mb=0)
    off.load_dataset("train")[0]
    assert off.clip_cache.items == {}
    with pytest.raises(ValueError, match=r"task.clip_cache_mb=-5(\.0)?: expected megabytes >= 0"):
        make_task(data, clip_cache_mb=-5)


def test_min_sample_size_skips_short_clips(tmp_path):
    data = make_data(tmp_path, seconds=[0.7, 0.3, 1.0])  # 4800 samples < 10000
    assert len(make_task(data).load_dataset("train")) == 2
    assert len(make_task(data, min_sample_size=0).load_dataset("train")) == 3


# -------------------------------------------------------------------------------------- masks


def test_masks_keep_exactly_102_of_512_patches_at_1024_frames(tmp_path):
    data = make_data(tmp_path, seconds=[0.7])
    task = make_task(data, target_length=1024, precompute_mask_config=dict(MASK, clone_batch=4))
    dataset = task.load_dataset("train")
    mask = dataset[0]["precomputed_mask"]
    assert mask.shape == (4, 512) and mask.dtype == torch.float32
    assert ((1 - mask).sum(dim=1) == 102).all()  # int(512 * (1 - 0.8)) visible per clone
    assert len({tuple(row.tolist()) for row in mask}) == 4  # independent clones


def test_masks_collate_in_clip_order(tmp_path):
    data = make_data(tmp_path)
    dataset = make_task(data, precompute_mask_config=MASK).load_dataset("train")
    items = [dataset[i] for i in (2, 0)]
    batch = dataset.collater(items)
    assert set(batch["net_input"]) == {"source", "id", "precomputed_mask"}
    assert batch["net_input"]["source"].shape == (2, 1, 64, 128)
    mask = batch["net_input"]["precomputed_mask"]
    assert mask.shape == (2 * 3, 4 * 8)
    assert ((1 - mask).sum(dim=1) == int(32 * 0.2)).all()
    for b, item in enumerate(items):
        for c in range(3):
            assert torch.equal(mask[b * 3 + c], item["precomputed_mask"][c])  # row b * clones + c


def test_masks_depend_only_on_seed_epoch_and_index(tmp_path):
    data = make_data(tmp_path)
    dataset = make_task(data, precompute_mask_config=MASK).load_dataset("train")
    again = make_task(data, precompute_mask_config=MASK).load_dataset("train")
    first = dataset.precomputed_mask(1)
    assert torch.equal(first, dataset[1]["precomputed_mask"])
    assert torch.equal(first, again.precomputed_mask(1))
    assert not torch.equal(first, dataset.precomputed_mask(0))
    dataset.set_epoch(2)
    assert not torch.equal(first, dataset.precomputed_mask(1))
    other_seed = make_task(data, seed=2, precompute_mask_config=MASK).load_dataset("train")
    assert not torch.equal(first, other_seed.precomputed_mask(1))
    no_masks = make_task(data).load_dataset("train")
    assert "precomputed_mask" not in no_masks[0]
    assert "precomputed_mask" not in no_masks.collater([no_masks[0]])["net_input"]


def collect_masks(dataset: FbankDataset, num_workers: int, epochs: int = 2) -> dict:
    """``{(epoch, clip id): (clones, N) mask}`` from one fairseq iterator over ``epochs`` epochs."""
    iterator = FairseqTask(FairseqDataclass()).get_batch_iterator(
        dataset, max_sentences=2, num_workers=num_workers, seed=1, disable_iterator_cache=True
    )
    masks = {}
    for _ in range(epochs):
        epoch_itr = iterator.next_epoch_itr(shuffle=True)
        for batch in epoch_itr:
            rows = batch["net_input"]["precomputed_mask"].view(len(batch["id"]), MASK["clone_batch"], -1)
            for clip_id, clip_masks in zip(batch["id"].tolist(), rows):
                masks[(iterator.epoch, clip_id)] = clip_masks
    return masks


def test_masks_do_not_depend_on_the_number_of_workers(tmp_path):
    data = make_data(tmp_path)
    dataset = make_task(data, precompute_mask_config=MASK).load_dataset("train")
    in_process, one_worker = collect_masks(dataset, 0), collect_masks(dataset, 1)
    assert sorted(in_process) == sorted(one_worker) == [(e, i) for e in (1, 2) for i in range(3)]
    for key, masks in in_process.items():
        assert torch.equal(masks, one_worker[key]), key
    assert not torch.equal(in_process[(1, 0)], in_process[(2, 0)])  # persistent workers saw the new epoch


# --------------------------------------------------------------------------------------- HDF5


def write_h5_data(root: Path, waves: dict) -> Path:
    """``root/clips.h5`` with one dataset per key, and a train manifest of ``clips.h5/<key>`` rows."""
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "clips.h5", "w") as f:
        for key, wave in waves.items():
            f.create_dataset(key, data=wave)
    lines = [str(root)] + [f"clips.h5/{key}\t{len(wave)}" for key, wave in waves.items()]
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_hdf5_clips_read_at_32k(tmp_path):
    waves = {"clip_a": broadband(0.7, 32000, seed=1), "grp/clip_b": broadband(0.4, 32000, seed=2)}
    data = write_h5_data(tmp_path, waves)
    make_data(tmp_path, split="eval")  # other splits stay audio files
    task = make_task(data, h5_format=True, precompute_mask_config=MASK)
    train = task.load_dataset("train")
    for index, wave in enumerate(waves.values()):
        expected = FbankFrontEnd(64, "audioset")(wave, 32000)
        torch.testing.assert_close(train[index]["source"], expected, rtol=0, atol=0)
    assert train[1]["precomputed_mask"].shape == (3, 32)
    evaluation = task.load_dataset("eval")
    assert not evaluation.h5_format
    expected = FbankFrontEnd(64, "audioset").from_file(data / "audio" / "eval0.wav")
    torch.testing.assert_close(evaluation[0]["source"], expected, rtol=0, atol=0)


def test_hdf5_integer_pcm_is_scaled_like_soundfile(tmp_path):
    wave = broadband(0.4, 32000)
    data = write_h5_data(tmp_path, {"pcm": np.round(wave * 32767).astype(np.int16)})
    item = FbankDataset(data / "train.tsv", target_length=64, h5_format=True)[0]["source"]
    expected = FbankFrontEnd(64, "audioset")(np.round(wave * 32767) / 32768, 32000)
    torch.testing.assert_close(item, expected, rtol=0, atol=1e-4)


def h5_dataset(root: Path, waves: dict, **kwargs) -> FbankDataset:
    return FbankDataset(write_h5_data(root, waves) / "train.tsv", target_length=64, h5_format=True, **kwargs)


def test_hdf5_problems_name_file_key_and_line(tmp_path):
    good = broadband(0.4, 32000)
    dataset = h5_dataset(tmp_path / "a", {"clip_a": good})
    dataset.manifest.rows[0] = dataclasses.replace(dataset.manifest.rows[0], relpath="clips.h5/nope")
    with pytest.raises(AudioError, match=r"train.tsv line 2: .*clips.h5 key 'nope': does not exist"):
        dataset[0]
    dataset.manifest.rows[0] = dataclasses.replace(dataset.manifest.rows[0], relpath="gone.h5/clip_a")
    with pytest.raises(AudioError, match=r"train.tsv line 2: .*gone.h5: HDF5 file not found \(wanted key 'clip_a'\)"):
        dataset[0]
    bad = good.copy()
    bad[5] = np.nan
    with pytest.raises(AudioError, match=r"train.tsv line 2: .*clips.h5 key 'clip_a': contains 1 NaN/Inf samples"):
        h5_dataset(tmp_path / "b", {"clip_a": bad})[0]
    with pytest.raises(AudioError, match=r"train.tsv line 3: .*clips.h5 key 'short'.* too short for one fbank window"):
        h5_dataset(tmp_path / "c", {"clip_a": good, "short": good[:500]})[1]
    dataset = h5_dataset(tmp_path / "d", {"clip_a": good})
    dataset.manifest.rows[0] = dataclasses.replace(dataset.manifest.rows[0], num_samples=999)
    with pytest.raises(AudioError, match=r"key 'clip_a': has 12800 samples but the manifest lists 999"):
        dataset[0]


def test_split_h5_path():
    assert split_h5_path("part0.h5/Yabc") == ("part0.h5", "Yabc")
    assert split_h5_path("dir/part0.hdf5/group/Yabc") == ("dir/part0.hdf5", "group/Yabc")
    assert split_h5_path("store/Yabc") == ("store", "Yabc")  # no .h5 suffix: the official last-component rule
    with pytest.raises(AudioError, match="must be '<file.h5>/<dataset key>'"):
        split_h5_path("part0.h5")


# ------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize("name", ["base", "large", "tiny"])
def test_recipe_parses_without_paths_and_sets_up_the_task(tmp_path, name):
    cfg = OmegaConf.load(RECIPES / f"{name}.yaml")
    for section, key in (("common", "user_dir"), ("task", "data"), ("checkpoint", "save_dir")):
        assert OmegaConf.is_missing(cfg[section], key), f"{section}.{key}"  # given on the command line
    values = list(recipe_strings(OmegaConf.to_container(cfg, resolve=False)))
    assert not [v for v in values if v.startswith("/") or "${env:" in v or "/hpc" in v], values
    assert cfg.optimizer._name == "composite" and cfg.optimizer.dynamic_groups and cfg.lr_scheduler == "pass_through"
    assert cfg.criterion._name == "model"
    assert list(cfg.criterion.log_keys) == LOG_KEYS
    assert cfg.model._name == "data2vec_multi" and cfg.model.supported_modality == "IMAGE"

    # the task section with the model's masking values (patch_size / mask_dropout: dataclass defaults)
    make_data(tmp_path)
    cfg.model.modalities.image.patch_size = 16
    cfg.model.modalities.image.mask_dropout = 0.0
    cfg.task = OmegaConf.merge(OmegaConf.structured(MaeImagePretrainingConfig), cfg.task, {"data": str(tmp_path)})
    task = fairseq_tasks.setup_task(cfg.task)
    spec = task.load_dataset("train").mask_spec
    image = cfg.model.modalities.image
    assert spec == BlockMaskSpec(cfg.model.clone_batch, image.mask_prob, image.mask_prob_adjust, image.mask_length,
                                 image.inverse_mask)
