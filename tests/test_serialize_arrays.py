"""The registry of array families: numpy, device arrays, and rows added from outside.

Device arrays are tested with objects exposing `__cuda_array_interface__` over
host memory and a stand-in cupy (tests/fakes/cupy.py) that counts the copies it
makes: device -> pinned host once on the sender, the frames as they are, host ->
device once on the receiver.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from shoal.errors import SerializationError
from shoal.protocol import codec, cuda, frames
from shoal.protocol import messages as m
from shoal.protocol.limits import Limits
from shoal.protocol.serialize import (
    array_families,
    deserialize,
    device_nbytes,
    register_array_family,
    serialize,
)
from shoal.protocol.taskspec import ArgSpec, Ref
from shoal.worker.events import Value
from shoal.worker.execute import Executor
from shoal.worker.state import _finished_from_payload
from shoal.worker.store import Place, Store
from tests.fakes import cupy as fake_cupy


class HostDeviceArray:
    """A "device" array of another library (numba, torch): only the interface."""

    def __init__(self, memory: np.ndarray) -> None:
        self.memory = memory

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        mem = self.memory
        strides = None if mem.flags.c_contiguous else mem.strides
        return {"shape": mem.shape, "typestr": mem.dtype.str, "data": (mem.ctypes.data, False),
                "strides": strides, "version": 3}  # fmt: skip


class HostOnlyTensor:
    """Like a torch tensor in host memory: its class has the attribute, it refuses."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        raise AttributeError("not on a device")


