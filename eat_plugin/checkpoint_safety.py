"""Crash-safe checkpoint files for fairseq training: atomic writes, a clear error for a damaged file.

What fairseq (``ve-fairseq``, ``fairseq/checkpoint_utils.py``) does on its own:

* ``save_checkpoint`` writes the first due file (``checkpoint_<epoch>_<updates>.pt``,
  ``checkpoint<epoch>.pt``, ``checkpoint_best.pt`` or ``checkpoint_last.pt``) with
  ``torch_persistent_save``: ``<file>.tmp`` then ``os.rename``, without fsync. Its retry loop
  (3 tries, 2.5 s apart) writes the retry into the SAME half-written handle, so a transient failure
  followed by a successful retry renames a corrupt file into place; a full disk costs 5 s of retries
  and ends in torch's ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...``,
  leaving the partial ``.tmp`` behind.
* it then copies that file to the other due names with ``PathManager.copy``, which is
  ``shutil.copyfile`` (without iopath): it truncates the destination and rewrites it in place. A kill
  or a full disk during that copy leaves a truncated ``checkpoint_last.pt``, and the next start stops
  in ``load_checkpoint_to_cpu`` with ``RuntimeError: PytorchStreamReader failed reading zip archive:
  failed finding central directory`` -- which names no file and no way out.

:func:`install` (called when ``eat_plugin`` is imported, i.e. by ``common.user_dir``) patches three
names of ``fairseq.checkpoint_utils`` (idempotent; :func:`uninstall` restores them):

* ``torch_persistent_save``: every local checkpoint is written to ``<file>.tmp`` in the same
  directory, flushed, fsync'ed, then ``os.replace``'d onto ``<file>`` (and the directory fsync'ed).
  Each retry rewrites the temporary file from scratch; a full disk is not retried. Asynchronous
  writes (``checkpoint.write_checkpoints_asynchronously``) and non-local paths are left to fairseq.
* ``PathManager`` (only the name inside ``checkpoint_utils``): a subclass whose ``copy`` does the same
  temp + fsync + replace for local files, so ``checkpoint_last.pt`` / ``checkpoint_best.pt`` are always
  either the old or the new complete file. Everything else (keep_* clean-up, best checkpoints, which
  files are due) is fairseq's code unchanged.
* ``load_checkpoint_to_cpu``: before fairseq loads a local zip checkpoint its records are checked
  (zip directory present, CRC-32 of every record, ``data.pkl`` present: torch itself loads a bit-flipped
  file silently); a damaged file raises :class:`CorruptCheckpointError`, naming the file, what is wrong,
  and the newest readable checkpoint in the same directory with the override that resumes from it.

There is deliberately no automatic fallback: fairseq has no documented mechanism for it
(``checkpoint.continue_once`` only applies when no ``checkpoint_last.pt`` exists), and silently
resuming from an older checkpoint would repeat updates and change the run. The error says which
``checkpoint.restore_file=...`` to add instead.

A full disk (``ENOSPC`` / ``EDQUOT``) while writing raises :class:`CheckpointDiskFullError` (an
``OSError`` with that errno): which file, how many bytes were written and roughly needed, the free
space; the temporary file is removed and the previous checkpoint of that name is untouched.

Test hook (read by nothing else): with ``EAT_TEST_KILL_DURING_CHECKPOINT_WRITE=<file name>`` the
process SIGKILLs itself right after the first chunk of a write to a checkpoint of that name reached
its temporary file -- a deterministic "killed while writing the checkpoint".
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
import signal
import time
import traceback
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from eat_plugin.checkpoint import NotACheckpointError, allow_fairseq_checkpoint_classes
from eat_plugin.checkpoint_cfg import from_official_layout, to_official_layout

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"  # the suffix fairseq's own atomic save uses: one (overwritten) temp per checkpoint name
KILL_ENV = "EAT_TEST_KILL_DURING_CHECKPOINT_WRITE"
COPY_CHUNK = 1 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_MARK = "_eat_checkpoint_safety_originals"  # set on fairseq.checkpoint_utils once patched


class CorruptCheckpointError(NotACheckpointError):
    """A checkpoint file is truncated or corrupt (e.g. cut short by a crash while it was written).

    ``path``: the damaged file; ``problem``: what is wrong with it; ``fallback``: the newest readable
    checkpoint in the same directory, or ``None``. Build it with :meth:`for_file`.
    """

    def __init__(self, message: str, path: Optional[Path] = None, problem: Optional[str] = None,
                 fallback: Optional[Path] = None):
        super().__init__(message)
        self.path, self.problem, self.fallback = path, problem, fallback

    @classmethod
    def for_file(cls, path: os.PathLike, problem: str) -> "CorruptCheckpointError":
        path = Path(path)
        found = newest_readable_checkpoint(path.parent, exclude=path)
        return cls(_corrupt_message(path, problem, found), path, problem, found[0] if found else None)


class CheckpointDiskFullError(OSError):
    """The disk (or quota) filled up while a checkpoint was written; nothing was replaced."""

    def __init__(self, code: int, message: str, path: Optional[os.PathLike] = None):
        super().__init__(code, message)
        self.filename = os.fspath(path) if path is not None else None

    def __str__(self) -> str:
        return self.strerror


# ------------------------------------------------------------------------------------------ writing


class _Sink:
    """The temporary file as torch.save / copyfileobj see it: counts bytes, remembers the OSError."""

    def __init__(self, handle, dest: str):
        self.handle = handle
        self.written = 0
        self.error: Optional[OSError] = None
        self._kill = os.environ.get(KILL_ENV) == os.path.basename(dest)

    def write(self, data) -> int:
        try:
            count = self.handle.write(data)
        except OSError as err:
            self.error = err
            raise
        self.written += memoryview(data).nbytes if count is None else count
        if self._kill:  # test hook: a kill that lands in the middle of the write
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return count

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as err:
            self.error = err
            raise


def _open_temp(path: str):
    """Open the temporary file (the seam the disk-full unit tests replace)."""
    return open(path, "wb")


def atomic_write(path: os.PathLike, write: Callable[[Any], None], needed: Optional[int] = None) -> None:
    """Write ``path`` as ``path + ".tmp"`` (``write(file_like)``), fsync, then ``os.replace`` it into place.

    Readers of ``path`` only ever see the previous or the new complete file. On any failure the
    temporary file is removed; a full disk raises :class:`CheckpointDiskFullError`. ``needed``: the
    expected size in bytes, for that message.
    """
    path = os.fspath(path)
    tmp = path + TMP_SUFFIX
    sink, written = None, 0
    try:
        handle = _open_temp(tmp)
        try:
            sink = _Sink(handle, path)
            write(sink)
            sink.flush()
            os.fsync(handle.fileno())
            written = _size_on_disk(handle, sink)
            handle.close()  # some filesystems (NFS) report a full disk only here
        except BaseException:
            written = _size_on_disk(handle, sink) or written
            _close_quietly(handle)
            raise
        os.replace(tmp, path)
    except BaseException as err:
        _remove_quietly(tmp)
        code = _disk_full_errno(err, sink)
        if code is not None:
            raise CheckpointDiskFullError(code, _disk_full_message(path, tmp, written, needed, code), path) from err
        raise
    _fsync_directory(os.path.dirname(path) or ".")


def safe_torch_persistent_save(obj, filename, async_write: bool = False):
    """``checkpoint_utils.torch_persistent_save`` with :func:`atomic_write` (same retries, no disk-full retry)."""
    from fairseq.file_io import PathManager

    if async_write or not PathManager.supports_rename(filename):
        return _original("torch_persistent_save")(obj, filename, async_write=async_write)
    obj = to_official_layout(obj)  # plugin-only task fields beside the task config (checkpoint_cfg)
    needed = _tensor_bytes(obj)
    for attempt in range(3):
        try:
            return atomic_write(filename, lambda f: torch.save(obj, f), needed=needed)
        except CheckpointDiskFullError:
            raise  # retrying cannot help; the message says what to do
        except Exception as err:
            interrupt = _interrupt_in(err)
            if interrupt is not None:  # torch.save turns a Ctrl-C mid-write into a RuntimeError: no retry
                raise interrupt from None
            if attempt == 2:
                logger.error(traceback.format_exc())
                raise
            time.sleep(2.5)


def atomic_copy(src_path: str, dst_path: str) -> None:
    """Copy ``src_path`` to ``dst_path`` through :func:`atomic_write` (never a half-copied destination)."""
    with open(src_path, "rb") as src:
        atomic_write(dst_path, lambda f: shutil.copyfileobj(src, f, COPY_CHUNK), needed=os.path.getsize(src_path))


def _atomic_path_manager():
    from fairseq.file_io import PathManager

    class AtomicCopyPathManager(PathManager):
        """fairseq's PathManager with an atomic local ``copy`` (used by ``save_checkpoint`` only)."""

        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
                return PathManager.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and os.path.exists(dst_path):
                logger.error(f"{dst_path} exists and overwrite is False: not copied")
                return False
            atomic_copy(src_path, dst_path)
            return True

    return AtomicCopyPathManager


