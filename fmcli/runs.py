"""Run folders: where a new run goes, which run ``--resume`` continues, and the newest-checkpoint link.

A run folder holds ``step-NNNNNNN.safetensors`` checkpoints (the newest ``--keep``), ``last.safetensors``
(a relative symlink to the newest), ``config.json``, ``metrics.jsonl`` and ``samples/``. An existing
run is never overwritten: a new run without ``--out`` gets ``runs/<data>-2``, ``-3``, ...
"""

from pathlib import Path

from fmcli.errors import FMError
from fmcli.files import atomic_symlink

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
