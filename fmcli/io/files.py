"""Files: atomic writes, exclusive locks, and where fm keeps its caches.

Checkpoints, sample grids, GIFs, eval caches and reports all go through ``atomic_write_bytes``:
temporary file in the same folder (so the rename stays on one file system), fsync, rename,
then fsync of the folder so the rename itself survives a power cut.

Locks (``exclusive_lock``) are ``flock`` locks on a file: the kernel drops them when their process
ends, however it ends, so a killed process never leaves a stale lock behind.
"""

import errno
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; callers fall back to what atomic renames guarantee alone
    fcntl = None


def default_cache_dir() -> Path:
    """``$FM_CACHE_DIR`` or ``~/.cache/fmcli``: decoded folders, trained classifiers, weights, reference statistics."""
    root = os.environ.get("FM_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fmcli"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically; on any failure the previous file is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_symlink(link: Path, target_name: str) -> None:
    """Point ``link`` at ``target_name`` (relative) by renaming a fresh link over it; a copy where links fail."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target_name, tmp)
    except OSError:  # file systems without symlinks (some Windows and network mounts)
        atomic_write_bytes(link, (link.parent / target_name).read_bytes())
        return
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LockHeld(Exception):
    """``exclusive_lock(..., wait=False)`` found the lock taken; ``owner`` is what its holder wrote in it."""

    def __init__(self, path: Path, owner: str):
        super().__init__(f"{path} is locked by {owner or 'another process'}")
        self.path, self.owner = path, owner


@contextmanager
def exclusive_lock(path: Path, *, wait: bool = True, holder: str | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block; yields whether it is a
    real lock (False where flock does not exist: Windows, some network file systems).

    The holder writes "pid N on HOST: HOLDER" into the file (``holder``: what it is doing, by default its
    command line), so ``wait=False`` can say who holds it (``LockHeld.owner``) instead of blocking.
    """
    with open(path, "a+b") as handle:
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no flock")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise LockHeld(Path(path), handle.read(500).decode(errors="replace").strip()) from None
        except OSError:  # no flock here: the caller still has its atomic renames
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            doing = holder or " ".join(sys.argv)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}: {doing[:300]}".encode())
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
