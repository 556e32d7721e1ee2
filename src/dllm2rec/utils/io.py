"""Atomic file/directory writes: nothing half-written is ever left at the destination.

``atomic_dir`` swaps a finished temporary directory in with one ``renameat2(RENAME_EXCHANGE)`` where the kernel
and filesystem support it (Linux), so the destination is never missing, not even for an instant; elsewhere it
falls back to two renames (a kill between them leaves the previous directory as ``.<name>.*.old`` next to it).
``durable=True`` also fsyncs every file and directory involved, so a completed write survives a power cut.
``disk_errors(path)`` turns a full disk (ENOSPC / EDQUOT) into a one-line error naming the path.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from dllm2rec.errors import Dllm2recError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
HOOK_ENV = "DLLM2REC_TEST_CKPT_HOOK"  # crash tests: append "<epoch|-> <phase>" to this file at each write phase ...
HOOK_SLEEP_ENV = "DLLM2REC_TEST_CKPT_SLEEP"  # ... then sleep this long (seconds) so a SIGKILL can land there ...
HOOK_STOP_ENV = "DLLM2REC_TEST_CKPT_STOP"  # ... and wait to be killed at phase N of the first epoch's saves
_hook_pos = -1  # phase index within the current epoch's saves (0 = the trainer's "log:appended"); -1 before


def crash_test_hook(phase: str, epoch: int | str = "-") -> None:
    """Test instrumentation, off unless ``DLLM2REC_TEST_CKPT_HOOK`` is set: mark a write phase, then pause.

    Phases here: ``write:<file name>`` before each durable file write, ``swap:<dir>`` / ``swapped:<dir>`` around
    the replacement of a directory; the trainer adds its own (``log:appended``, ``last:committed``, ...).
    """
    global _hook_pos
    f = os.environ.get(HOOK_ENV)
    if not f:
        return
    _hook_pos = 0 if phase == "log:appended" else _hook_pos + 1 if _hook_pos >= 0 else -1
    with open(f, "a", encoding="utf-8") as fh:
        fh.write(f"{epoch} {phase}\n")
    stop = os.environ.get(HOOK_STOP_ENV, "") not in ("", "-1") and _hook_pos == int(os.environ[HOOK_STOP_ENV])
    time.sleep(600.0 if stop else float(os.environ.get(HOOK_SLEEP_ENV, "0.05")))


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Re-raise a full disk / exceeded quota while writing ``path`` as one line (``Dllm2recError``)."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise Dllm2recError(f"disk full while writing {path} ({os.strerror(e.errno)})") from None
        raise


def write_file_durable(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` with plain ``os.write`` calls (OS errors surface as ``OSError``) and fsync it."""
    crash_test_hook(f"write:{Path(path).name}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so the names created / renamed in it are on disk (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(d)


_renameat2 = None


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    import ctypes

    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, getattr(errno, "EOPNOTSUPP", errno.EINVAL),
               getattr(errno, "ENOTSUP", errno.EINVAL)):
        return False  # this filesystem / kernel cannot exchange: the caller falls back to two renames
    raise OSError(err, os.strerror(err), str(b))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _ordinary_modes(root: Path) -> None:
    """Files 0644, directories 0755 (minus the umask): writers such as safetensors' ``save_file`` create 0600 files,
    which left one file of a bundle or a checkpoint unreadable to the group while the rest was 0644."""
    mask = os.umask(0)
    os.umask(mask)
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        os.chmod(p, (0o755 if p.is_dir() else 0o644) & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` (an existing directory is swapped out).

    The previous directory stays complete at ``path`` until the new one is complete. ``durable``: fsync the new
    tree before the swap and the parent directory after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the result is an ordinary shared directory
    old = None
    try:
        yield tmp
        _ordinary_modes(tmp)
        if durable:
            _fsync_tree(tmp)
        crash_test_hook(f"swap:{path.name}")
        if path.exists() and path.is_dir() and not path.is_symlink() and exchange_paths(tmp, path):
            old = tmp  # tmp now holds the previous directory
        elif path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
        crash_test_hook(f"swapped:{path.name}")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old is not None and old != tmp and old.exists() and not path.exists():
            os.replace(old, path)  # failed between the two renames: the previous directory goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, n: int = 16) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def read_json(path: str | Path, error: type[Exception] | None = None, missing: str = "missing") -> Any:
    """The one JSON/manifest reader: a missing file, non-UTF-8 bytes or malformed JSON is one line of ``error``
    (default Dllm2recError) naming the file."""
    error = error or Dllm2recError
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: unreadable ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


class _Unreadable(Exception):
    pass


def try_read_json(path: str | Path, default: Any = None) -> Any:
    """``read_json`` for optional files (a run's experiment.json, a teacher's metrics.json): ``default`` when the
    file is missing, unreadable or malformed, instead of an error."""
    try:
        return read_json(path, _Unreadable)
    except _Unreadable:
        return default
