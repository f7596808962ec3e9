"""The checkpoints ``fm serve`` may open: a table from a name (the path relative to the served folder) to a file,
built by scanning that folder. The page only ever sends a name, which is looked up here; nothing it sends is
joined to a path, so a file outside the folder cannot be reached (links that point out of it are left out).

Each entry's header is read when the folder is scanned (a few kB, no torch): its classes, default sampler and
``fm info`` show at once, and a damaged file is listed as unreadable, with the reason, while the rest serve.
"""

import threading
from dataclasses import dataclass
from pathlib import Path

from fmcli.errors import FMError
from fmcli.io.header import CheckpointMeta, read_header
from fmcli.serve.limits import ServeError

MAX_FILES = 500  # a folder with more checkpoints than this is listed in part (the newest runs first)


@dataclass(frozen=True)
class Entry:
    name: str  # relative to the served folder, with / separators
    path: Path  # the real file, inside the served folder
    mtime_ns: int
    meta: CheckpointMeta | None  # None when unreadable
    error: str | None = None  # why it cannot be read

    @property
    def label(self) -> str:
        return self.name if self.error is None else f"{self.name} (unreadable)"


class Catalog:
    """The checkpoints under ``root``: a folder of runs, one run folder, or a single .safetensors file."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.exists():
            raise FMError(f"{root} does not exist; give a checkpoint or a folder of runs")
        if self.root.is_file() and self.root.suffix != ".safetensors":
            raise FMError(f"{root} is not a .safetensors checkpoint; give a checkpoint or a folder of runs")
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self.scan()

    def scan(self) -> list[Entry]:
        """Read the folder again (checkpoints written since the page opened appear); returns every entry."""
        files = [self.root] if self.root.is_file() else self._files()
        entries = [self._entry(path) for path in files]
        # run folders by their last.safetensors first, newest first; then the step checkpoints, newest first
        entries.sort(key=lambda e: (not e.name.endswith("last.safetensors"), e.error is not None, -e.mtime_ns))
        with self._lock:
            self._entries = {entry.name: entry for entry in entries}
        return entries

    def _files(self) -> list[Path]:
        found = []
        for path in sorted(self.root.rglob("*.safetensors")):
            relative = path.relative_to(self.root)
            if any(part.startswith(".") for part in relative.parts):
                continue  # hidden folders (caches, .git) are not served
            try:
                real = path.resolve(strict=True)
            except OSError:  # a dangling link
                continue
            if real.is_relative_to(self.root) and real.is_file():
                found.append(path)
        return found[-MAX_FILES:]

    def _entry(self, path: Path) -> Entry:
        name = path.name if self.root.is_file() else path.relative_to(self.root).as_posix()
        real = path.resolve()
        try:
            mtime = real.stat().st_mtime_ns
            _, meta = read_header(real)
            return Entry(name, real, mtime, meta)
        except (FMError, OSError) as error:
            reason = str(error).replace(str(real), name).replace(str(path), name)  # no server path on the page
            return Entry(name, real, 0, None, reason[:300] or type(error).__name__)

    @property
    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    @property
    def usable(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.error is None]

    def get(self, name: object) -> Entry:
        """The readable entry called ``name``; ServeError for anything else (a path, an unknown or damaged file)."""
        if not isinstance(name, str) or not name:
            raise ServeError("choose a checkpoint")
        with self._lock:
            entry = self._entries.get(name)
        if entry is None and name in {e.name for e in self.scan()}:  # written since the last scan
            with self._lock:
                entry = self._entries.get(name)
        if entry is None:
            raise ServeError(
                f"unknown checkpoint {name[:120]!r}: fm serve opens only the checkpoints under the folder it was "
                f"started with ({len(self.usable)} there)"
            )
        if entry.error is not None:
            raise ServeError(entry.error)
        return entry
