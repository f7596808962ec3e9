"""The models ``fm serve`` keeps loaded: the last few checkpoints asked for, by file and modification time.

torch is imported on the first ``get``, not with this module: the page answers before torch has loaded, and
the warm-up thread (``fmcli.serve.server``) makes that first ``get`` while the page is being looked at.
"""

import threading
from collections import OrderedDict
from typing import Any

from fmcli.serve.catalog import Entry


class ModelCache:
    """Loaded checkpoints, most recent last; one load at a time (a request during the warm-up's load waits for it
    instead of loading the same file twice)."""

    def __init__(self, device: str = "auto", size: int = 2):
        self.device, self.size = device, size
        self._items: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, entry: Entry) -> Any:
        """The ``LoadedModel`` of a catalog entry (checked and loaded on first use)."""
        from fmcli.device import resolve_device
        from fmcli.io.checkpoint import load_checkpoint

        key = (str(entry.path), entry.mtime_ns)
        with self._lock:
            if key not in self._items:
                self._items[key] = load_checkpoint(entry.path, device=resolve_device(self.device))
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]
