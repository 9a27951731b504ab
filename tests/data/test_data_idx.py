import gzip
import struct

import numpy as np
import pytest

from laudnet.data.idx import read_idx, write_idx


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_round_trip(tmp_path, dtype, name):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5, 7)) * 50).astype(dtype)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_header_layout_is_big_endian(tmp_path):
    path = write_idx(tmp_path / "a", np.arange(6, dtype=np.int32).reshape(2, 3))
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x0c\x02"
    assert struct.unpack(">II", raw[4:12]) == (2, 3)
    assert struct.unpack(">6i", raw[12:]) == tuple(range(6))


def test_gzip_detected_from_content_not_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "plain-name", array, compress=True)
    np.testing.assert_array_equal(read_idx(path), array)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        read_idx(tmp_path / "nope.idx")


def test_bad_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"bad\.idx.*bad magic"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + b"\x00" * 8)  # unknown type code
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(path)


@pytest.mark.parametrize("cut", [2, 9, -1])
def test_truncated(tmp_path, cut):
    raw = write_idx(tmp_path / "full", np.arange(24, dtype=np.uint8).reshape(2, 3, 4)).read_bytes()
    path = tmp_path / "cut.idx"
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=r"cut\.idx.*truncated"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    raw = gzip.compress(write_idx(tmp_path / "full", np.arange(4000, dtype=np.int32)).read_bytes())
    path = tmp_path / "cut.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.gz.*truncated or corrupt gzip"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    raw = write_idx(tmp_path / "full", np.arange(4, dtype=np.uint8)).read_bytes()
    path = tmp_path / "long.idx"
    path.write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match="1 bytes after"):
        read_idx(path)


def test_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="cannot store dtype"):
        write_idx(tmp_path / "u16", np.zeros(3, np.uint16))
