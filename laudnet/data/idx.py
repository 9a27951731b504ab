"""Reader and writer for the IDX format of MNIST-style datasets (Fashion-MNIST among them).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), then one big-endian
uint32 per dimension, then the values in C order, big-endian. Files may be gzipped (``.gz``, detected from the content,
not the name). Format as described at http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type code -> big-endian numpy dtype
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").kind + str(dt.itemsize): code for code, dt in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"IDX file {path} is a truncated or corrupt gzip stream ({err})") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of native byte order.

    Args:
        path: the file.

    Returns:
        An array of the file's shape; uint8 files give uint8 arrays.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad magic number, unknown type code, or a file shorter or longer than its header says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in _DTYPES:
        raise ValueError(
            f"IDX file {path} has a bad magic number 0x{data[:4].hex()} (expected 0x0000TTDD with type code TT in "
            f"{', '.join(f'{c:02x}' for c in _DTYPES)}); is it an IDX file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, its header alone needs {header}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _DTYPES[code]
    count = int(np.prod(shape, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(data) < expected:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, shape {shape} needs {expected}")
    if len(data) > expected:
        raise ValueError(f"IDX file {path} is corrupt: {len(data) - expected} bytes after the data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write an array as an IDX file (used for tests and for exporting subsets).

    Args:
        path: destination; gzipped when ``compress`` is True, or when it is None and the name ends in ``.gz``.
        array: uint8, int8, int16, int32, float32 or float64 array with at most 255 dimensions.
        compress: force gzip on or off.

    Returns:
        The path written.
    """
    path = Path(path)
    array = np.asarray(array)
    key = array.dtype.kind + str(array.dtype.itemsize)
    if key not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, int32, float32 or float64")
    code = _CODES[key]
    payload = struct.pack(">2sBB", b"\x00\x00", code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
