"""The dashboard in a real browser: Debian's Chromium, headless, driven by playwright.

The page is loaded while a graph runs; once it settles, the numbers on screen
must be the scheduler's. Screenshots are saved to the test's folder, of the
graph running and of the end; $SHOAL_DASHBOARD_SCREENSHOT, when set, gets
the first (`make dashboard-screenshot` writes docs/dashboard.png that way).
Chromium is installed by .ci/chromium.sh; where it is missing the test skips
and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from shoal import Client

CHROMIUM = "/usr/bin/chromium"
WAIT_S = 60.0
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.timeout(180)


def nap(x: int) -> int:
    time.sleep(0.02)
    return x


def total(values: list[int]) -> int:
    return sum(values)


def api(http: str, path: str) -> dict:
    with urllib.request.urlopen(f"{http}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def _browser_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install it with .ci/chromium.sh (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    return sync_playwright


def test_the_dashboard_shows_the_schedulers_numbers(tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    with Client(n_workers=2, threads_per_worker=1, no_worker_warning=0.5) as client:
        http = client.dashboard_link.rstrip("/")
        assert client.dashboard_link == client.scheduler_info()["dashboard"]
        parts = client.map(nap, range(300), key=[f"nap-{i}" for i in range(300)])
        loads = client.map(nap, range(100), key=[f"load-part-{i}" for i in range(100)])
        stuck = client.submit(nap, -1, resources={"GPU": 1}, key="needs-gpu-0")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a fresh user-data-dir
                executable_path=CHROMIUM,
                args=FLAGS,
                headless=True,
                viewport={"width": 1280, "height": 1000},
            )
            try:
                page = browser.new_page()
                page.goto(f"{http}/", wait_until="load")
                page.wait_for_function("Number(document.body.dataset.updates || 0) >= 2")
                running = tmp_path / "running.png"  # the graph part way through, as a rule
                page.screenshot(path=str(running), full_page=True)
                assert client.gather(parts) == list(range(300))
                assert client.gather(loads) == list(range(100))
                summed = client.submit(total, parts, key="total-0")
                assert summed.result(timeout=WAIT_S) == sum(range(300))
                expected = _settled(page, http)
                assert int(page.inner_text("#workers-count")) == 2
                assert int(page.inner_text("#threads-count")) == 2
                assert int(page.inner_text("#clients-count")) == expected["clients"]
                runs = int(page.inner_text("#runs-count"))
                assert runs == expected["runs"] == 401
                row = page.locator('#progress tr[data-prefix="nap"] td.numbers')
                assert row.inner_text() == "300 / 300"
                workers = page.locator("#workers tbody tr")
                assert workers.count() == 2
                names = sorted(workers.nth(i).get_attribute("data-worker") for i in range(2))
                assert names == ["local-0", "local-1"]
                warning = page.inner_text("#warnings")
                assert "GPU=1" in warning and "none of the 2 workers" in warning
                assert int(page.get_attribute("#stream", "data-runs") or 0) > 0
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                wanted = os.environ.get("SHOAL_DASHBOARD_SCREENSHOT")
                if wanted:
                    shutil.copyfile(running, wanted)
            finally:
                browser.close()
        stuck.cancel()


def _settled(page, http: str) -> dict:
    """Poll until the page shows the scheduler's counts (it polls once a second);
    returns the scheduler's answer the page matched."""
    deadline = time.monotonic() + WAIT_S
    while True:
        expected = api(http, "/api/v1/dashboard")
        shown = {s: int(page.inner_text(f"#count-{s}")) for s in expected["tasks"]}
        if shown == expected["tasks"] and int(page.inner_text("#runs-count")) == expected["runs"]:
            return expected
        if time.monotonic() > deadline:
            pytest.fail(f"the page shows {shown}, the scheduler {expected['tasks']}")
        time.sleep(0.2)
