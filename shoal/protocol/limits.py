"""Limits on what a peer may make us allocate, checked before allocating."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on one batch read from the wire.

    max_frames: frames in one batch, the header frame included.
    max_header_bytes: size of the msgpack header frame (frame 0).
    max_batch_bytes: sum of all frame lengths in one batch.
    """

    max_frames: int = 65_536
    max_header_bytes: int = 64 * MiB
    max_batch_bytes: int = 8 * GiB

    def __post_init__(self) -> None:
        if self.max_frames < 1 or self.max_frames > 2**32 - 1:
            raise ValueError(f"max_frames must be in 1..2**32-1, not {self.max_frames}")
        if self.max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be positive, not {self.max_header_bytes}")
        if self.max_batch_bytes < self.max_header_bytes:
            raise ValueError("max_batch_bytes must be at least max_header_bytes")


# Before the handshake completes a peer is a stranger: it may send only the
# small handshake messages, so it can make us allocate almost nothing.
HANDSHAKE_LIMITS = Limits(max_frames=1, max_header_bytes=4 * KiB, max_batch_bytes=4 * KiB)
DEFAULT_LIMITS = Limits()
