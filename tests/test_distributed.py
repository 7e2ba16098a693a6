"""Several processes = one process: fairseq's own DDP (gloo, CPU) on the tiny pre-training recipe.

Each rank is a real ``fairseq-hydra-train`` process started with fairseq's ``distributed_training.*``
fields (tcp init, no spawn: fairseq spawns one process per GPU and there are none here). With the
recipe's randomness on (dataset masks, mask-token noise, batch order), 2 ranks x 2 clips must end
where 1 process x 4 clips ends. The CLS loss is the one term that depends on the world size in the
official code (multiplied by the LOCAL masked-patch count), so:

* ``cls_loss_scale=global_sample_size``: 2 x 2 == 1 x 4, same config;
* official ``local_sample_size``: 2 x 2 == 1 x 4 with ``cls_loss`` halved (weight 1 / world size).

Both ranks' EMA teachers are compared bit for bit after every update (``tools/record_teacher.py``
wraps fairseq's own entry point). Fine-tuning with SpecAugment, stochastic depth, roll augmentation and
mixup on is split-invariant too, with ``model.mixup_pairs=adjacent`` (the official flip pairing mixes
clips of the rank's own batch, so it is not).
"""

import socket
import subprocess
import sys

import pytest
import torch

from conftest import (HYDRA_TRAIN, REPO, load_checkpoint_file, logged_rows, make_pretraining_clips, pretrain,
                      pretraining_command, train_env)
from helpers import TARGET_LENGTH, load_script, tiny_pretraining_model

pytestmark = pytest.mark.slow

UPDATES = 3
ATOL = 1e-5  # float sums in another order (per rank, then all-reduced) over 3 Adam updates


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TEACHER_RECORDER = REPO / "tests" / "tools" / "record_teacher.py"


def pretrain_on_two_ranks(data, save_dir, *overrides, teacher_log=None) -> str:
    """2 ranks x 2 clips; with ``teacher_log`` (a folder) each rank records its teacher after every update."""
    port = free_port()
    probe = [sys.executable, str(TEACHER_RECORDER), str(teacher_log)] if teacher_log else [str(HYDRA_TRAIN)]
    common = [
        "distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
        f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
        "distributed_training.distributed_no_spawn=true", "dataset.batch_size=2",
        f"optimization.max_update={UPDATES}", *overrides,
    ]
    ranks = [
        subprocess.Popen(probe + pretraining_command(data, save_dir, *common, f"distributed_training.distributed_rank={r}",
                                                     f"hydra.run.dir={save_dir / f'hydra{r}'}")[1:],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=train_env())
        for r in (0, 1)
    ]
    logs = [rank.communicate(timeout=600)[0] for rank in ranks]
    for r, (rank, log) in enumerate(zip(ranks, logs)):
        assert rank.returncode == 0, f"rank {r}:\n{log[-4000:]}"
    return logs[0]


def pretrain_on_one(data, save_dir, *overrides) -> str:
    return pretrain(data, save_dir, "dataset.batch_size=4", f"optimization.max_update={UPDATES}", *overrides)


def max_differences(a_dir, b_dir, teacher: bool = True) -> dict:
    a = load_checkpoint_file(a_dir / "checkpoint_last.pt")["model"]
    b = load_checkpoint_file(b_dir / "checkpoint_last.pt")["model"]
    assert a.keys() == b.keys()
    diff = {"student": max((a[k] - b[k]).abs().max().item() for k in a if k != "_ema")}
    if teacher:
        diff["teacher"] = max((a["_ema"][k] - b["_ema"][k]).abs().max().item() for k in a["_ema"])
    return diff


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pretraining_clips(tmp_path_factory.mktemp("ddp") / "data", 12)


