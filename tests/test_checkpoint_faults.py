"""Checkpoint faults: a kill or a full disk while a checkpoint is written, a truncated / corrupt file.

``eat_plugin.checkpoint_safety`` (installed when the plugin is imported) writes every checkpoint to
``<file>.tmp`` + fsync + ``os.replace`` and turns a damaged file into one clear error naming the newest
readable checkpoint. Expectations are independent of the code under test: the tensors written before
the failure, byte counts computed here, fairseq's own functions with the patch taken out.
"""

import errno
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, file_io

import eat_plugin  # noqa: F401  (installs the patch, as loading the plugin as a user dir does)
from conftest import make_pretraining_clips, pretraining_command, train_env
from eat_plugin import checkpoint_safety as safety
from eat_plugin.checkpoint import NotACheckpointError
from eat_plugin.checkpoint_safety import CheckpointDiskFullError, CorruptCheckpointError



def fairseq_state(updates: int, epoch: int = 1, numel: int = 1000, seed: int = 0) -> dict:
    """What fairseq's trainer saves, in miniature (loads through ``checkpoint_utils.load_checkpoint_to_cpu``)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(numel, generator=gen), "b": torch.randn(7, generator=gen),
                  "_ema": {"w": torch.randn(numel, generator=gen)}},
        "cfg": None,
        "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": updates}],
        "last_optimizer_state": {"state": {}, "param_groups": []},
        "extra_state": {"train_iterator": {"epoch": epoch, "iterations_in_epoch": updates}, "val_loss": None},
    }


def assert_same_tensors(got, want, where="state"):
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_same_tensors(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_tensors(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def storage_bytes(state: dict) -> int:
    """Independent count of the tensor bytes in a ``fairseq_state``."""
    model = state["model"]
    return sum(t.numel() * t.element_size() for t in (model["w"], model["b"], model["_ema"]["w"]))


class FullDisk:
    """A file that takes ``room`` bytes, then fails like a full disk (the part that fits is written)."""

    opened = 0

    def __init__(self, path, room: int, code: int = errno.ENOSPC):
        self.handle, self.room, self.code, self.written = open(path, "wb", buffering=0), room, code, 0
        FullDisk.opened += 1

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.written += self.handle.write(data[: self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        self.written += len(data)
        return self.handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def flush(self):
        self.handle.flush()

    def fileno(self):
        return self.handle.fileno()

    def close(self):
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(room)``: the next checkpoint writes see a disk with ``room`` bytes left."""
    FullDisk.opened = 0

    def install(room: int, code: int = errno.ENOSPC):
        monkeypatch.setattr(safety, "_open_temp", lambda path: FullDisk(path, room, code))

    return install


# ------------------------------------------------------------------------------------------ the patch


def test_the_patch_is_installed_once_and_keeps_fairseqs_functions():
    assert checkpoint_utils.torch_persistent_save is safety.safe_torch_persistent_save
    assert checkpoint_utils.load_checkpoint_to_cpu is safety.safe_load_checkpoint_to_cpu
    assert issubclass(checkpoint_utils.PathManager, file_io.PathManager)  # exists, ls, rm, ... unchanged
    patched = checkpoint_utils.PathManager
    safety.install()  # a second import of the plugin
    assert checkpoint_utils.PathManager is patched
    originals = getattr(checkpoint_utils, safety._MARK)
    assert originals["PathManager"] is file_io.PathManager
    assert originals["torch_persistent_save"].__module__ == "fairseq.checkpoint_utils"


def test_atomic_save_and_copy_write_complete_files_and_leave_no_temp(tmp_path):
    state = fairseq_state(4)
    first, last = tmp_path / "checkpoint_1_4.pt", tmp_path / "checkpoint_last.pt"
    (tmp_path / "checkpoint_last.pt.tmp").write_bytes(b"stale temp of a killed run")
    checkpoint_utils.torch_persistent_save(state, str(first))
    assert checkpoint_utils.PathManager.copy(str(first), str(last), overwrite=True)  # what save_checkpoint calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_4.pt", "checkpoint_last.pt"]
    assert last.read_bytes() == first.read_bytes()
    assert_same_tensors(load(last), state)
    assert_same_tensors(checkpoint_utils.load_checkpoint_to_cpu(str(last))["model"], state["model"])


