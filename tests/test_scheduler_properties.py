"""Random graphs, workers, failures and departures: every wanted key ends in memory or erred."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.protocol import messages as m
from shoal.protocol.serialize import serialize
from shoal.scheduler.model import Command, Status
from tests.scheduler_harness import Harness, computed, freed, sent

TINY = serialize(1, "result")
# Shorter than a round trip (depth grows), about one, and much longer (depth 1).
DURATIONS = (1e-4, 0.0015, 0.1)
P, W, Q = Status.PROCESSING, Status.WAITING, Status.QUEUED


def ancestors(graph: dict[str, list[str]], key: str) -> set[str]:
    """`key` and every key it depends on, directly or not."""
    seen, stack = {key}, [key]
    while stack:
        for dep in graph[stack.pop()]:
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


class Cluster:
    """The harness plus what each worker holds, as the scheduler's commands left it."""

    def __init__(self, max_depth: int) -> None:
        # Few slots, so that ready tasks queue; the depth moves with the durations drawn.
        self.h = Harness(initial_depth=1, max_depth=max_depth)
        self.holding: dict[str, set[object]] = {}
        self.names = itertools.count()

    def join(self, nthreads: int) -> None:
        peer = self.h.worker(f"w{next(self.names)}", nthreads=nthreads)
        self.holding[peer] = set()
        self.apply(self.h.out)

    def leave(self, peer: str, politely: bool) -> None:
        del self.holding[peer]
        self.apply(self.h.handle(peer, m.WorkerLeaving()) if politely else self.h.lose(peer))

    def apply(self, out: list[Command]) -> None:
        for peer, keys in self.holding.items():
            keys.difference_update(freed(out, peer))
        # What the scheduler believes each worker holds is what it holds.
        for peer, keys in self.holding.items():
            assert {ts.key for ts in self.h.state.workers[peer].has_what} == keys, peer


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_graphs_always_finish(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 20), label="tasks")
    graph: dict[str, list[str]] = {}
    for i in range(n):
        deps = data.draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        graph[f"k{i}"] = [f"k{j}" for j in deps]
    keys = list(graph)
    wanted = data.draw(st.lists(st.sampled_from(keys), min_size=1, unique=True), label="wanted")
    retries = data.draw(st.dictionaries(st.sampled_from(keys), st.integers(0, 2)), label="retries")
    failures = data.draw(st.dictionaries(st.sampled_from(keys), st.integers(1, 3)), label="fails")
    cluster = Cluster(data.draw(st.integers(1, 3), label="max_depth"))
    h = cluster.h
    for nthreads in data.draw(st.lists(st.integers(1, 2), min_size=1, max_size=3)):
        cluster.join(nthreads)
    c = h.client()
    cluster.apply(h.submit(c, graph, wanted=wanted, retries=retries))
    attempts: Counter[str] = Counter()
    released: set[str] = set()
    for _ in range(40 * n + 40):
        busy = h.keys_in(P)
        if not busy:
            break
        action = data.draw(st.sampled_from(["finish"] * 8 + ["depart", "release"]))
        if action == "depart":
            cluster.leave(
                data.draw(st.sampled_from(sorted(h.state.workers))), data.draw(st.booleans())
            )
            cluster.join(data.draw(st.integers(1, 3)))
        elif action == "release":
            done = [k for k in wanted if k not in released and h.status(k) in ("memory", "erred")]
            if done:
                key = data.draw(st.sampled_from(done))
                released.add(key)
                cluster.apply(h.handle(c, m.ReleaseFutures(keys=(key,))))
        else:
            key = data.draw(st.sampled_from(busy))
            attempts[key] += 1
            if attempts[key] <= failures.get(key, 0):
                cluster.apply(h.err(key))
            else:
                peer = h.on(key)
                cluster.holding[peer].add(key)
                value = TINY if data.draw(st.booleans()) else None
                duration = data.draw(st.sampled_from(DURATIONS))
                cluster.apply(h.finish(key, value=value, duration=duration))
    assert not h.keys_in(P, W, Q), "stuck, or the loop bound is too small"

    doomed = {k for k in keys if failures.get(k, 0) > retries.get(k, 0)}
    reports = sent(h.log, c)
    for key in wanted:
        if key in released:
            continue
        culprits = ancestors(graph, key) & doomed
        if culprits:
            assert h.status(key) == "erred", key
            erred = [r for r in reports if type(r) is m.KeyErred and r.key == key]
            assert erred and all((r.blame or key) in culprits for r in erred), key
        else:
            assert h.status(key) == "memory", key
            assert any(type(r) is m.KeyInMemory and r.key == key for r in reports), key
    cluster.apply(h.handle(c, m.ReleaseFutures(keys=tuple(wanted))))
    assert h.state.tasks == {}
    assert all(not keys for keys in cluster.holding.values())
    assert all(not ws.processing and not ws.has_what for ws in h.state.workers.values())


def test_a_large_graph_in_chunks() -> None:
    chunk, chunks = 10_000, 10
    h = Harness(validate=False)
    peers = [h.worker(f"w{i}", nthreads=8) for i in range(4)]
    c = h.client()
    total = 0
    for j in range(chunks):
        graph = {
            f"c{j}-{i}": ([f"c{j - 1}-{i}", f"c{j - 1}-{(i + 1) % chunk}"] if j else [])
            for i in range(chunk)
        }
        out = h.submit(c, graph)
        assert not sent(out, c, m.GraphRejected)
        total += len(computed(out))
    assert len(h.state.tasks) == chunk * chunks
    assert total == sum(len(h.processing(p)) for p in peers) == 4 * 8 * h.state.placement.depth
    h.state.validate()
