"""Reading and writing what fm makes: checkpoints, pictures, and files written atomically.

    files.py       atomic writes and links, exclusive locks, the cache folder ($FM_CACHE_DIR)
    checkpoint.py  safetensors checkpoints that carry their own config; checked before anything is built
    images.py      PNG grids, folders of PNGs, .npz, 2-D plots, captioned frames, GIFs and filmstrips

May import: torch, safetensors, Pillow, numpy, ``fmcli.errors`` and ``fmcli.models`` (to rebuild a model
from a checkpoint's config). Nothing here trains, samples or parses options.
"""
