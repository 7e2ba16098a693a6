"""Training faults: a clip that cannot be decoded mid-run (the run stops naming it; with
``task.skip_bad_clips=true`` it is dropped from its batch and counted), and a NaN/Inf loss or gradient (the
run stops naming the update and the clips of its batch; fp16 keeps fairseq's loss-scale handling).

The trainer tests drive fairseq's own ``Trainer`` in-process on the tiny pre-training recipe; the last test
runs ``fairseq-hydra-train`` itself.
"""

import json
import logging
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from fairseq import tasks
from fairseq.criterions.model_criterion import ModelCriterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.optim.composite import FairseqCompositeOptimizer
from fairseq.tasks import FairseqTask
from fairseq.trainer import Trainer

from conftest import broadband, pretraining_command, train_env, write_wav
from eat_plugin.data.datasets import FbankDataset, LabelledFbankDataset
from eat_plugin.data.fbank import AudioError, FbankFrontEnd
from eat_plugin.data.manifest import Clip, read_label_descriptors, write_label_descriptors, write_split
from eat_plugin.tasks import (MaeImageClassificationConfig, MaeImageClassificationTask, MaeImagePretrainingConfig,
                              MaeImagePretrainingTask)
from helpers import run_config

pytestmark = [  # fairseq's, not ours: NanDetector's backward hooks, FairseqTask.train_step's autocast
    pytest.mark.filterwarnings("ignore:Using (a )?non-full backward hook:FutureWarning"),
    pytest.mark.filterwarnings(r"ignore:`torch.cuda.amp.autocast\(args...\)` is deprecated:FutureWarning"),
]

SECONDS = 1.4  # 22400 samples: >= 128 fbank frames (the tiny recipe's target_length)


def make_data(root: Path, count: int, labels: bool = False) -> Path:
    """``count`` distinct clips ``audio/{i}.wav`` and ``train.tsv`` (clip i on manifest line i + 2)."""
    clips = []
    for i in range(count):
        write_wav(root / "audio" / f"{i}.wav", broadband(SECONDS, seed=i), 16000)
        clips.append(Clip(f"{i}.wav", int(SECONDS * 16000), ("a",) if i % 2 else ("b",)))
    write_split(root, "train", root / "audio", clips, with_labels=labels)
    if labels:
        write_label_descriptors(root / "label_descriptors.csv", ["a", "b"])
    return root


def wav(data: Path, i: int) -> Path:
    return data / "audio" / f"{i}.wav"


def truncate(path: Path) -> None:
    """Cut a wav file to half its bytes, as an interrupted copy would."""
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def epoch_batches(dataset, num_workers: int, epochs: int = 1):
    iterator = FairseqTask(FairseqDataclass()).get_batch_iterator(
        dataset, max_sentences=2, num_workers=num_workers, seed=1
    )
    return [list(iterator.next_epoch_itr(shuffle=False)) for _ in range(epochs)]


# ----------------------------------------------------------------------------- the dataset


