"""Data sets: MNIST (full and the embedded mini subset), image folders, captioned shapes and 2-D toys.

    base.py      ``ArrayDataset`` (uint8 images or float points, labels, class names, captions, attributes),
                 ``LoadOptions``
    resolve.py   from what the user typed (a name or a folder) to a loaded data set; content hashes
    listing.py   what is in a folder of images: classes, files, checks
    folder.py    an image folder, decoded into memory or through the cache
    captions.py  a folder's captions (metadata.jsonl / metadata.csv / NAME.txt), caption modes, summaries
    shapes.py    the built-in ``shapes``: coloured shapes drawn on the fly, with captions and held-out pairs
    cache.py     the decoded, memory-mapped, checked cache of image folders ($FM_CACHE_DIR/folders)
    decode.py    one image file to pixels (resize, crop, channels)
    mnist.py, idx.py, mini.py, toys.py   the other built-in data sets

May import: ``fmcli.io.files``, ``fmcli.registry``, ``fmcli.specs``, ``fmcli.errors``, torch, numpy, Pillow.
Nothing here knows about models, training or sampling.
"""

DEFAULT_IMAGE_SIZE = 32  # image folders without --image-size (the CLI reads it without importing a loader)