@pytest.fixture
def gpu_here(monkeypatch: pytest.MonkeyPatch) -> Any:
    """This process has cupy (the stand-in) and one device."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setenv("FAKE_CUPY_DEVICES", "1")
    for made in (fake_cupy.PINNED, fake_cupy.ALLOCATED, fake_cupy.MADE):
        made.clear()
    cuda.forget_devices()
    yield fake_cupy
    cuda.forget_devices()


@pytest.fixture
def no_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy fails
    cuda.forget_devices()


def _over_the_wire(payload: Any) -> Any:
    """The payload as a peer receives it: through the codec and the frame decoder."""
    decoder = frames.FrameDecoder(Limits())
    for buf in frames.encode_frames(codec.encode_batch([m.DataSent(data={"x": payload})])):
        decoder.feed(buf)
    (batch,) = decoder.pop()
    (msg,) = codec.decode_batch(batch)
    return msg.data["x"]


# -- the registry ----------------------------------------------------------------------------


def test_the_registry_holds_numpy_and_device_arrays() -> None:
    assert array_families()[:2] == ["numpy", "cuda"]


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(24, dtype="f8").reshape(4, 6),
        np.asfortranarray(np.arange(24, dtype="i2").reshape(4, 6)),
        np.arange(100)[::3],  # strided: made contiguous, still out of band
        np.zeros((0, 5), dtype="f4"),
        np.array(3.5),
        np.zeros(3, dtype=[("a", "<i4"), ("b", ">f8")]),
        np.arange(6, dtype=">u4"),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
    ],
    ids=["c", "fortran", "strided", "empty", "0-d", "structured", "big-endian", "datetime"],
)
def test_numpy_arrays_travel_out_of_band_and_come_back_equal(arr: np.ndarray) -> None:
    payload = serialize({"a": arr, "b": [arr]})
    assert len(payload.frames) == 2  # the stream, and the array's data once
    back: Any = deserialize(_over_the_wire(payload))
    assert back["a"] is back["b"][0]
    for got in (back["a"], back["b"][0]):
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        assert got.flags.writeable
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert back["a"].flags.f_contiguous


def test_a_contiguous_array_is_referenced_and_an_object_array_pickled() -> None:
    arr = np.arange(1000.0)
    assert np.shares_memory(np.frombuffer(serialize(arr).frames[1], "f8"), arr)
    objects = np.array([{"a": 1}, None], dtype=object)
    payload = serialize(objects)
    assert len(payload.frames) == 1  # pickled item by item, in band
    assert deserialize(payload)[0] == {"a": 1}  # type: ignore[index]


def test_a_row_added_from_outside_applies_wherever_its_arrays_sit() -> None:
    class Tile:
        def __init__(self, data: bytes, label: str) -> None:
            self.data, self.label = data, label

    seen: list[bool] = []

    def loads(header: Any, buffers: list[memoryview], host: bool) -> Tile:
        seen.append(host)
        return Tile(bytes(buffers[0]), header)

    register_array_family(
        "tile", lambda cls: cls is Tile, lambda t: (t.label, [t.data]), loads
    )  # fmt: skip
    try:
        payload = serialize({"k": (Tile(b"x" * 100, "left"), 3)})
        assert len(payload.frames) == 2 and bytes(payload.frames[1]) == b"x" * 100
        back: Any = deserialize(payload, host=True)
        assert back["k"][0].label == "left" and back["k"][0].data == b"x" * 100
        assert seen == [True]
    finally:
        from shoal.protocol import serialize as module

        del module._FAMILIES["tile"]
        module._BY_TYPE.clear()


def test_a_payload_naming_an_unknown_row_fails_in_words() -> None:
    from shoal.protocol import serialize as module

    register_array_family("gone", lambda cls: cls is Blob, lambda b: (None, [b.data]), Blob)
    try:
        payload = serialize(Blob(b"abc"))
    finally:
        del module._FAMILIES["gone"]
        module._BY_TYPE.clear()
    with pytest.raises(SerializationError, match="no array family 'gone' is registered"):
        deserialize(payload)


class Blob:
    def __init__(self, data: bytes, *rest: Any) -> None:
        self.data = data


# -- device arrays ------------------------------------------------------------------------------


def test_a_device_array_is_copied_once_into_pinned_memory_which_is_the_frame(gpu_here: Any) -> None:
    device = gpu_here.array(np.arange(12, dtype="f4").reshape(3, 4))
    payload = serialize(device)
    assert payload.typename == "tests.fakes.cupy.ndarray"
    assert len(payload.frames) == 2 and len(gpu_here.PINNED) == 1
    frame = np.frombuffer(payload.frames[1], "f4")
    assert np.shares_memory(frame, np.frombuffer(gpu_here.PINNED[0], "f4"))  # not copied again
    np.testing.assert_array_equal(frame, np.arange(12))


def test_the_receiver_allocates_on_its_own_device_from_the_received_frame(gpu_here: Any) -> None:
    memory = np.arange(20, dtype="i8").reshape(4, 5)
    received = _over_the_wire(serialize(HostDeviceArray(memory)))
    back = deserialize(received)
    assert isinstance(back, gpu_here.ndarray)  # made by cupy here, whatever sent it
    assert gpu_here.ALLOCATED == [back]
    np.testing.assert_array_equal(back.get(), memory)


def test_a_strided_device_array_is_made_contiguous_on_the_device_first(gpu_here: Any) -> None:
    memory = np.arange(40, dtype="f8").reshape(5, 8)[:, ::2]
    back: Any = deserialize(serialize(HostDeviceArray(memory)))
    np.testing.assert_array_equal(back.get(), memory)


def test_host_data_is_a_numpy_view_of_the_frame_and_needs_no_cupy(
    gpu_here: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = _over_the_wire(serialize(gpu_here.array(np.ones((2, 3), "f2"))))
    monkeypatch.setitem(sys.modules, "cupy", None)
    back = deserialize(received, host=True)
    assert type(back) is np.ndarray and back.dtype == "f2" and back.shape == (2, 3)
    assert np.shares_memory(back, np.asarray(received.frames[1]))
    assert not gpu_here.ALLOCATED


def test_without_cupy_a_device_array_fails_naming_the_fix(
    gpu_here: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _sent_device_array(gpu_here)
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(SerializationError) as caught:
        deserialize(sent, "result of 'x'")
    said = str(caught.value)
    assert "cannot deserialize result of 'x'" in said
    assert "a device array (tests.fakes.cupy.ndarray of <f4, shape (4,))" in said
    assert "cupy is not installed here" in said
    assert "pip install 'shoal[gpu]'" in said and "future.result(host=True)" in said


def _sent_device_array(cupy: Any) -> Any:
    return _over_the_wire(serialize(cupy.array(np.zeros(4, "f4"))))


def test_with_cupy_but_no_device_a_device_array_fails_naming_the_fix(
    gpu_here: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _sent_device_array(gpu_here)
    cuda.forget_devices()
    monkeypatch.setenv("FAKE_CUPY_DEVICES", "0")
    with pytest.raises(SerializationError, match=r"cupy finds no CUDA device here; install"):
        deserialize(sent)
    cuda.forget_devices()
    monkeypatch.setenv("FAKE_CUPY_DEVICES", "-1")  # the runtime raises
    with pytest.raises(SerializationError, match=r"no CUDA device here \(cudaErrorNoDevice"):
        deserialize(sent)


def test_a_process_with_device_arrays_but_no_cupy_cannot_send_them(no_cupy: None) -> None:
    with pytest.raises(SerializationError, match="cupy is not installed here"):
        serialize(HostDeviceArray(np.zeros(3)))


def test_an_instance_that_refuses_the_interface_is_pickled_as_usual() -> None:
    payload = serialize([HostOnlyTensor()])
    assert type(deserialize(payload)[0]) is HostOnlyTensor  # type: ignore[index]
    assert device_nbytes(HostOnlyTensor()) is None


def test_device_bytes_are_counted_in_arrays_and_shallow_containers(gpu_here: Any) -> None:
    device = gpu_here.array(np.zeros((10, 10), "f8"))
    assert device_nbytes(device) == 800
    assert device_nbytes(HostDeviceArray(np.zeros(3, "i4"))) == 12
    assert device_nbytes((device, np.zeros(5, "u1"), "text")) == 805
    assert device_nbytes({"w": device, "b": device}) == 1600
    assert device_nbytes([np.zeros(5), 1]) is None
    assert device_nbytes(np.zeros(5)) is None and device_nbytes("x") is None


# -- on a worker: values stay on the device ----------------------------------------------------


SEEN: list[Any] = []


def _use(arr: Any) -> float:
    """A task (pickled by reference: SEEN is this module's)."""
    SEEN.append(arr)
    return float(arr.sum())


def _task(func: Any, *args: Any) -> tuple[Any, Any]:
    walk = any(isinstance(a, Ref) for a in args)
    return serialize(func), serialize(ArgSpec(args, {}, walk))


def test_a_device_result_stays_on_the_device_and_a_task_here_gets_the_same_array(
    gpu_here: Any,
) -> None:
    executor = Executor()

    def make() -> Any:
        return fake_cupy.array(np.arange(6, dtype="f4"))

    finished, value = executor.run("x", *_task(make), ())
    assert finished.nbytes == 24 and finished.value is None
    assert finished.typename == "tests.fakes.cupy.ndarray"
    assert value.on_device and value.payload is None and not gpu_here.PINNED  # no host copy
    SEEN.clear()
    func, args = _task(_use, Ref("x"))
    done, _ = executor.run("y", func, args, (("x", value),))
    assert done.typename == "float" and SEEN[0] is value.obj  # the very same device array
    assert not gpu_here.PINNED and not gpu_here.ALLOCATED


def test_a_value_served_from_the_device_is_copied_for_each_answer_not_kept(gpu_here: Any) -> None:
    store = Store()
    value = Value(None, gpu_here.array(np.ones(8, "f4")), nbytes=32, typename="c", on_device=True)
    store.put("x", value)
    assert store.where("x") is Place.DEVICE and store.memory_bytes == 0
    assert store.bytes[Place.DEVICE] == 32
    first, second = store.payload("x"), store.payload("x")
    assert first is not None and second is not None and first is not second
    assert value.payload is None and len(gpu_here.PINNED) == 2
    assert store.spill(10**9).keys == []  # host memory pressure does not move it
    store.validate()
    store.drop("x")
    assert store.bytes[Place.DEVICE] == 0
    store.validate()


def test_a_device_value_received_here_keeps_no_host_copy_once_loaded(gpu_here: Any) -> None:
    sent = _over_the_wire(serialize(gpu_here.array(np.arange(4, dtype="i4"))))
    store = Store()
    value = Value(sent)
    store.put("x", value)
    assert store.where("x") is Place.MEMORY and store.memory_bytes == sent.nbytes
    obj = Executor(store=store).load("x", value)
    assert isinstance(obj, gpu_here.ndarray) and value.obj is obj
    assert value.on_device and value.payload is None
    assert store.where("x") is Place.DEVICE and store.memory_bytes == 0
    assert store.take_freed() == sent.nbytes  # its frames went
    store.validate()
    assert (value.nbytes, value.typename) == (sent.nbytes, "tests.fakes.cupy.ndarray")

    class Record:  # what the core reports for it, should the scheduler ask
        key, value = "x", None

    record: Any = Record()
    record.value = value
    report = _finished_from_payload(record)
    assert report.nbytes == sent.nbytes and report.value is None
    # Not held by a store (a value in flight): loading drops its frames all the same.
    loose = Value(_over_the_wire(serialize(gpu_here.array(np.zeros(2)))))
    Executor().load("y", loose)
    assert loose.on_device and loose.payload is None
