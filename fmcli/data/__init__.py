"""Data sets: MNIST (full and the embedded mini subset), image folders and 2-D toys."""

DEFAULT_IMAGE_SIZE = 32  # image folders without --image-size (the CLI reads it without importing a loader)