def test_removed_clip_stops_by_default_naming_it(tmp_path):
    data = make_data(tmp_path, 4)
    dataset = FbankDataset(data / "train.tsv", target_length=64)
    wav(data, 2).unlink()  # removed after the manifest was written
    with pytest.raises(AudioError) as caught:
        epoch_batches(dataset, num_workers=1)  # raised in the DataLoader worker, re-raised here
    message = str(caught.value)
    assert "DataLoader worker" in message
    assert f"{data / 'train.tsv'} line 4: {wav(data, 2)}: audio file not found" in message
    assert dataset.num_bad_clips == 0 and not dataset.skip_bad_clips


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skipped_clips_leave_their_batch_and_are_counted_once(tmp_path, caplog, num_workers):
    data = make_data(tmp_path, 6)
    dataset = FbankDataset(data / "train.tsv", target_length=64, skip_bad_clips=True)
    wav(data, 1).unlink()
    truncate(wav(data, 4))
    truncate(wav(data, 5))  # with clip 4: batch [4, 5] has no clip left
    with caplog.at_level(logging.WARNING, logger="eat_plugin.data.datasets"):
        epochs = epoch_batches(dataset, num_workers, epochs=2)
    front_end = FbankFrontEnd(64, "audioset")
    for batches in epochs:
        kept = [batch for batch in batches if batch]
        assert len(batches) == 3 and [batch for batch in batches if not batch] == [{}]  # batch [4, 5]
        assert sorted(len(batch["id"]) for batch in kept) == [1, 2]
        ids = sorted(i for batch in kept for i in batch["id"].tolist())
        assert ids == [0, 2, 3]
        for batch in kept:
            assert torch.as_tensor(batch["net_input"]["id"]).tolist() == batch["id"].tolist()
            for row, i in enumerate(batch["id"].tolist()):  # the decoded clip, never a zero-filled one
                expected = front_end.from_file(wav(data, i))  # (1, 64, 128)
                torch.testing.assert_close(batch["net_input"]["source"][row], expected, rtol=0, atol=0)
    # counted in the training process although the workers skipped them, each clip once over two epochs
    assert dataset.num_bad_clips == 3 and dataset.bad_clips.indices() == [1, 4, 5]
    if num_workers == 0:  # the workers' warnings go to their own stderr, not to caplog
        skipped = [r.getMessage() for r in caplog.records if "skipped a clip" in r.getMessage()]
        assert len(skipped) == 6  # each skip, every epoch
        for i, line in ((1, 3), (4, 6), (5, 7)):
            assert sum(f"train.tsv line {line}: {wav(data, i)}:" in m for m in skipped) == 2, i


