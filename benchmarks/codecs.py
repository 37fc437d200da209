"""shoal's message codec beside msgspec's, on the messages a task costs the scheduler.

For each task of a `map`, the scheduler decodes one `task-finished` from a
worker and encodes one `compute-task` to it and one `key-in-memory` to the
client. This times those three, in batches of BATCH as they travel, with
shoal's codec (msgpack, then the catalogue's validators: `shoal.protocol.codec`)
and with msgspec's msgpack codec decoding into typed, tagged structs that
declare the same fields and write the same bytes (the payloads as the same
extension types). Both check every field's type; msgspec does it in C.

    python -m benchmarks.codecs [--tasks N] [--repeat R]

Needs msgspec (in the `bench` extra). The figures are microseconds per
message (CPU time), the best of R runs; the machine's load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
import msgspec

from shoal.protocol import messages as m
from shoal.protocol.codec import EXT_FRAMES, EXT_INLINE, decode_batch, encode_batch
from shoal.protocol.serialize import Serialized, serialize

BATCH = 100  # messages per batch, about what a busy scheduler reads or writes per turn
TASKS = 20_000


# -- the same messages as msgspec structs ---------------------------------------------


class _Msg(msgspec.Struct, tag_field="op", array_like=False, omit_defaults=False):
    pass


class ComputeTask(_Msg, tag="compute-task"):
    key: str
    func: Serialized
    args: Serialized
    deps: tuple[str, ...] = ()
    values: dict[str, Serialized] = {}
    who_has: dict[str, tuple[str, ...]] = {}
    priority: tuple[int, ...] = ()
    nbytes: dict[str, int] = {}
    timeout: float = 0.0


class TaskFinished(_Msg, tag="task-finished"):
    key: str
    nbytes: int
    typename: str
    duration: float
    value: Serialized | None = None
    warned: tuple[tuple[str, str, str, int, str], ...] = ()


class KeyInMemory(_Msg, tag="key-in-memory"):
    key: str
    nbytes: int
    typename: str
    who_has: tuple[str, ...] = ()
    value: Serialized | None = None


def _ext(payload: object) -> msgspec.msgpack.Ext:
    """enc_hook: a payload as shoal writes it (small ones: ext 1, [typename, pickle])."""
    if type(payload) is not Serialized or not payload.inline:
        raise NotImplementedError(f"cannot encode {type(payload).__name__}")
    return msgspec.msgpack.Ext(EXT_INLINE, msgpack.packb([payload.typename, payload.frames[0]]))


def _payload(code: int, data: memoryview) -> Serialized:
    if code not in (EXT_INLINE, EXT_FRAMES):
        raise ValueError(f"unknown extension type {code}")
    name, blob = msgpack.unpackb(data, use_list=False, raw=False)
    return Serialized(sys.intern(name), (blob,))


# -- the traffic of one map ---------------------------------------------------------------


def traffic(n: int) -> dict[str, Any]:
    """The three kinds of message for `n` tasks, as shoal's and msgspec's objects."""
    func = serialize(abs, "function")
    value = serialize(7, "result")
    keys = [f"inc-{i:032x}" for i in range(n)]
    args = [serialize((i,), "arguments") for i in range(n)]
    worker = "tcp://127.0.0.1:40001"
    shoal_msgs = {
        "compute-task": [
            m.ComputeTask(key=k, func=func, args=a, priority=(0, i))
            for i, (k, a) in enumerate(zip(keys, args, strict=True))
        ],
        "task-finished": [
            m.TaskFinished(key=k, nbytes=5, typename="int", duration=1e-5, value=value)
            for k in keys
        ],
        "key-in-memory": [
            m.KeyInMemory(key=k, nbytes=5, typename="int", who_has=(worker,), value=value)
            for k in keys
        ],
    }
    spec_msgs = {
        "compute-task": [
            ComputeTask(key=k, func=func, args=a, priority=(0, i))
            for i, (k, a) in enumerate(zip(keys, args, strict=True))
        ],
        "task-finished": [
            TaskFinished(key=k, nbytes=5, typename="int", duration=1e-5, value=value) for k in keys
        ],
        "key-in-memory": [
            KeyInMemory(key=k, nbytes=5, typename="int", who_has=(worker,), value=value)
            for k in keys
        ],
    }
    return {"shoal": shoal_msgs, "msgspec": spec_msgs}


def batches(msgs: list[Any]) -> list[list[Any]]:
    return [msgs[i : i + BATCH] for i in range(0, len(msgs), BATCH)]


def best_us(run: Callable[[], object], count: int, repeat: int) -> float:
    """The fastest of `repeat` runs, in microseconds of this thread's CPU time per
    message (on a busy machine wall time also counts other processes' turns)."""
    best = float("inf")
    for _ in range(repeat):
        begin = time.thread_time()
        run()
        best = min(best, time.thread_time() - begin)
    return best / count * 1e6


def measure(n: int, repeat: int) -> dict[str, dict[str, float]]:
    msgs = traffic(n)
    encoder = msgspec.msgpack.Encoder(enc_hook=_ext)
    union = ComputeTask | TaskFinished | KeyInMemory
    decoder = msgspec.msgpack.Decoder(list[union], ext_hook=_payload)  # type: ignore[valid-type]
    out: dict[str, dict[str, float]] = {}
    for op in ("task-finished", "compute-task", "key-in-memory"):
        ours, theirs = batches(msgs["shoal"][op]), batches(msgs["msgspec"][op])
        our_frames = [[memoryview(f) for f in encode_batch(b)] for b in ours]
        their_bytes = [encoder.encode(b) for b in theirs]
        # The same bytes on the wire: each codec reads what the other wrote.
        assert decode_batch([memoryview(their_bytes[0])]) == ours[0]
        assert [x.key for x in decoder.decode(our_frames[0][0])] == [x.key for x in ours[0]]
        out[op] = {
            "shoal_encode_us": best_us(lambda o=ours: [encode_batch(b) for b in o], n, repeat),
            "msgspec_encode_us": best_us(
                lambda t=theirs: [encoder.encode(b) for b in t], n, repeat
            ),
            "shoal_decode_us": best_us(
                lambda f=our_frames: [decode_batch(b) for b in f], n, repeat
            ),
            "msgspec_decode_us": best_us(
                lambda b=their_bytes: [decoder.decode(x) for x in b], n, repeat
            ),
        }
    return out


def report(figures: dict[str, dict[str, float]], n: int, repeat: int) -> str:
    lines = [
        f"{n:,} messages of each kind in batches of {BATCH}, best of {repeat}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
        f"msgpack {msgpack.version}, msgspec {msgspec.__version__}",
        f"{'message':<16}{'':>4}{'shoal us':>10}{'msgspec us':>12}{'ratio':>8}",
    ]
    per_task = {"shoal": 0.0, "msgspec": 0.0}
    for op, row in figures.items():
        # The scheduler decodes task-finished and encodes the other two.
        way = "decode" if op == "task-finished" else "encode"
        for what in ("encode", "decode"):
            ours, theirs = row[f"shoal_{what}_us"], row[f"msgspec_{what}_us"]
            mark = "*" if what == way else " "
            lines.append(f"{op:<16}{what:>7}{mark}{ours:>7.2f}{theirs:>12.2f}{ours / theirs:>8.1f}")
        per_task["shoal"] += row[f"shoal_{way}_us"]
        per_task["msgspec"] += row[f"msgspec_{way}_us"]
    saved = per_task["shoal"] - per_task["msgspec"]
    lines.append(
        f"per task at the scheduler (the * rows): shoal {per_task['shoal']:.2f} us, "
        f"msgspec {per_task['msgspec']:.2f} us, {saved:.2f} us less"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.codecs", description=__doc__)
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(report(measure(args.tasks, args.repeat), args.tasks, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