def test_two_ranks_equal_one_process_with_world_size_invariant_cls(data, tmp_path):
    invariant = "++model.cls_loss_scale=global_sample_size"
    (tmp_path / "teachers").mkdir()
    log2 = pretrain_on_two_ranks(data, tmp_path / "two", invariant, teacher_log=tmp_path / "teachers")
    log1 = pretrain_on_one(data, tmp_path / "one", invariant)
    diff = max_differences(tmp_path / "one", tmp_path / "two")
    assert diff["student"] < ATOL and diff["teacher"] < ATOL, diff
    rows1, rows2 = logged_rows(log1), logged_rows(log2)
    assert len(rows1) == len(rows2) == UPDATES
    for row1, row2 in zip(rows1, rows2):  # fairseq sums the ranks' logging outputs
        assert float(row2["loss"]) == pytest.approx(float(row1["loss"]), abs=2e-3)
        assert float(row2["loss_cls"]) == pytest.approx(float(row1["loss_cls"]), abs=2e-3)
    # the two ranks' teachers: bit-identical after every update
    rank0, rank1 = [(tmp_path / "teachers" / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert {int(line.split()[0]) for line in rank0} >= set(range(1, UPDATES))
    assert rank0 == rank1
    assert len({line.split()[1] for line in rank0}) > 1  # and the teacher does move


def test_official_cls_scale_weights_the_cls_term_by_one_over_world_size(data, tmp_path):
    pretrain_on_two_ranks(data, tmp_path / "two")  # official: CLS x local sample size
    pretrain_on_one(data, tmp_path / "half", "model.cls_loss=0.5")
    pretrain_on_one(data, tmp_path / "full")
    assert max(max_differences(tmp_path / "half", tmp_path / "two").values()) < ATOL
    # and that is a different model from the single-process one with the same config
    assert max_differences(tmp_path / "full", tmp_path / "two")["student"] > 100 * ATOL


def test_mask_noise_of_a_clip_does_not_depend_on_its_batch():
    """The decoder input of clip 7 is the same in a batch of its own and in a batch with clip 3."""
    from eat_plugin.data.datasets import BlockMaskSpec

    model = tiny_pretraining_model().train()
    seen = []
    model.modality_encoders["IMAGE"].decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    spec = BlockMaskSpec(clone_batch=2, mask_prob=0.8, mask_prob_adjust=0.07)  # the tiny model's masking
    source = torch.randn(2, 1, TARGET_LENGTH, 128)
    masks = [spec.sample(TARGET_LENGTH, torch.Generator().manual_seed(i)) for i in range(2)]  # (2, 64) each
    model(source, id=[3, 7], precomputed_mask=torch.cat(masks))
    model(source[1:], id=[7], precomputed_mask=masks[1])
    together, alone = seen  # (4, 64, 32), (2, 64, 32): rows 2, 3 of `together` are clip 7's clones
    masked = masks[1].bool()  # (2, 64)
    assert torch.equal(together[2:][masked], alone[masked])  # the noise: bit for bit
    torch.testing.assert_close(together[2:], alone)  # the visible tokens: the same computation
    assert alone[masked].std().item() == pytest.approx(0.01, rel=0.2)  # N(0, mask_noise_std)
    model.num_updates += 1  # another update draws other noise
    model(source[1:], id=[7], precomputed_mask=masks[1])
    assert not torch.equal(seen[-1][masked], alone[masked])


@pytest.fixture(scope="module")
def esc_data(tmp_path_factory):
    """Demo data, ESC-50 layout, fold 1 held out: 48 training and 12 held-out clips, 6 classes."""
    make_demo_data, prepare_esc50 = load_script("make_demo_data"), load_script("prepare_esc50")
    root = tmp_path_factory.mktemp("ddp_ft")
    assert make_demo_data.main(["--out", str(root / "esc"), "--clips-per-class-per-fold", "2"]) == 0
    assert prepare_esc50.main(["--esc50-root", str(root / "esc"), "--out", str(root / "data"), "--folds", "1"]) == 0
    data = root / "data" / "fold1"
    pretrain(data, root / "pretrain", "optimization.max_update=4")
    return data, root / "pretrain" / "checkpoint_last.pt"


RANDOMNESS_OFF = ("model.mixup=0", "model.specaug=false", "model.drop_path_rate=0", "task.roll_aug=false")
# the tiny recipe's SpecAugment and roll augmentation, stochastic depth 0.1, and mixup 0.8 on every batch
RANDOMNESS_ON = ("model.mixup=0.8", "model.mixup_prob=1.0", "model.specaug=true", "model.drop_path_rate=0.1",
                 "task.roll_aug=true")


def finetune(data, pretrained, save_dir, world_size: int, *overrides, randomness=RANDOMNESS_OFF,
             num_classes: int = 6) -> list:
    """Tiny fine-tuning for 3 updates (model-side randomness off by default); the log of each rank."""
    cmd = [str(HYDRA_TRAIN), "--config-dir", str(REPO / "config" / "finetuning"), "--config-name", "tiny",
           f"common.user_dir={REPO / 'eat_plugin'}", f"task.data={data}", f"model.model_path={pretrained}",
           f"model.num_classes={num_classes}", *randomness, f"optimization.max_update={UPDATES}",
           f"dataset.batch_size={4 // world_size}", "dataset.batch_size_valid=4", f"checkpoint.save_dir={save_dir}",
           *overrides]
    if world_size == 1:
        return [run_logged([*cmd, f"hydra.run.dir={save_dir / 'h'}"])]
    port = free_port()
    ranks = [subprocess.Popen([*cmd, "distributed_training.distributed_world_size=2",
                               "distributed_training.distributed_backend=gloo", "distributed_training.distributed_no_spawn=true",
                               f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
                               f"distributed_training.distributed_rank={r}", f"hydra.run.dir={save_dir / f'h{r}'}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=train_env())
             for r in (0, 1)]
    logs = [rank.communicate(timeout=600)[0] for rank in ranks]
    for r, (rank, log) in enumerate(zip(ranks, logs)):
        assert rank.returncode == 0, f"rank {r}:\n{log[-4000:]}"
    return logs


def run_logged(cmd) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=train_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("label_type,metric", [("single", "accuracy"), ("multi", "mAP")])
def test_distributed_validation_metrics_cover_every_clip_once(esc_data, tmp_path, label_type, metric):
    """12 held-out clips in batches of 4 over 2 ranks (2 batches + 1 batch): the union of the ranks'
    predictions is scored, and equals the single-process figures."""
    data, pretrained = esc_data
    overrides = [f"++task.label_type={label_type}", f"checkpoint.best_checkpoint_metric={metric}",
                 "criterion._name=eat_classification", "~criterion.log_keys"]
    one = finetune(data, pretrained, tmp_path / "one", 1, *overrides)
    two = finetune(data, pretrained, tmp_path / "two", 2, *overrides)
    rows1, rows2 = logged_rows(one[0], "[eval][INFO]"), logged_rows(two[0], "[eval][INFO]")
    assert len(rows1) == len(rows2) >= 1
    for row1, row2 in zip(rows1, rows2):
        assert float(row2[f"eval_{metric}"]) == pytest.approx(float(row1[f"eval_{metric}"]), abs=1e-3)
        assert float(row2["eval_loss"]) == pytest.approx(float(row1["eval_loss"]), abs=1e-3)
    clips = "12 clips" if metric == "accuracy" else "12 clips and"
    for log in (one[0], two[0]):  # every held-out clip scored once: 2 batches on rank 0, 1 + a filler on rank 1
        assert f"{metric} over {clips}" in log
    assert max(max_differences(tmp_path / "one", tmp_path / "two", teacher=False).values()) < ATOL


def test_finetuning_with_every_augmentation_on_two_ranks_equals_one_process(esc_data, tmp_path):
    """Mixup 0.8 (adjacent pairs), SpecAugment, stochastic depth and roll augmentation all on: every
    per-clip draw is keyed by clip, λ by update, so 2 ranks x 2 clips train exactly as 1 x 4. With the
    official flip pairing one process of 4 mixes clips 1-4 and 2-3, two ranks of 2 mix 1-2 and 3-4."""
    data, pretrained = esc_data
    adjacent = "++model.mixup_pairs=adjacent"
    rows = {}
    for name, world_size, pairs in (("one", 1, adjacent), ("two", 2, adjacent), ("flip", 1, "++model.mixup_pairs=flip")):
        rows[name] = logged_rows(finetune(data, pretrained, tmp_path / name, world_size, pairs, "common.log_interval=1",
                                          randomness=RANDOMNESS_ON)[0])
    assert max_differences(tmp_path / "one", tmp_path / "two", teacher=False)["student"] < ATOL
    assert len(rows["one"]) == len(rows["two"]) == UPDATES
    for row1, row2 in zip(rows["one"], rows["two"]):
        assert float(row2["loss"]) == pytest.approx(float(row1["loss"]), abs=2e-3)
    assert max_differences(tmp_path / "flip", tmp_path / "two", teacher=False)["student"] > 10 * ATOL


def test_machine_sound_fine_tuning_with_the_transformation_head_on_two_ranks_equals_one_process(esc_data, tmp_path):
    """machine_sounds_classification + model.lambda_transform through fairseq's DDP: each clip's transformation
    is drawn from (seed, epoch, clip), so 2 ranks x 2 clips train the classifier and the head as 1 x 4."""
    _, pretrained = esc_data
    fans = tmp_path / "fans"
    assert load_script("make_demo_data").main(["--layout", "mimii", "--out", str(fans / "raw"), "--seconds", "1.5",
                                               "--normal-per-id", "5", "--anomalous-per-id", "1"]) == 0
    assert load_script("prepare_machine_sounds").main(["--root", str(fans / "raw"), "--out", str(fans / "data"),
                                                       "--val-fraction", "0.25"]) == 0
    overrides = ["task._name=machine_sounds_classification", "++task.transforms=true", "++task.label_type=single",
                 "++model.lambda_transform=0.5", "++model.semantic_head_dropout=0.0", "common.log_interval=1",
                 "criterion._name=eat_classification", "~criterion.log_keys", "checkpoint.best_checkpoint_metric=accuracy",
                 "dataset.valid_subset=valid"]
    rows = {}
    for name, world_size in (("one", 1), ("two", 2)):
        rows[name] = logged_rows(finetune(fans / "data", pretrained, tmp_path / name, world_size, *overrides,
                                          num_classes=7)[0])
    assert len(rows["one"]) == len(rows["two"]) == UPDATES
    for row1, row2 in zip(rows["one"], rows["two"]):
        assert float(row1["loss_transform"]) > 0
        for key in ("loss", "loss_transform", "transform_accuracy"):
            assert float(row2[key]) == pytest.approx(float(row1[key]), abs=2e-3), key
    state = load_checkpoint_file(tmp_path / "two" / "checkpoint_last.pt")["model"]
    assert any(key.startswith("semantic_heads.transform.") for key in state)
    assert max_differences(tmp_path / "one", tmp_path / "two", teacher=False)["student"] < ATOL


def test_weighted_epoch_shards_are_disjoint_and_together_the_draw(tmp_path):
    """Balanced sampling over 2 ranks: fairseq's shards of one epoch's weighted draw never share a clip,
    and together they are the draw (every update: rank 0's b clips + rank 1's b clips = 1 x 2b)."""
    import numpy as np

    from eat_plugin.tasks.pretraining import MaeImagePretrainingConfig, MaeImagePretrainingTask
    from omegaconf import OmegaConf

    data = make_pretraining_clips(tmp_path / "data", 20, seconds=0.7)
    weights = np.linspace(0.1, 2.0, 20)
    np.savetxt(data / "train_weights.csv", weights)
    cfg = OmegaConf.merge(OmegaConf.structured(MaeImagePretrainingConfig), {
        "data": str(data), "seed": 3, "target_length": 64, "AS2M_finetune": True, "num_samples": 12, "audio_mae": True,
        "weights_file": str(data / "train_weights.csv"), "min_sample_size": 0})
    task = MaeImagePretrainingTask.setup_task(cfg)
    dataset = task.load_dataset("train")
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        draw = dataset.ordered_indices().tolist()
        assert len(draw) == len(set(draw)) == 12

        def updates(shards, shard, batch):
            task.dataset_to_epoch_iter.clear()
            iterator = task.get_batch_iterator(dataset, max_sentences=batch, num_shards=shards, shard_id=shard,
                                               seed=3, epoch=epoch)
            return [batch["id"].tolist() for batch in iterator.next_epoch_itr(shuffle=True)]

        one = updates(1, 0, 4)
        rank0, rank1 = updates(2, 0, 2), updates(2, 1, 2)
        assert sorted(sum(one, [])) == sorted(draw)
        assert not set(sum(rank0, [])) & set(sum(rank1, []))
        assert [sorted(a + b) for a, b in zip(rank0, rank1)] == [sorted(u) for u in one]


def test_two_ranks_resume_from_their_checkpoint_as_if_unbroken(data, tmp_path):
    """fairseq loads the checkpoint on rank 0 and broadcasts it (``broadcast_object``: a ``torch.load`` with
    torch's default weights_only on the other ranks); the resumed run ends where the unbroken one ends."""
    import shutil

    updates = [f"optimization.max_update={UPDATES + 2}", "checkpoint.no_epoch_checkpoints=false"]
    pretrain_on_two_ranks(data, tmp_path / "unbroken", *updates)  # epoch 1 = updates 1-3: checkpoint1.pt
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "unbroken" / "checkpoint1.pt", tmp_path / "resumed" / "checkpoint_last.pt")
    log = pretrain_on_two_ranks(data, tmp_path / "resumed", *updates)
    assert f"@ {UPDATES} updates" in log  # "Loaded checkpoint ... (epoch 1 @ 3 updates)"
    assert max(max_differences(tmp_path / "unbroken", tmp_path / "resumed").values()) == 0
