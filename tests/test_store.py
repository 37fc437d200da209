"""The worker's store: accounting after every operation (Hypothesis), spill and
read-back round trips, compression, a disk budget and a really full disk."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.protocol.serialize import deserialize, serialize
from shoal.worker import spillfile
from shoal.worker.events import NO_OBJECT, Value
from shoal.worker.heap import trim_heap
from shoal.worker.store import Place, Store, nbytes_of


def result(obj: object) -> Value:
    """A value as a task here makes it: object and payload both."""
    return Value(serialize(obj), obj)


def arrived(obj: object) -> Value:
    """A value as it comes from a peer: only its payload."""
    return Value(serialize(obj))


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


SAMPLES = {
    "numpy": np.arange(50_000, dtype="float64").reshape(250, 200),
    "numpy-strided": np.arange(40_000, dtype="int32")[::3],
    "bytes": os.urandom(100_000),
    "plain": {"a": [1, 2.5, "three", (4, None)], "b": {"nested": list(range(1000))}},
    "small": 7,
}


@pytest.mark.parametrize("compression", [None, "lz4"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("made", [result, arrived])
def test_spill_and_read_back_round_trip(tmp_path, name, made, compression) -> None:
    obj = SAMPLES[name]
    store = Store(tmp_path, compression=compression)
    value = made(obj)
    store.put("x", value)
    nbytes = store.memory_bytes
    assert nbytes == nbytes_of(value) > 0
    report = store.spill(1)
    assert report.keys == ["x"] and report.nbytes == nbytes and not report.failed
    assert store.where("x") is Place.DISK
    assert value.payload is None and value.obj is NO_OBJECT  # the memory is let go
    assert (store.memory_bytes, store.disk_bytes) == (0, nbytes)
    files = list(tmp_path.glob("shoal-spill-*/*.spill"))
    assert len(files) == 1 and store.file_bytes == files[0].stat().st_size
    store.validate()
    # A peer is served from the file; the value stays on disk.
    served = store.payload("x")
    assert served is not None and same(deserialize(served), obj)
    assert store.where("x") is Place.DISK
    # A task reads it back into memory.
    assert same(store.load("x", value), obj)
    assert store.where("x") is Place.MEMORY and (store.memory_bytes, store.disk_bytes) == (
        nbytes,
        0,
    )
    assert not list(tmp_path.glob("shoal-spill-*/*.spill")) and store.file_bytes == 0
    store.validate()
    store.close()
    assert not list(tmp_path.iterdir())


def test_compression_pays_on_compressible_data_only(tmp_path) -> None:
    store = Store(tmp_path, compression="lz4")
    store.put("zeros", result(np.zeros(1_000_000)))
    store.put("noise", result(np.random.default_rng(0).random(1_000_000)))
    store.spill(10**9)
    entries = store._entries
    assert entries["zeros"].file_bytes < entries["zeros"].nbytes / 20
    # Random floats do not compress: they are stored raw, not grown.
    assert entries["noise"].nbytes <= entries["noise"].file_bytes < entries["noise"].nbytes + 1024
    store.validate()
    store.close()


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="lz4, zstd or none"):
        Store(compression="gzip")


def test_spill_takes_least_recently_used_first_and_skips_pinned(tmp_path) -> None:
    store = Store(tmp_path)
    values = {k: result(np.full(1000, i)) for i, k in enumerate("abcd")}
    for key, value in values.items():
        store.put(key, value)
    store.load("a", values["a"])  # used: now the most recent
    store.pin(["b"])
    one = nbytes_of(values["c"])
    report = store.spill(2 * one)
    assert report.keys == ["c", "d"]
    report = store.spill(10 * one)
    assert report.keys == ["a"]  # b is pinned
    store.unpin(["b"])
    assert store.spill(one).keys == ["b"]
    store.validate()
    store.close()


def test_a_value_over_the_disk_budget_is_reported_and_kept(tmp_path) -> None:
    store = Store(tmp_path, disk_limit=50_000)
    big, small = result(np.zeros(10_000)), result(np.zeros(1_000))  # 80 kB, 8 kB
    store.put("big", big)
    store.put("small", small)
    report = store.spill(10**9)
    assert report.keys == ["small"]
    assert "larger than the disk budget of 50000 bytes" in report.failed["big"]
    assert store.where("big") is Place.MEMORY and store.failed_bytes == big.payload.nbytes
    assert store.load("big", big) is big.obj
    assert store.spill(10**9).keys == []  # not tried again
    store.validate()
    store.close()


def test_a_full_budget_is_reported_and_retried_once_space_is_freed(tmp_path) -> None:
    store = Store(tmp_path, disk_limit=20_000)
    for key in "abc":
        store.put(key, result(np.zeros(1_000)))  # about 8 kB each
    report = store.spill(10**9)
    assert report.keys == ["a", "b"]
    assert "over what is left of the disk budget" in report.failed["c"]
    store.drop("a")  # its file goes: there is room again
    assert store.spill(10**9).keys == ["c"]
    store.validate()
    store.close()


def test_a_write_error_is_reported_and_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path)
    value = result(np.zeros(10_000))
    store.put("x", value)

    def full(f, data):
        f.write(memoryview(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spillfile, "_write_all", full)
    report = store.spill(1)
    assert "the disk is full" in report.failed["x"]
    assert store.where("x") is Place.MEMORY and value.payload is not None
    assert not list(tmp_path.glob("shoal-spill-*/*.spill"))
    store.validate()
    store.close()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs, where this process may mount one (root on Linux)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], timeout=10, check=False)


def test_a_really_full_disk_is_reported(tiny_fs: Path) -> None:
    store = Store(tiny_fs)
    values = [result(np.ones(10_000) * i) for i in range(6)]  # 80 kB each, 480 kB in all
    for i, value in enumerate(values):
        store.put(i, value)
    report = store.spill(10**9)
    assert 1 <= len(report.keys) <= 3
    assert report.failed and all("the disk is full" in why for why in report.failed.values())
    assert store.memory_bytes + store.disk_bytes == sum(v.nbytes for v in store._entries.values())
    store.validate()
    for i, value in enumerate(values):  # everything still reads back right
        assert same(store.load(i, value), np.ones(10_000) * i)
    store.validate()
    store.close()


def test_threads_load_a_spilled_value_once(tmp_path) -> None:
    store = Store(tmp_path)
    value = arrived(np.arange(100_000))
    store.put("x", value)
    store.spill(1)
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(store.load("x", value))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 8 and all(obj is got[0] for obj in got)
    assert store.where("x") is Place.MEMORY
    store.validate()
    store.close()


def test_trim_heap_runs() -> None:
    assert trim_heap() in (True, False)


# -- accounting under random operations ------------------------------------------------

KEYS = st.sampled_from("abcdefgh")
SIZES = st.integers(min_value=0, max_value=5_000)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, SIZES, st.booleans()),
        st.tuples(st.just("drop"), KEYS),
        st.tuples(st.just("spill"), st.integers(min_value=0, max_value=60_000)),
        st.tuples(st.just("load"), KEYS),
        st.tuples(st.just("serve"), KEYS),
        st.tuples(st.just("pin"), KEYS),
        st.tuples(st.just("unpin"), KEYS),
    ),
    max_size=40,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, budget=st.sampled_from([0, 30_000]), compression=st.sampled_from([None, "lz4"]))
def test_accounting_holds_after_every_operation(tmp_path, ops, budget, compression) -> None:
    store = Store(tmp_path, disk_limit=budget, compression=compression)
    model: dict[str, tuple[Value, np.ndarray]] = {}  # what the store must hold
    try:
        for op in ops:
            kind, key = op[0], op[1]
            if kind == "put":
                array = np.full(op[2], len(model), dtype="uint8")
                value = result(array) if op[3] else arrived(array)
                store.put(key, value)
                model[key] = (value, array)
            elif kind == "drop":
                store.drop(key)
                model.pop(key, None)
            elif kind == "spill":
                before = store.memory_bytes
                report = store.spill(op[1])
                assert store.memory_bytes == before - report.nbytes
                assert all(store.where(k) is Place.DISK for k in report.keys)
            elif kind in ("load", "serve") and key in model:
                value, array = model[key]
                if kind == "load":
                    assert same(store.load(key, value), array)
                    assert store.where(key) is Place.MEMORY
                else:
                    payload = store.payload(key)
                    assert payload is not None and same(deserialize(payload), array)
            elif kind == "pin":
                store.pin([key])
            elif kind == "unpin":
                store.unpin([key])
            store.validate()
            held = sum(nbytes_of(Value(serialize(a))) for _, a in model.values())
            assert store.memory_bytes + store.disk_bytes == store.held_bytes == held
            assert len(store) == len(model)
            assert not budget or store.file_bytes <= budget
    finally:
        store.close()


def test_a_spill_folder_of_a_process_gone_is_removed_by_the_next(tmp_path) -> None:
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    gone = int(done.stdout)
    stale = tmp_path / f"shoal-spill-{gone}-abc"
    stale.mkdir()
    (stale / "0.spill").write_bytes(b"x")
    mine = tmp_path / f"shoal-spill-{os.getpid()}-def"
    mine.mkdir()
    other = tmp_path / "not-a-spill-folder"
    other.mkdir()
    store = Store(tmp_path)
    store.put("x", result(np.zeros(100)))
    store.spill(1)
    assert not stale.exists() and mine.exists() and other.exists()
    store.close()


def test_a_large_incompressible_frame_is_only_sampled(tmp_path, monkeypatch) -> None:
    compress, decompress = spillfile.CODECS["lz4"]
    sizes: list[int] = []

    def counting(data):
        sizes.append(memoryview(data).nbytes)
        return compress(data)

    monkeypatch.setitem(spillfile.CODECS, "lz4", (counting, decompress))
    store = Store(tmp_path, compression="lz4")
    store.put("noise", result(np.random.default_rng(1).random(1_000_000)))  # 8 MB
    store.put("zeros", result(np.zeros(1_000_000)))
    store.spill(10**9)
    frame = 8_000_000
    assert frame not in sizes[:3] and sizes.count(frame) == 1  # only zeros went whole
    assert all(size <= spillfile.PROBE_BYTES for size in sizes if size != frame)
    store.close()


def test_a_task_pins_its_inputs_only_while_it_runs(tmp_path, monkeypatch) -> None:
    from shoal.protocol import taskspec
    from shoal.protocol.taskspec import ArgSpec, Ref
    from shoal.worker.execute import Executor

    store = Store(tmp_path)
    dep = result(np.arange(1000))
    store.put("d", dep)
    seen: list[int] = []
    real_run = taskspec.run

    def run(function, spec, values):
        seen.append(store._entries["d"].pins)
        assert store.spill(10**9).keys == []  # pinned: it stays in memory
        return real_run(function, spec, values)

    monkeypatch.setattr(taskspec, "run", run)
    outcome, _ = Executor(store=store).run(
        "t", serialize(len), serialize(ArgSpec((Ref("d"),), {}, True)), (("d", dep),)
    )
    assert outcome.nbytes > 0 and seen == [1]
    assert store._entries["d"].pins == 0  # let go once it ended
    assert store.spill(10**9).keys == ["d"]
    store.close()
