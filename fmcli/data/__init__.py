"""Data sets: MNIST (full and the embedded mini subset), image folders and 2-D toys."""