def _size_on_disk(handle, sink: Optional[_Sink]) -> int:
    """Bytes that reached the temporary file (what a failed write left), else what the sink passed on."""
    try:
        return os.fstat(handle.fileno()).st_size
    except (OSError, ValueError, AttributeError):
        return sink.written if sink is not None else 0


def _close_quietly(handle) -> None:
    try:
        handle.close()
    except Exception:  # the buffer flush of a full disk fails again: the first error is the one raised
        pass


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (best effort: not every platform / filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _chain(err: Optional[BaseException]):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _interrupt_in(err: BaseException) -> Optional[BaseException]:
    """The KeyboardInterrupt / SystemExit behind ``err``, if any."""
    return next((e for e in _chain(err) if not isinstance(e, Exception)), None)


def _disk_full_errno(err: BaseException, sink: Optional[_Sink]) -> Optional[int]:
    """ENOSPC / EDQUOT if that is what happened (torch.save wraps the OSError in a RuntimeError)."""
    for candidate in [sink.error if sink is not None else None, *_chain(err)]:
        if isinstance(candidate, OSError) and candidate.errno in _DISK_FULL:
            return candidate.errno
    return None


def _disk_full_message(path: str, tmp: str, written: int, needed: Optional[int], code: int) -> str:
    what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    try:
        free = f"{shutil.disk_usage(os.path.dirname(path) or '.').free:,} bytes are free there now"
    except OSError:
        free = "free space unknown"
    size = f" of about {needed:,} needed" if needed else ""
    previous = (f"the previous {os.path.basename(path)} is intact" if os.path.exists(path)
                else f"there was no previous {os.path.basename(path)}")
    return (
        f"{path}: disk full ({what}) while saving the checkpoint: {written:,} bytes written{size}, {free}. "
        f"Nothing was replaced: {previous} and the partial {os.path.basename(tmp)} was removed. Free some "
        f"space (or set checkpoint.save_dir to a larger disk) and run the same command again to resume."
    )


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages in ``obj``: about the size torch.save will write."""
    seen, total, stack = set(), 0, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            try:
                storage = item.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
            except Exception:  # meta / exotic tensors: not counted
                pass
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


# ------------------------------------------------------------------------------------------ loading


def checkpoint_problem(path: os.PathLike) -> Optional[str]:
    """What is wrong with the file as a torch checkpoint, or ``None`` if its records are intact.

    Zip checkpoints (torch >= 1.6) are checked completely (directory, every record's CRC-32,
    ``data.pkl``); a legacy pickle file cannot be checked without loading it and gives ``None``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:2] != b"PK":
        return None if head[:1] == b"\x80" else f"not a torch checkpoint: {size:,} bytes starting with {head!r}"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
                return f"a zip archive of {size:,} bytes without data.pkl: not a torch checkpoint"
            bad = archive.testzip()
            first = min(info.header_offset for info in archive.infolist())
    except zipfile.BadZipFile as err:
        return f"{size:,} bytes without the zip directory that ends a complete checkpoint ({err})"
    except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as err:  # zlib / struct errors
        return f"unreadable record: {type(err).__name__}: {err}"
    if bad is not None:
        return f"CRC-32 mismatch in record {bad!r}: its bytes changed after it was written"
    if first != 0:  # fairseq's retry of a failed torch.save appends a 2nd archive to the 1st attempt's bytes
        return f"{first:,} bytes of an earlier, failed write before the first record (torch cannot read it)"
    return None


