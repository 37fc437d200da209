"""The scheduler core against what a peer may send: registrations that clash,
and submissions too large to take in at once."""

from __future__ import annotations

from shoal.protocol import messages as m
from shoal.scheduler.model import Send
from tests.scheduler_harness import Harness


def test_a_data_address_already_served_is_refused() -> None:
    h = Harness()
    h.worker("a", address="tcp://10.0.0.1:7000")
    h.state.connected("w:b", "worker")
    msg = m.RegisterWorker(name="b", address="tcp://10.0.0.1:7000", nthreads=1)
    reason = "worker 'a' already serves data at 'tcp://10.0.0.1:7000'"
    assert h.handle("w:b", msg) == [Send("w:b", m.RegistrationRefused(reason=reason))]
    assert list(h.state.workers) == ["w:a"]
    assert h.state.by_address["tcp://10.0.0.1:7000"].name == "a"


def test_registration_checks_come_in_order_name_nthreads_address() -> None:
    h = Harness()
    h.worker("a", address="tcp://x:1")
    h.state.connected("w:z", "worker")
    both = m.RegisterWorker(name="a", address="tcp://x:1", nthreads=0)
    (refusal,) = h.handle("w:z", both)
    assert "named 'a'" in refusal.msg.reason
    (refusal,) = h.handle("w:z", m.RegisterWorker(name="z", address="tcp://x:1", nthreads=0))
    assert "nthreads" in refusal.msg.reason


def test_a_dying_workers_successor_may_take_its_address() -> None:
    h = Harness()
    h.worker("a", address="tcp://x:1", nanny=True)
    h.lose("w:a")  # waits for its nanny's report
    h.worker("a2", address="tcp://x:1")
    assert h.state.by_address["tcp://x:1"].name == "a2"
