"""Run folders: where a new run goes, which run ``--resume`` continues, the newest-checkpoint link, the lock.

A run folder holds ``step-NNNNNNN.safetensors`` checkpoints (the newest ``--keep``), ``last.safetensors``
(a relative symlink to the newest), ``config.json``, ``metrics.jsonl``, ``samples/`` and ``.lock``. An
existing run is never overwritten: a new run without ``--out`` gets ``runs/<data>-2``, ``-3``, ...

While a trainer works in a folder it holds ``.lock`` (``fmcli.io.files.exclusive_lock``): a second
``fm train --resume`` of the same run (a requeued cluster job beside a live one) is refused in one line
that names the process holding it. The kernel drops the lock when its process dies, however it dies, so
a killed run never blocks the next one.
"""

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fmcli.errors import FMError
from fmcli.io.files import LockHeld, atomic_symlink, exclusive_lock

LOCK = ".lock"
LAST = "last.safetensors"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}.safetensors"


def new_run_dir(out: str | None, data: str, root: Path = Path("runs")) -> Path:
    """``out`` when it holds no run yet (else an error), or the first free ``runs/<data name>[-N]``."""
    if out:
        run_dir = Path(out)
        if run_dir.exists() and any(run_dir.glob("*.safetensors")):
            raise FMError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --out"
            )
        return run_dir
    is_path = "/" in data or data.startswith((".", "~"))
    name = Path(data.rstrip("/\\")).expanduser().resolve().name if is_path else data
    stem = root / (name or "data")
    run_dir, n = stem, 1
    while run_dir.exists() and any(run_dir.iterdir()):
        n += 1
        run_dir = stem.with_name(f"{stem.name}-{n}")
    return run_dir


def find_latest_run(root: Path = Path("runs")) -> Path:
    """The run folder under ``root`` whose newest checkpoint was written last."""
    candidates = [p.parent for p in Path(root).glob(f"*/{LAST}")]
    if not candidates:
        raise FMError(f"--resume latest: no run with a {LAST} under {root}/")
    return max(candidates, key=lambda p: (p / LAST).stat().st_mtime)


def resume_target(resume: str, out: str | None = None) -> Path:
    """The checkpoint to continue from: a run folder's last.safetensors, a given file, or the newest run."""
    if resume == "latest":
        path = Path(out) if out else find_latest_run()
    else:
        path = Path(resume).expanduser()
    if path.is_dir():
        path = path / LAST
    if not path.exists():
        raise FMError(f"--resume {resume}: {path} does not exist (give a run folder, a checkpoint in it, or 'latest')")
    return path


def publish_checkpoint(run_dir: Path, path: Path, keep: int) -> None:
    """Point last.safetensors at ``path`` and delete all but the newest ``keep`` step checkpoints."""
    atomic_symlink(Path(run_dir) / LAST, Path(path).name)
    for stale in sorted(Path(run_dir).glob("step-*.safetensors"))[:-keep]:
        if stale != path:
            stale.unlink(missing_ok=True)


@contextmanager
def lock_run(run_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its lock for the ``with`` block (``enabled``: rank 0 only).

    A folder this call created is removed again when the block fails before anything was written into it, so a
    run refused for bad input leaves nothing behind.
    """
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    created = run_dir  # the outermost folder this call creates (runs/ itself, for a first run)
    while not created.parent.exists():
        created = created.parent
    created = None if run_dir.exists() else created
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(run_dir / LOCK, wait=False, holder="fm " + " ".join(sys.argv[1:])):
            yield
    except LockHeld as held:
        raise FMError(
            f"run folder {run_dir} is in use by {held.owner or 'another process'}; wait for it to "
            "finish or stop it, or train into another --out"
        ) from None
    except BaseException:
        if created is not None and {path.name for path in run_dir.iterdir()} <= {LOCK}:
            shutil.rmtree(created, ignore_errors=True)
        raise