def test_an_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    old = fairseq_state(4)
    checkpoint_utils.torch_persistent_save(old, str(path))

    class Interrupted(FullDisk):
        def write(self, data):
            if self.written > 500:
                raise KeyboardInterrupt  # Ctrl-C (or any exception) in the middle of the write
            return super().write(data)

    monkeypatch.setattr(safety, "_open_temp", lambda p: Interrupted(p, room=10**9))
    with pytest.raises(KeyboardInterrupt):
        checkpoint_utils.torch_persistent_save(fairseq_state(8, seed=1), str(path))
    assert_same_tensors(load(path), old)
    assert not (tmp_path / "checkpoint_last.pt.tmp").exists()


def test_a_kill_during_the_write_leaves_the_old_complete_file(tmp_path):
    """A real SIGKILL mid-write (the test hook), in a subprocess: the old file stays, the temp is partial."""
    path = tmp_path / "checkpoint_last.pt"
    old = fairseq_state(4, numel=300_000)
    torch.save(old, path)
    code = (f"import torch, eat_plugin; from fairseq import checkpoint_utils\n"
            f"state = {{'model': {{'w': torch.ones(300_000)}}}}\n"
            f"checkpoint_utils.torch_persistent_save(state, {str(path)!r})\n")
    env = {**os.environ, safety.KILL_ENV: "checkpoint_last.pt"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr[-2000:]
    assert_same_tensors(load(path), old)
    partial = tmp_path / "checkpoint_last.pt.tmp"
    assert 0 < partial.stat().st_size < 1_200_000  # the kill landed mid-write: 300k floats not all there
    assert safety.checkpoint_problem(partial) is not None


def test_fairseqs_own_retry_writes_a_corrupt_checkpoint_after_a_transient_error(tmp_path, monkeypatch):
    """The defect the patch fixes: fairseq retries torch.save into the same half-written handle."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    failures = {"left": 1}

    class Flaky(FullDisk):
        def write(self, data):
            if failures["left"] and self.written > 1500:
                failures["left"] -= 1
                raise OSError(errno.EIO, "transient I/O error")
            return super().write(data)

    state = fairseq_state(4)
    monkeypatch.setattr(file_io.PathManager, "open", staticmethod(lambda p, mode="r", **kw: Flaky(p, 10**9)))
    original = getattr(checkpoint_utils, safety._MARK)["torch_persistent_save"]
    original(state, str(tmp_path / "fairseq.pt"))  # "succeeds" on its second try
    assert failures["left"] == 0
    with pytest.raises(RuntimeError, match="PytorchStreamReader failed"):  # but torch cannot read the file
        load(tmp_path / "fairseq.pt")
    assert "before the first record" in safety.checkpoint_problem(tmp_path / "fairseq.pt")

    failures["left"] = 1
    monkeypatch.setattr(safety, "_open_temp", lambda p: Flaky(p, 10**9))
    checkpoint_utils.torch_persistent_save(state, str(tmp_path / "ours.pt"))  # each retry starts afresh
    assert failures["left"] == 0 and safety.checkpoint_problem(tmp_path / "ours.pt") is None
    assert_same_tensors(load(tmp_path / "ours.pt"), state)


# ------------------------------------------------------------------------------------------ full disk


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_what_happened(tmp_path, full_disk, code, words):
    path = tmp_path / "checkpoint_last.pt"
    old = fairseq_state(4)
    checkpoint_utils.torch_persistent_save(old, str(path))
    new = fairseq_state(8, numel=50_000, seed=1)
    full_disk(100_000, code)
    started = time.monotonic()
    with pytest.raises(CheckpointDiskFullError) as info:
        checkpoint_utils.torch_persistent_save(new, str(path))
    assert time.monotonic() - started < 2.0 and FullDisk.opened == 1  # not retried 3 x 2.5 s like other errors
    err = info.value
    assert isinstance(err, OSError) and err.errno == code and err.filename == str(path)
    message = str(err)
    assert message.startswith(f"{path}: disk full ({words}) while saving the checkpoint: 100,000 bytes written")
    assert f"of about {storage_bytes(new):,} needed" in message
    assert "the previous checkpoint_last.pt is intact" in message and "checkpoint_last.pt.tmp was removed" in message
    assert_same_tensors(checkpoint_utils.load_checkpoint_to_cpu(str(path))["model"], old["model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]
    assert pickle.loads(pickle.dumps(err)).errno == code  # survives fairseq's multiprocessing


def test_a_full_disk_during_the_copy_to_checkpoint_last_keeps_it(tmp_path, full_disk):
    last = tmp_path / "checkpoint_last.pt"
    old = fairseq_state(4)
    torch.save(old, last)
    update = tmp_path / "checkpoint_1_6.pt"
    torch.save(fairseq_state(6, numel=100_000, seed=1), update)
    full_disk(safety.COPY_CHUNK // 2)
    with pytest.raises(CheckpointDiskFullError, match=rf"^{last}: disk full \(no space left on device\)") as info:
        checkpoint_utils.PathManager.copy(str(update), str(last), overwrite=True)
    assert f"of about {update.stat().st_size:,} needed" in str(info.value)
    assert_same_tensors(load(last), old)
    assert not (tmp_path / "checkpoint_last.pt.tmp").exists()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 7 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_tmpfs_breaks_fairseqs_copy_but_not_ours(tiny_tmpfs):
    """7 MiB disk: checkpoint A (1 MiB) and its copy, then B (4 MiB) whose copy to checkpoint_last does not fit."""
    a = fairseq_state(4, numel=125_000)  # w and _ema.w: 2 x 125k floats = 1 MB
    b = fairseq_state(6, numel=500_000, seed=1)  # 4 MB
    first, last = tiny_tmpfs / "checkpoint_1_4.pt", tiny_tmpfs / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save(a, str(first))
    checkpoint_utils.PathManager.copy(str(first), str(last), overwrite=True)
    second = tiny_tmpfs / "checkpoint_1_6.pt"
    checkpoint_utils.torch_persistent_save(b, str(second))  # fits: 7.3 - 2 x 1 MB left; 1.3 MB after it

    with pytest.raises(CheckpointDiskFullError, match=rf"^{last}: disk full \(no space left on device\)"):
        checkpoint_utils.PathManager.copy(str(second), str(last), overwrite=True)
    assert_same_tensors(checkpoint_utils.load_checkpoint_to_cpu(str(last))["model"], a["model"])
    assert not (tiny_tmpfs / "checkpoint_last.pt.tmp").exists()

    with pytest.raises(OSError) as info:  # fairseq's own copy (shutil.copyfile) truncates first
        file_io.PathManager.copy(str(second), str(last), overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert safety.checkpoint_problem(last) is not None  # ... and leaves a truncated checkpoint_last.pt
    with pytest.raises(CheckpointDiskFullError, match="checkpoint_1_8.pt: disk full"):
        checkpoint_utils.torch_persistent_save(fairseq_state(8, numel=2_000_000), str(tiny_tmpfs / "checkpoint_1_8.pt"))
    assert not (tiny_tmpfs / "checkpoint_1_8.pt.tmp").exists() and not (tiny_tmpfs / "checkpoint_1_8.pt").exists()


# ------------------------------------------------------------------------------------------ loading


def test_a_truncated_checkpoint_names_itself_and_the_newest_readable_one(tmp_path):
    older, newer = tmp_path / "checkpoint_1_4.pt", tmp_path / "checkpoint_2_6.pt"
    torch.save(fairseq_state(4, epoch=1), older)
    torch.save(fairseq_state(6, epoch=2), newer)
    broken_newer = tmp_path / "checkpoint_2_7.pt"  # newest of all, but itself damaged: skipped
    broken_newer.write_bytes(newer.read_bytes()[:5000])
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    last = tmp_path / "checkpoint_last.pt"
    torch.save(fairseq_state(8, epoch=2, numel=10_000), last)  # 80 kB
    last.write_bytes(last.read_bytes()[:20_000])  # cut short
    for age, path in enumerate([broken_newer, newer, older]):
        os.utime(path, (time.time() - 100 * (age + 1),) * 2)

    with pytest.raises(CorruptCheckpointError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(last))  # what trainer.load_checkpoint calls on restart
    err = info.value
    assert isinstance(err, NotACheckpointError) and err.fallback == newer and err.path == last
    lines = str(err).splitlines()
    assert lines[0].startswith(f"{last}: checkpoint is truncated or corrupt: 20,000 bytes without the zip directory")
    assert lines[1].startswith(f"The newest readable checkpoint in {tmp_path} is checkpoint_2_6.pt "
                               f"(epoch 2 @ 6 updates, written ")
    assert lines[2] == f"To resume from it, add this override to the same command: checkpoint.restore_file={newer}"
    assert type(pickle.loads(pickle.dumps(err))) is CorruptCheckpointError


def test_with_no_readable_checkpoint_the_error_says_so(tmp_path):
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes(b"")
    empty = r"checkpoint_last.pt: checkpoint is truncated or corrupt: an empty file \(0 bytes\)"
    with pytest.raises(CorruptCheckpointError, match=empty):
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    (tmp_path / "other.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CorruptCheckpointError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    assert info.value.fallback is None
    assert f"No other readable checkpoint (*.pt) in {tmp_path}: move checkpoint_last.pt away" in str(info.value)


def test_a_flipped_byte_that_torch_loads_silently_is_reported(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    state = fairseq_state(4, numel=100_000)
    torch.save(state, path)
    with zipfile.ZipFile(path) as archive:  # a 400 kB tensor record (w or _ema.w) and where its bytes start
        record = next(info for info in archive.infolist() if info.file_size == 400_000)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26: record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len  # after the local header
    data[start + 1000] ^= 0xFF  # inside that tensor's data
    path.write_bytes(bytes(data))
    original = getattr(checkpoint_utils, safety._MARK)["load_checkpoint_to_cpu"]
    silently = original(str(path))["model"]  # fairseq alone: loads, with a changed weight
    pairs = [(silently["w"], state["model"]["w"]), (silently["b"], state["model"]["b"]),
             (silently["_ema"]["w"], state["model"]["_ema"]["w"])]
    assert not all(torch.equal(got, want) for got, want in pairs)
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint is truncated or corrupt: CRC-32 mismatch in record"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


# ------------------------------------------------------------------------------------------ end to end


def train(data: Path, save_dir: Path, *overrides: str, env=None) -> subprocess.CompletedProcess:
    cmd = pretraining_command(data, save_dir, "checkpoint.save_interval_updates=6", *overrides)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**train_env(), **(env or {})})


def succeeded(result: subprocess.CompletedProcess) -> str:
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def test_a_kill_while_writing_checkpoint_last_and_a_truncated_one_under_fairseq_hydra_train(tmp_path):
    """Tiny recipe, 4 updates per epoch: the copy of checkpoint_2_6.pt to checkpoint_last.pt is killed."""
    data, run = make_pretraining_clips(tmp_path / "data", 8), tmp_path / "run"
    succeeded(train(data, run, "optimization.max_update=4"))
    before = load(run / "checkpoint_last.pt")  # epoch 1 @ 4 updates

    killed = train(data, run, "optimization.max_update=8", env={safety.KILL_ENV: "checkpoint_last.pt"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert "Finished saving checkpoint to" in killed.stdout + killed.stderr  # checkpoint_2_6.pt, then the copy
    assert_same_tensors(load(run / "checkpoint_last.pt"), before)  # (a) the old complete file, bit for bit
    assert load(run / "checkpoint_2_6.pt")["optimizer_history"][-1]["num_updates"] == 6
    assert safety.checkpoint_problem(run / "checkpoint_last.pt.tmp") is not None  # the write was cut short

    resumed = succeeded(train(data, run, "optimization.max_update=8"))  # the kill does not block the restart
    assert f"Loaded checkpoint {run / 'checkpoint_last.pt'} (epoch 2 @ 4 updates)" in resumed  # end of epoch 1
    assert not (run / "checkpoint_last.pt.tmp").exists()

    last = run / "checkpoint_last.pt"  # (b) truncated: the restart stops with our message
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    failed = train(data, run, "optimization.max_update=10")
    assert failed.returncode == 1
    override = f"checkpoint.restore_file={run / 'checkpoint_2_6.pt'}"
    assert f"CorruptCheckpointError: {last}: checkpoint is truncated or corrupt" in failed.stderr, failed.stderr[-3000:]
    assert "is checkpoint_2_6.pt (epoch 2 @ 6 updates" in failed.stderr and override in failed.stderr

    restored = succeeded(train(data, run, "optimization.max_update=10", override))  # the override it names works
    assert f"Loaded checkpoint {run / 'checkpoint_2_6.pt'} (epoch 2 @ 6 updates)" in restored
    assert load(last)["optimizer_history"][-1]["num_updates"] == 10
