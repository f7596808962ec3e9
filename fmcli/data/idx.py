"""Reader for IDX files, the format MNIST ships in (http://yann.lecun.com/exdb/mnist/).

Layout (all integers big-endian)::

    bytes 0-1   zero
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4*d bytes   size of each dimension (uint32)
    then        the elements, C order

Files may be gzip-compressed; that is detected from the gzip magic bytes (1f 8b), never from
the file name.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

from fmcli.errors import FMError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_bytes(path: str | Path) -> bytes:
    """The uncompressed contents of ``path``: gunzipped when it starts with the gzip magic."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise FMError(f"cannot read {path}: {error.strerror or error}") from None
    return maybe_gunzip(raw, str(path))


def maybe_gunzip(raw: bytes, source: str) -> bytes:
    """``raw`` decompressed when it starts with the gzip magic bytes, else unchanged."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise FMError(f"{source} is damaged gzip data ({error}); delete it and fetch it again") from None


def parse_idx(contents: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode uncompressed IDX bytes into an array of the header's shape and dtype (native byte order)."""
    if len(contents) < 4 or contents[0] != 0 or contents[1] != 0:
        raise FMError(f"{source} is not an IDX file (it does not start with two zero bytes)")
    type_code, ndim = contents[2], contents[3]
    if type_code not in IDX_DTYPES:
        raise FMError(f"{source}: unknown IDX element type 0x{type_code:02X}")
    header_size = 4 + 4 * ndim
    if len(contents) < header_size:
        raise FMError(f"{source} is truncated: its header needs {header_size} bytes, the file has {len(contents)}")
    shape = tuple(int(d) for d in np.frombuffer(contents, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(contents) != expected:
        state = "truncated" if len(contents) < expected else "longer than its header says"
        raise FMError(
            f"{source} is {state}: header {shape} of {dtype.name} needs {expected} bytes, the file has {len(contents)}"
        )
    data = np.frombuffer(contents, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a native-order, writable copy


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array."""
    return parse_idx(read_bytes(path), source=str(path))
