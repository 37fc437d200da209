"""shoal.progress(...) follows the scheduler's reports; Client.dashboard_link."""

from __future__ import annotations

import io
import time
import urllib.request

import pytest

import shoal
from shoal import Client
from shoal.client.futures import Future
from shoal.client.progress import bar_text

pytestmark = pytest.mark.timeout(120)


def nap(x: int) -> int:
    time.sleep(0.005)
    return x


def boom(x: int) -> int:
    raise ValueError(x)


def hold(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2, threads_per_worker=1) as c:
        yield c


def test_progress_follows_the_futures_to_the_end(client: Client, monkeypatch) -> None:
    futures = client.map(nap, range(100))
    nested = {"some": futures[:50], "more": (futures[50:], futures[0])}
    out = io.StringIO()

    def asked(self: Future) -> bool:
        raise AssertionError("progress asked a future whether it is done")

    monkeypatch.setattr(Future, "done", asked)
    assert shoal.progress(nested, file=out) is True
    monkeypatch.undo()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith(f"[{'#' * 40}] 101/101 100%")
    assert 1 <= len(lines) <= 11  # without a terminal: a line per tenth at most
    assert all(f.done() for f in futures)


def test_progress_counts_errors_and_stops_at_its_timeout(client: Client) -> None:
    out = io.StringIO()
    failing = [client.submit(boom, i) for i in range(3)]
    assert shoal.progress(failing, file=out) is True
    assert "3/3 100%, 3 erred" in out.getvalue()
    slow = client.submit(hold, 5.0)
    start = time.monotonic()
    assert shoal.progress(slow, file=io.StringIO(), timeout=0.3) is False
    assert time.monotonic() - start < 3.0
    slow.cancel()


def test_progress_needs_futures() -> None:
    with pytest.raises(TypeError, match="needs futures"):
        shoal.progress([1, 2, 3])


def test_the_bar() -> None:
    assert bar_text(5, 10, 0, 1.25, width=10) == "[#####     ] 5/10  50% | 1.2 s"
    assert bar_text(10, 10, 2, 3.0, width=4) == "[####] 10/10 100%, 2 erred | 3.0 s"


def test_dashboard_link(client: Client) -> None:
    link = client.dashboard_link
    assert link.startswith("http://127.0.0.1:") and link.endswith("/")
    assert link == client.scheduler_info()["dashboard"]
    with urllib.request.urlopen(link, timeout=10) as page:
        assert b"<title>shoal dashboard</title>" in page.read()
    with urllib.request.urlopen(f"{link}dashboard/dashboard.js", timeout=10) as script:
        assert script.headers["Content-Type"].startswith("application/javascript")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{link}dashboard/nothing.js", timeout=10)
    assert missing.value.code == 404
    missing.value.close()


def test_no_dashboard_link_without_http() -> None:
    with Client(n_workers=1, http_port=None) as c:
        assert c.dashboard_link == ""
        assert c.scheduler_info()["dashboard"] == ""


def test_in_a_notebook_the_widget_follows_the_futures(client: Client, capsys) -> None:
    ipywidgets = pytest.importorskip("ipywidgets")
    futures = [*client.map(nap, range(60), pure=False), client.submit(boom, 1)]
    box = shoal.progress(futures, notebook=True)
    assert isinstance(box, ipywidgets.HBox)
    bar, label = box.children
    assert isinstance(bar, ipywidgets.IntProgress) and bar.max == 61
    deadline = time.monotonic() + 60
    while bar.bar_style not in ("success", "danger"):  # set once all are done
        assert time.monotonic() < deadline, f"the widget stopped at {bar.value}/61"
        time.sleep(0.02)
    assert bar.value == 61 and bar.bar_style == "danger"  # one erred
    assert "61/61" in label.value