def test_skipped_clip_keeps_labels_aligned(tmp_path):
    data = make_data(tmp_path, 4, labels=True)
    descriptors = read_label_descriptors(data / "label_descriptors.csv")
    dataset = LabelledFbankDataset(data / "train.tsv", data / "train.lbl", descriptors, target_length=64,
                                   skip_bad_clips=True)
    wav(data, 1).unlink()
    items = [dataset[i] for i in range(4)]
    assert items[1] is None and dataset.num_bad_clips == 1
    batch = dataset.collater(items)
    assert batch["id"].tolist() == [0, 2, 3] and batch["net_input"]["imgs"].shape == (3, 1, 64, 128)
    # clips 0 and 2 are "b" (class 1), clip 3 is "a" (class 0)
    assert batch["net_input"]["label"].tolist() == [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    assert dataset.collater([None, None]) == {}


def test_task_flag_reaches_the_datasets(tmp_path):
    data = make_data(tmp_path, 2)
    assert MaeImagePretrainingConfig.skip_bad_clips is False  # the default stops the run
    assert MaeImageClassificationConfig.skip_bad_clips is False
    for skip in (False, True):
        task = MaeImagePretrainingTask(
            MaeImagePretrainingConfig(data=str(data), seed=1, target_length=64, skip_bad_clips=skip, audio_mae=True)
        )
        assert task.load_dataset("train").skip_bad_clips is skip


# ----------------------------------------------------------------------------- fairseq's trainer


@pytest.fixture(autouse=True)
def fresh_composite_optimizer(monkeypatch):
    """fairseq's ``FairseqCompositeOptimizer`` keeps its group optimizers in CLASS-level dicts: a second one
    in the same process also steps (and, in fp16, inspects) the groups of every earlier one (other tests')."""
    monkeypatch.setattr(FairseqCompositeOptimizer, "optimizers", {})
    monkeypatch.setattr(FairseqCompositeOptimizer, "lr_schedulers", {})


def tiny_trainer(data: Path, save_dir: Path, *overrides: str):
    """The tiny pre-training recipe's task, model, criterion and ``Trainer``, set up as fairseq_cli/train.py does."""
    cfg = run_config("pretraining", "tiny", [f"task.data={data}", f"checkpoint.save_dir={save_dir}", *overrides])
    save_dir.mkdir(parents=True, exist_ok=True)
    metrics.reset()
    torch.manual_seed(0)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    epoch_itr = trainer.get_train_iterator(epoch=1)  # loads the train split; sets fairseq's dummy batch
    return trainer, model, epoch_itr


def batch_lines(data: Path, batches) -> list:
    """The ``id {i}: {path}`` line the error must carry for every clip of ``batches``."""
    return [f"id {i}: {wav(data, i)}" for batch in batches for i in batch["id"].tolist()]


def poison(model) -> None:
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.fill_(float("nan"))


def test_nan_gradients_stop_naming_the_update_and_its_clips(tmp_path, caplog):
    data = make_data(tmp_path / "data", 6)
    trainer, model, epoch_itr = tiny_trainer(data, tmp_path / "run")
    b0, b1, b2 = list(epoch_itr.next_epoch_itr(shuffle=False))
    assert trainer.train_step([b0]) is not None and trainer.get_num_updates() == 1
    poison(model)
    with caplog.at_level(logging.WARNING, logger="fairseq.nan_detector"), pytest.raises(FloatingPointError) as caught:
        trainer.train_step([b1, b2])  # update_freq 2: both batches make update 2
    message = str(caught.value)
    assert message.startswith("training stopped at update 2: gradients are Nan/Inf.")  # fairseq's reason kept
    assert f"the batch: 4 clips of {data / 'train.tsv'}:" in message
    for line in batch_lines(data, [b1, b2]):
        assert line in message
    assert not any(line in message for line in batch_lines(data, [b0]))  # the previous update's clips
    assert trainer.get_num_updates() == 1
    # fairseq's own handling ran: crash checkpoint, NanDetector re-run of the batch
    assert (tmp_path / "run" / "crash.pt").is_file()
    assert any("detected in output of" in r.getMessage() for r in caplog.records)


def test_nan_loss_with_finite_gradients_stops_naming_the_update_and_its_clips(tmp_path):
    data = make_data(tmp_path / "data", 6)
    trainer, model, epoch_itr = tiny_trainer(data, tmp_path / "run")
    b0, b1, b2 = list(epoch_itr.next_epoch_itr(shuffle=False))
    assert trainer.train_step([b0]) is not None
    forward = model.forward

    def forward_with_a_nan_term(*args, **kwargs):  # a NaN loss term outside the graph: gradients stay finite
        result = forward(*args, **kwargs)
        result["losses"]["broken"] = torch.tensor(float("nan"))
        return result

    model.forward = forward_with_a_nan_term
    with pytest.raises(FloatingPointError) as caught:
        trainer.train_step([b1, b2])
    message = str(caught.value)
    assert message.startswith("training stopped at update 2: the loss is nan (the gradients were finite).")
    for line in batch_lines(data, [b1, b2]):
        assert line in message
    assert not any(line in message for line in batch_lines(data, [b0]))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_healthy_steps_and_an_empty_batch_raise_nothing(tmp_path):
    data = make_data(tmp_path / "data", 4)
    trainer, model, epoch_itr = tiny_trainer(data, tmp_path / "run")
    for batch in epoch_itr.next_epoch_itr(shuffle=False):
        assert trainer.train_step([batch]) is not None
    # a batch whose clips were all skipped collates to {}: fairseq trains its dummy batch with the loss x 0
    log = trainer.train_step([{}])
    assert log is not None and log["sample_size"] == 0 and math.isfinite(log["loss"])
    assert trainer.get_num_updates() == 3


def test_the_classification_task_checks_the_loss_too(tmp_path):
    data = make_data(tmp_path, 2, labels=True)
    task = MaeImageClassificationTask(
        MaeImageClassificationConfig(data=str(data), seed=1, target_length=64, label_type="single", audio_mae=True)
    )
    task.load_dataset("train")
    task.faults.before_train_step({"id": torch.tensor([1, 0])}, update_num=4, ignore_grad=False)
    log = {"loss": torch.tensor(float("inf")), "ntokens": 2, "nsentences": 2, "sample_size": 2}
    metrics.reset()
    with metrics.aggregate("train"):
        pass
    with metrics.aggregate(new_root=True), metrics.aggregate():  # validation (fairseq_cli's validate): not checked
        task.reduce_metrics([log], ModelCriterion(task))
    with metrics.aggregate("train"), metrics.aggregate(), pytest.raises(FloatingPointError) as caught:
        task.reduce_metrics([log], ModelCriterion(task))  # what the trainer's train_step calls after the step
    assert str(caught.value).startswith("training stopped at update 5: the loss is inf")
    assert f"  id 1: {wav(data, 1)}\n  id 0: {wav(data, 0)}\n" in str(caught.value)
    metrics.reset()


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")  # a device sync each, on GPU


def test_a_healthy_step_reads_nothing_more_from_the_device(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data", 6)
    trainer, model, epoch_itr = tiny_trainer(data, tmp_path / "run")
    b0, b1, b2 = list(epoch_itr.next_epoch_itr(shuffle=False))
    trainer.train_step([b0])  # warm-up
    reads = []
    for name in HOST_READS:
        def counted(self, *args, _name=name, _original=getattr(torch.Tensor, name), **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    def step_reads(batch) -> list:
        reads.clear()
        assert trainer.train_step([batch]) is not None
        return sorted(reads)

    with_checks = step_reads(b1)
    monkeypatch.setattr(trainer.task.faults, "before_train_step", lambda *args: None)
    monkeypatch.setattr(trainer.task.faults, "after_reduce_metrics", lambda: None)
    assert with_checks == step_reads(b2)
    assert "__bool__" in with_checks  # the counting works: fairseq's own finite-gradient-norm check


def test_fp16_lowers_the_loss_scale_before_the_run_stops(tmp_path, monkeypatch):
    # fairseq's overflow branch moves a 0 to CUDA (`torch.tensor(0.0).cuda()`); this machine has no GPU
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    data = make_data(tmp_path / "data", 6)
    trainer, model, epoch_itr = tiny_trainer(data, tmp_path / "run", "common.fp16=true", "common.min_loss_scale=16")
    batches = list(epoch_itr.next_epoch_itr(shuffle=False))
    poison(model)
    scaler = trainer.optimizer.scaler
    assert scaler.loss_scale == 128  # fairseq's fp16_init_scale
    for expected_scale in (64, 32):  # overflow: batch skipped, loss scale halved, no update, no stop
        assert trainer.train_step([batches.pop(0)]) is None
        assert scaler.loss_scale == expected_scale and trainer.get_num_updates() == 0
    last = batches.pop(0)
    with pytest.raises(FloatingPointError) as caught:  # 16 would be the minimum: fairseq gives up
        trainer.train_step([last])
    message = str(caught.value)
    assert message.startswith("training stopped at update 1: Minimum loss scale reached (16")
    assert f"the batch: 2 clips of {data / 'train.tsv'}:\n" + "\n".join(f"  {line}" for line in batch_lines(data, [last])) in message


# ----------------------------------------------------------------------------- end to end


def hydra_train(data: Path, save_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = pretraining_command(data, save_dir, "common.tensorboard_logdir=null", "dataset.num_workers=1",
                              "optimization.max_update=4", "checkpoint.save_interval_updates=0", *overrides)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=train_env())


def test_fairseq_hydra_train_on_a_clip_corrupted_after_the_manifest(tmp_path):
    data = make_data(tmp_path / "data", 8)  # batch 2: 4 updates per epoch
    truncate(wav(data, 5))

    stopped = hydra_train(data, tmp_path / "default")
    assert stopped.returncode != 0
    assert re.search(rf"AudioError: .*train\.tsv line 7: {re.escape(str(wav(data, 5)))}: ", stopped.stderr), \
        stopped.stderr[-3000:]
    assert "(to skip such clips instead: ++task.skip_bad_clips=true)" in stopped.stderr

    # ++: the recipes do not list the key (a plain task.skip_bad_clips=true needs it in the YAML)
    skipped = hydra_train(data, tmp_path / "skip", "++task.skip_bad_clips=true")
    log = skipped.stdout + skipped.stderr
    assert skipped.returncode == 0, log[-3000:]
    assert re.search(rf"skipped a clip that cannot be decoded .*train\.tsv line 7: {re.escape(str(wav(data, 5)))}", log)
    rows = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "[train_inner]" in line]
    assert len(rows) == 4
    assert sum(int(float(row["bsz"])) for row in rows) == 7  # 8 clips, one dropped (not zero-filled)
    assert rows[-1]["bad_clips"] == "1"
    epoch = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "[train][INFO]" in line]
    assert epoch and epoch[-1]["train_bad_clips"] == "1"
