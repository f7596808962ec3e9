"""Writing files so that a reader sees the old file or the new one, never a mix.

Checkpoints, sample grids, GIFs, eval caches and reports all go through ``atomic_write_bytes``:
temporary file in the same folder (so the rename stays on one file system), fsync, rename,
then fsync of the folder so the rename itself survives a power cut.
"""

import os
from pathlib import Path


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
