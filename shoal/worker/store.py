"""The one owner of a worker's values: each value's size, where it lives, its place
in the least-recently-used order; spilling to disk and reading back.

The worker core decides when to hold, drop and spill, and how much; the shell
carries that out here, and executor threads read values through `load`. Nothing
else fills or empties a Value. Spilled values are written as the serializer's
own frames (shoal.worker.spillfile), buffer by buffer, without copies.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from enum import StrEnum

from shoal.errors import ShoalError
from shoal.protocol.serialize import Serialized, deserialize, device_nbytes, serialize
from shoal.worker.events import NO_OBJECT, Key, Value
from shoal.worker.spillfile import check_compression, read_frames, unlink, write_frames

log = logging.getLogger(__name__)


class Place(StrEnum):
    """Where a held value lives. A new place is a member here and its moves in
    `_MOVES`, below. DEVICE: a GPU's memory (a cupy array, say; shoal.protocol.cuda):
    held as the object alone, not in host memory's LRU order, not spilled, and
    copied to the host only for each peer that asks."""

    MEMORY = "memory"
    DISK = "disk"
    DEVICE = "device"


class SpillFailed(ShoalError):
    """A value could not be written to disk: too large for the disk budget, or the
    disk is full or failing. The value stays in memory. `for_space`: it may fit
    once other spill files are removed."""

    def __init__(self, message: str, *, for_space: bool = False) -> None:
        super().__init__(message)
        self.for_space = for_space


@dataclasses.dataclass(slots=True, eq=False)
class Entry:
    """One held value. Only `Store._move` changes `place`."""

    key: Key
    value: Value
    nbytes: int
    place: Place = Place.MEMORY
    path: str = ""  # its spill file, while on disk
    file_bytes: int = 0  # bytes that file takes (less than nbytes when compressed)
    pins: int = 0  # running tasks reading it: it stays in memory meanwhile


@dataclasses.dataclass(slots=True)
class SpillReport:
    """What one `spill` did: keys moved to disk and their bytes; keys that could
    not be moved, with why."""

    keys: list[Key] = dataclasses.field(default_factory=list)
    nbytes: int = 0
    failed: dict[Key, str] = dataclasses.field(default_factory=dict)


class Store:
    """A worker's values by key, with their sizes and places.

    `directory` is where spill files go: a fresh folder is made inside it on the
    first spill (a temporary folder when None) and removed by `close()`.
    `disk_limit` bounds the bytes of spill files (0: only the disk's own size).
    `compression` names a codec in CODECS, or None.

    Thread-safe: the event loop holds, drops and spills; executor threads load.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        disk_limit: int = 0,
        compression: str | None = None,
    ) -> None:
        self.local_directory = os.fspath(directory) if directory is not None else None
        self.disk_limit = disk_limit
        self.compression = check_compression(compression)
        self._dir = ""
        self._entries: dict[Key, Entry] = {}
        # Keys in memory, least recently used first.
        self._lru: OrderedDict[Key, None] = OrderedDict()
        self.bytes: dict[Place, int] = dict.fromkeys(Place, 0)
        self.file_bytes = 0
        # Keys that could not be spilled, with why; those that did not fit in the
        # space left are tried again once a spill file is removed.
        self.failed: dict[Key, str] = {}
        self._for_space: set[Key] = set()
        self.freed = 0  # bytes of memory let go of since the last `take_freed`
        self.spilled_total = 0  # bytes ever written to disk
        self.read_back_total = 0  # bytes ever read back into memory
        self._files = itertools.count()
        self._lock = threading.RLock()

    # -- what is held -------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def where(self, key: Key) -> Place | None:
        entry = self._entries.get(key)
        return entry.place if entry is not None else None

    @property
    def memory_bytes(self) -> int:
        """Managed memory: the bytes of the values held in memory."""
        return self.bytes[Place.MEMORY]

    @property
    def disk_bytes(self) -> int:
        """The bytes of the values on disk, as they are in memory."""
        return self.bytes[Place.DISK]

    @property
    def held_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def failed_bytes(self) -> int:
        """Bytes of the values that could not be spilled."""
        entries = self._entries
        return sum(entries[key].nbytes for key in self.failed if key in entries)

    def take_freed(self) -> int:
        """Bytes of memory let go of since the last call (for trimming the heap)."""
        with self._lock:
            freed, self.freed = self.freed, 0
            return freed

    # -- holding and dropping ----------------------------------------------------

    def put(self, key: Key, value: Value) -> None:
        """Hold `value` in memory, as the most recently used. Its size is its
        payload's, else an estimate of its object's."""
        with self._lock:
            if key in self._entries:
                self._drop(key)
            place = Place.DEVICE if value.on_device else Place.MEMORY
            entry = Entry(key, value, nbytes_of(value), place)
            self._entries[key] = entry
            self.bytes[place] += entry.nbytes
            if place is Place.MEMORY:
                self._lru[key] = None

    def drop(self, key: Key) -> None:
        """Let go of `key`'s value, wherever it is; nothing if it is not held."""
        with self._lock:
            if key in self._entries:
                self._drop(key)

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key)
        self.bytes[entry.place] -= entry.nbytes
        self.failed.pop(key, None)
        self._for_space.discard(key)
        if entry.place is Place.MEMORY:
            del self._lru[key]
            self.freed += entry.nbytes
        elif entry.place is Place.DISK:
            self._remove_file(entry)
        entry.value.payload, entry.value.obj = None, NO_OBJECT

    def pin(self, keys: Iterable[Key]) -> None:
        """Running tasks read these values: keep them in memory until `unpin`."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.pins += 1

    def unpin(self, keys: Iterable[Key]) -> None:
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and entry.pins:
                    entry.pins -= 1

    # -- spilling -----------------------------------------------------------------

    def spill(self, nbytes: int) -> SpillReport:
        """Move least recently used values to disk until `nbytes` of memory are
        freed or none is left to move. Pinned values stay; values that cannot be
        written stay too, named in the report's `failed` (and not tried again
        until disk space is freed)."""
        report = SpillReport()
        with self._lock:
            for key in list(self._lru):
                if report.nbytes >= nbytes:
                    break
                entry = self._entries[key]
                if entry.pins or key in self.failed:
                    continue
                try:
                    self._move(entry, Place.DISK)
                except SpillFailed as exc:
                    self.failed[key] = report.failed[key] = str(exc)
                    if exc.for_space:
                        self._for_space.add(key)
                    continue
                report.keys.append(key)
                report.nbytes += entry.nbytes
        return report

    def _move(self, entry: Entry, to: Place) -> None:
        step = _MOVES.get((entry.place, to))
        if step is None:
            raise AssertionError(f"no move of {entry.key!r} from {entry.place} to {to}")
        step(self, entry)  # raises, changing nothing, when it cannot be done
        self.bytes[entry.place] -= entry.nbytes
        self.bytes[to] += entry.nbytes
        entry.place = to

    def _to_disk(self, entry: Entry) -> None:
        value = entry.value
        payload = value.payload
        if payload is None:
            try:
                payload = serialize(value.obj, f"value of {entry.key!r}")
            except ShoalError as exc:
                raise SpillFailed(f"cannot spill {entry.key!r}: {exc}") from None
        if self.disk_limit and self.file_bytes + entry.nbytes > self.disk_limit:
            larger = entry.nbytes > self.disk_limit
            raise SpillFailed(
                f"cannot spill {entry.key!r} ({entry.nbytes} bytes): "
                f"{'larger than' if larger else 'over what is left of'} the disk budget "
                f"of {self.disk_limit} bytes ({self.file_bytes} in use)",
                for_space=not larger,
            )
        path = os.path.join(self._directory(), f"{next(self._files)}.spill")
        try:
            size = write_frames(path, payload, self.compression)
        except OSError as exc:
            unlink(path)
            full = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise SpillFailed(
                f"cannot spill {entry.key!r} ({entry.nbytes} bytes) to {path}{full}: {exc}",
                for_space=bool(full),
            ) from None
        entry.path, entry.file_bytes = path, size
        self.file_bytes += size
        self.spilled_total += entry.nbytes
        del self._lru[entry.key]
        value.payload, value.obj = None, NO_OBJECT
        self.freed += entry.nbytes

    def _to_memory(self, entry: Entry) -> None:
        entry.value.payload = read_frames(entry.path)
        self.read_back_total += entry.nbytes
        self._remove_file(entry)
        self._lru[entry.key] = None

    def _to_device(self, entry: Entry) -> None:
        del self._lru[entry.key]
        entry.value.to_device()
        self.freed += entry.nbytes  # its frames, in host memory

    def _remove_file(self, entry: Entry) -> None:
        unlink(entry.path)
        self.file_bytes -= entry.file_bytes
        entry.path, entry.file_bytes = "", 0
        # Space was freed: values that did not fit may fit now.
        for key in self._for_space:
            del self.failed[key]
        self._for_space.clear()

    def _directory(self) -> str:
        if not self._dir:
            parent = self.local_directory
            if parent is not None:
                os.makedirs(parent, exist_ok=True)
            remove_stale_folders(parent or tempfile.gettempdir())
            self._dir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=parent)
        return self._dir

    # -- reading ------------------------------------------------------------------

    def load(self, key: Key, value: Value) -> object:
        """The object of a held value, read back from disk and unpickled if need be,
        once however many threads ask at once. A value not held here (a test's)
        is unpickled from its payload.

        Raises:
            SerializationError: the payload does not unpickle.
            OSError: its spill file cannot be read.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.value is value:
                if entry.place is Place.DISK:
                    self._move(entry, Place.MEMORY)
                if entry.place is Place.MEMORY:
                    self._lru.move_to_end(key)
            obj = value.obj
            if obj is not NO_OBJECT:
                return obj
            if value.lock is None:
                value.lock = threading.Lock()
        # Unpickled outside the store's lock: it runs user code, and can be slow.
        with value.lock:
            if value.obj is NO_OBJECT:
                assert value.payload is not None, f"value of {key!r} has neither payload nor object"
                value.obj = deserialize(value.payload, f"value of {key!r}")
                if device_nbytes(value.obj) is not None:
                    self._now_on_device(key, value)
            return value.obj

    def _now_on_device(self, key: Key, value: Value) -> None:
        """A value that arrived as frames is an array on the device now: the frames
        are not kept beside it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.value is value and entry.place is Place.MEMORY:
                self._move(entry, Place.DEVICE)
            else:
                value.to_device()

    def payload(self, key: Key) -> Serialized | None:
        """`key`'s payload for a peer, made now if it has none; a spilled value is
        read from its file and stays on disk. None if not held or not picklable."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.place is Place.DISK:
                return read_frames(entry.path)
            value = entry.value
            if entry.place is Place.DEVICE:  # a host copy for this answer, not kept
                try:
                    return serialize(value.obj, f"value of {key!r}")
                except ShoalError as exc:
                    log.warning("cannot serve %r: %s", key, exc)
                    return None
            self._lru.move_to_end(key)
            if value.payload is None:
                try:
                    value.payload = serialize(value.obj, f"value of {key!r}")
                except ShoalError as exc:
                    log.warning("cannot serve %r: %s", key, exc)
                    return None
            return value.payload

    # -- life -----------------------------------------------------------------------

    def close(self) -> None:
        """Drop everything and remove the spill folder."""
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = ""

    def validate(self) -> None:
        """Check the accounting: each place's bytes are the sum of its values', and
        memory plus disk is everything held.

        Raises:
            AssertionError: naming the broken invariant.
        """
        by_place = dict.fromkeys(Place, 0)
        for key, entry in self._entries.items():
            assert entry.key == key, f"{key!r} is filed under another key"
            by_place[entry.place] += entry.nbytes
            on_disk = entry.place is Place.DISK
            in_memory = entry.place is Place.MEMORY
            assert (key in self._lru) == in_memory, f"{key!r}: LRU vs {entry.place}"
            on_device = entry.place is Place.DEVICE
            assert entry.value.on_device == on_device, f"{key!r}: on_device vs {entry.place}"
            assert bool(entry.path) == on_disk, f"{key!r}: spill file vs {entry.place}"
            assert not on_disk or os.path.exists(entry.path), f"{key!r}: spill file gone"
            assert on_disk or entry.value.payload is not None or entry.value.obj is not NO_OBJECT
        assert by_place == self.bytes, f"bytes by place {self.bytes} != {by_place}"
        assert sum(by_place.values()) == self.held_bytes
        assert set(self._lru) <= set(self._entries), "LRU names a key not held"
        assert set(self.failed) <= set(self._entries), "a failure of a key not held"
        assert self._for_space <= set(self.failed), "a retry of a key that did not fail"
        files = sum(entry.file_bytes for entry in self._entries.values())
        assert files == self.file_bytes, f"file bytes {self.file_bytes} != {files}"


_MOVES: dict[tuple[Place, Place], Callable[[Store, Entry], None]] = {
    (Place.MEMORY, Place.DISK): Store._to_disk,
    (Place.DISK, Place.MEMORY): Store._to_memory,
    (Place.MEMORY, Place.DEVICE): Store._to_device,
}


# Spill folders are named for the process that made them, so that one left by a
# worker that was killed can be recognised and removed by the next.
SPILL_PREFIX = "shoal-spill-"


def remove_stale_folders(parent: str) -> None:
    """Remove the spill folders in `parent` of worker processes that are gone."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(SPILL_PREFIX) :].split("-", 1)[0]
        if entry.name.startswith(SPILL_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            log.info("removing the spill folder of a worker gone: %s", entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def nbytes_of(value: Value) -> int:
    """A value's size: its payload's bytes, or an estimate of its object's (the
    device bytes of a value on the device)."""
    if value.on_device:
        return value.nbytes
    if value.payload is not None:
        return value.payload.nbytes
    obj = value.obj
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return sys.getsizeof(obj)