def readable_checkpoint_info(path: os.PathLike) -> Optional[Dict[str, Any]]:
    """``{"epoch", "updates"}`` if ``path`` is a complete checkpoint fairseq can load, else ``None``."""
    path = Path(path)
    try:
        if checkpoint_problem(path) is not None:
            return None
        allow_fairseq_checkpoint_classes()
        zipped = zipfile.is_zipfile(path)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception:
        return None
    if not isinstance(state, dict) or "model" not in state:
        return None
    info: Dict[str, Any] = {"epoch": None, "updates": None}
    try:
        info["epoch"] = state["extra_state"]["train_iterator"]["epoch"]
    except (KeyError, TypeError):
        pass
    try:
        info["updates"] = state["optimizer_history"][-1]["num_updates"]
    except (KeyError, TypeError, IndexError):
        pass
    return info


def newest_readable_checkpoint(directory: os.PathLike, exclude: Optional[os.PathLike] = None
                               ) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The most recently modified ``*.pt`` in ``directory`` (not ``exclude``) that loads, with its info."""
    directory = Path(directory)
    skip = Path(exclude).resolve() if exclude is not None else None
    try:
        files = [p for p in directory.iterdir() if p.suffix == ".pt" and p.is_file() and p.resolve() != skip]
    except OSError:
        return None
    for candidate in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        info = readable_checkpoint_info(candidate)
        if info is not None:
            return candidate, info
    return None


def _corrupt_message(path: Path, problem: str, found: Optional[Tuple[Path, Dict[str, Any]]]) -> str:
    head = (f"{path}: checkpoint is truncated or corrupt: {problem}. A crash, a kill or a full disk while it "
            f"was written (or a bad copy) leaves such a file; fairseq does not fall back on its own.\n")
    if found is None:
        return (f"{head}No other readable checkpoint (*.pt) in {path.parent}: move {path.name} away to start "
                f"training afresh, or set checkpoint.restore_file=<checkpoint> to start from another one.")
    fallback, info = found
    where = f"epoch {info['epoch']}" if info.get("epoch") is not None else ""
    if info.get("updates") is not None:
        where += f" @ {info['updates']} updates"
    when = datetime.fromtimestamp(fallback.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    where = f"{where.strip()}, written {when}" if where.strip() else f"written {when}"
    return (f"{head}The newest readable checkpoint in {path.parent} is {fallback.name} ({where}).\n"
            f"To resume from it, add this override to the same command: checkpoint.restore_file={fallback.resolve()}\n"
            f"(for this restart only: drop it afterwards, later restarts resume from the new checkpoint_last.pt).")


def safe_load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """``checkpoint_utils.load_checkpoint_to_cpu`` that names a truncated / corrupt local file clearly."""
    from fairseq.file_io import PathManager

    local = isinstance(path, (str, os.PathLike)) and not PathManager.path_requires_pathmanager(os.fspath(path))
    if local and os.path.isfile(path):
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CorruptCheckpointError.for_file(path, problem)
    try:
        return from_official_layout(_original("load_checkpoint_to_cpu")(path, arg_overrides=arg_overrides,
                                                                        load_on_all_ranks=load_on_all_ranks))
    except (EOFError, pickle.UnpicklingError, RuntimeError) as err:  # a legacy pickle cut short, or torch's reader
        text = str(err)
        damaged = (isinstance(err, EOFError) or "PytorchStreamReader failed" in text
                   or (isinstance(err, pickle.UnpicklingError) and "truncated" in text))
        if local and damaged:
            raise CorruptCheckpointError.for_file(path, f"{type(err).__name__}: {text.splitlines()[0][:200]}") from err
        raise


# ------------------------------------------------------------------------------------------ install


def _original(name: str):
    from fairseq import checkpoint_utils

    return getattr(checkpoint_utils, _MARK, {}).get(name) or getattr(checkpoint_utils, name)


def install() -> None:
    """Patch ``fairseq.checkpoint_utils`` (idempotent: a second call, even from a second copy, does nothing)."""
    from fairseq import checkpoint_utils

    if getattr(checkpoint_utils, _MARK, None):
        return
    originals = {name: getattr(checkpoint_utils, name)
                 for name in ("torch_persistent_save", "PathManager", "load_checkpoint_to_cpu")}
    checkpoint_utils.torch_persistent_save = safe_torch_persistent_save
    checkpoint_utils.PathManager = _atomic_path_manager()
    checkpoint_utils.load_checkpoint_to_cpu = safe_load_checkpoint_to_cpu
    setattr(checkpoint_utils, _MARK, originals)


def uninstall() -> None:
    """Restore fairseq's own functions (tests use it to show what happens without the patch)."""
    from fairseq import checkpoint_utils

    originals = getattr(checkpoint_utils, _MARK, None)
    if not originals:
        return
    for name, value in originals.items():
        setattr(checkpoint_utils, name, value)
    delattr(checkpoint_utils, _MARK)


def installed() -> bool:
    from fairseq import checkpoint_utils

    return bool(getattr(checkpoint_utils, _MARK, None))
