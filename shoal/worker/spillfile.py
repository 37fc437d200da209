"""Spill files: a value's serialized frames on disk, one file per value.

Frames are written from their own buffers and read into buffers of their own,
optionally compressed (lz4 or zstd, when installed). Only the store
(shoal.worker.store) calls these; they know nothing of keys or places.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from shoal.protocol.serialize import Serialized

# A spill file: magic, header length (4 bytes, little-endian), msgpack header,
# then each frame as stored.
MAGIC = b"SHSV"
_LENGTH = struct.Struct("<I")
# Frames smaller than this are stored as they are: compressing them saves little.
MIN_COMPRESS_BYTES = 4096
# A compressed frame is kept only if it is at most this fraction of the raw one.
COMPRESS_KEEP_RATIO = 0.9
# A frame larger than this is first tried on samples of this many bytes from its
# start, middle and end: data that does not compress costs no full pass.
PROBE_BYTES = 32 * 1024


def _codecs() -> dict[str, tuple[Callable[[Any], bytes], Callable[[Any], bytes]]]:
    """The compressors installed: name -> (compress, decompress)."""
    found: dict[str, tuple[Callable[[Any], bytes], Callable[[Any], bytes]]] = {}
    try:
        import lz4.frame

        found["lz4"] = (lz4.frame.compress, lz4.frame.decompress)
    except ImportError:
        pass
    try:
        import zstandard

        compressor, decompressor = zstandard.ZstdCompressor(), zstandard.ZstdDecompressor()
        found["zstd"] = (compressor.compress, decompressor.decompress)
    except ImportError:
        pass
    return found


CODECS = _codecs()


def check_compression(name: str | None) -> str | None:
    """A spill compression name: None (or 'none'), or an installed codec.

    Raises:
        ValueError: a codec that is unknown or not installed.
    """
    if name is None or name in ("", "none"):
        return None
    if name not in ("lz4", "zstd"):
        raise ValueError(f"spill compression must be lz4, zstd or none, not {name!r}")
    if name not in CODECS:
        package = "lz4" if name == "lz4" else "zstandard"
        raise ValueError(f"spill compression {name!r} needs the {package} package installed")
    return name


def write_frames(path: str, payload: Serialized, compression: str | None = None) -> int:
    """Write a payload's frames to a new file at `path`; the file's size.

    Each frame is written from its own buffer (no copy), or compressed with the
    codec named `compression` when that makes it at least COMPRESS_KEEP_RATIO
    smaller.

    Raises:
        OSError: the file cannot be written (a full disk among others).
    """
    codec = CODECS[compression] if compression else None
    stored: list[Any] = []
    layout = []
    for frame in payload.frames:
        view = memoryview(frame).cast("B")
        packed = None
        if codec is not None and view.nbytes >= MIN_COMPRESS_BYTES and _worth(codec, view):
            packed = codec[0](view)
            if len(packed) > view.nbytes * COMPRESS_KEEP_RATIO:
                packed = None
        stored.append(view if packed is None else packed)
        layout.append(
            (view.nbytes, len(packed) if packed is not None else view.nbytes, bool(packed))
        )
    header = msgpack.packb(
        {"typename": payload.typename, "codec": compression or "", "frames": layout}
    )
    size = len(MAGIC) + _LENGTH.size + len(header)
    with open(path, "xb", buffering=0) as f:
        _write_all(f, MAGIC + _LENGTH.pack(len(header)) + header)
        for part in stored:
            _write_all(f, part)
            size += memoryview(part).nbytes
    return size


def _worth(codec: tuple[Callable[[Any], bytes], Callable[[Any], bytes]], view: memoryview) -> bool:
    """Whether samples of a large frame compress enough to try the whole frame."""
    if view.nbytes <= 8 * PROBE_BYTES:
        return True
    middle = (view.nbytes - PROBE_BYTES) // 2
    samples = (view[:PROBE_BYTES], view[middle : middle + PROBE_BYTES], view[-PROBE_BYTES:])
    packed = sum(len(codec[0](sample)) for sample in samples)
    return packed <= 3 * PROBE_BYTES * COMPRESS_KEEP_RATIO


def _write_all(f: Any, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = f.write(view)
        view = view[written:]


def read_frames(path: str) -> Serialized:
    """The payload written to `path` by write_frames, each frame read into a
    buffer of its own.

    Raises:
        OSError: the file cannot be read, or is not a spill file.
    """
    with open(path, "rb", buffering=0) as f:
        head = _read_exactly(f, len(MAGIC) + _LENGTH.size)
        if bytes(head[: len(MAGIC)]) != MAGIC:
            raise OSError(errno.EINVAL, "not a shoal spill file", path)
        (length,) = _LENGTH.unpack(head[len(MAGIC) :])
        header = msgpack.unpackb(_read_exactly(f, length))
        frames: list[bytes | bytearray] = []
        for raw, size, compressed in header["frames"]:
            data = _read_exactly(f, size)
            if compressed:
                codec = CODECS.get(header["codec"])
                if codec is None:
                    raise OSError(errno.EINVAL, f"spill codec {header['codec']!r} missing")
                data = bytearray(codec[1](data))
                if len(data) != raw:
                    raise OSError(errno.EINVAL, "a spilled frame decompressed to another size")
            frames.append(data)
    return Serialized(header["typename"], frames)


def _read_exactly(f: Any, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    while view.nbytes:
        got = f.readinto(view)
        if not got:
            raise OSError(errno.EIO, "spill file ends early")
        view = view[got:]
    return buf


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
