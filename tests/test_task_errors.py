"""Task errors are typed records (TaskError), and error type names come from the
classes in shoal.errors, in one place (type_name)."""

from __future__ import annotations

import dataclasses

import pytest

from shoal import errors
from shoal.errors import DataLost, KilledWorker, NoValidWorker, TaskTimeout, type_name
from shoal.scheduler import replicas, stalls
from shoal.scheduler import state as scheduler_state
from shoal.scheduler.model import Status, TaskError
from shoal.scheduler.workers import killed_worker_error
from shoal.worker import state as worker_state
from tests.scheduler_harness import Harness


def test_type_names_are_derived_from_the_classes() -> None:
    # The wire spells them so: a peer written from docs/protocol.md relies on it.
    assert type_name(TaskTimeout) == "shoal.errors.TaskTimeout"
    assert scheduler_state.TIMEOUT_TYPENAME == worker_state.TIMEOUT_TYPENAME
    assert scheduler_state.TIMEOUT_TYPENAME == type_name(TaskTimeout)
    assert replicas.DATA_LOST == type_name(DataLost)
    assert stalls.NO_VALID_WORKER == type_name(NoValidWorker)
    assert type_name(ValueError) == "builtins.ValueError"


@pytest.mark.parametrize(
    ("typename", "expected"),
    [
        ("shoal.errors.KilledWorker", KilledWorker),
        ("shoal.errors.TaskTimeout", TaskTimeout),
        ("shoal.errors.InvalidTransition", None),  # a bug, not a ShoalError
        ("shoal.errors.type_name", None),
        ("builtins.ValueError", None),
        ("other.errors.KilledWorker", None),
    ],
)
def test_a_shoal_error_is_found_by_its_type_name(typename: str, expected: type | None) -> None:
    assert errors.shoal_error_named(typename) is expected


def test_a_task_error_is_a_frozen_record() -> None:
    error = killed_worker_error("k", [("w1", "SIGKILL")])
    assert (error.typename, error.traceback, error.exception, error.blame) == (
        "shoal.errors.KilledWorker",
        "",
        None,
        None,
    )
    assert "'w1' (SIGKILL)" in error.message
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.blame = "x"  # type: ignore[misc]


def test_blame_stays_with_the_first_task_that_failed() -> None:
    own = TaskError("builtins.ValueError", "boom", "tb")
    inherited = own.blamed_on("head")
    assert inherited.blame == "head" and own.blame is None
    assert (inherited.typename, inherited.message, inherited.traceback) == (
        "builtins.ValueError",
        "boom",
        "tb",
    )
    assert inherited.blamed_on("middle") is inherited  # shared down a cascade


def test_a_chain_that_errs_holds_typed_errors_blaming_its_head() -> None:
    h = Harness()
    h.worker("a")
    client = h.client()
    h.submit(client, {"k0": [], "k1": ["k0"], "k2": ["k1"]}, wanted=["k2"])
    h.err("k0")
    head, k1, k2 = (h.task(k).error for k in ("k0", "k1", "k2"))
    assert head == TaskError("ValueError", "boom", "Traceback: 'k0'", None, None)
    assert k1 == dataclasses.replace(head, blame="k0")
    assert k2 is k1  # one record for the whole cascade
    assert {h.status(k) for k in ("k0", "k1", "k2")} == {Status.ERRED}
