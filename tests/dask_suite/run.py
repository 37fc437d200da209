"""`make test-dask`: a selection of dask's own tests, on shoal and on dask's local scheduler.

Runs the selection twice, each in a pytest process of its own with
tests.dask_suite.plugin: once with a shoal LocalCluster as dask's scheduler
and once with dask's own, then prints pass/fail counts side by side and every
test that passes locally but not on shoal, with the reason when it is one that
no multi-process scheduler can pass (tests/dask_suite/known.py).

    python -m tests.dask_suite.run [--files FILE ...] [-k EXPR] [--out DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.dask_suite.known import reason_for

# The selection: paths inside the installed dask package.
SELECTION = (
    "tests/test_delayed.py",
    "bag/tests/test_bag.py",
    "array/tests/test_array_core.py",
    "array/tests/test_reductions.py",
    "array/tests/test_creation.py",
    "array/tests/test_slicing.py",
    "dataframe/tests/test_dataframe.py",
    "dataframe/tests/test_groupby.py",
)
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SIDES = ("local", "shoal")
OUTCOMES = ("passed", "failed", "error", "crashed", "skipped", "xfailed", "xpassed")


def dask_root() -> Path:
    import dask

    return Path(dask.__file__).resolve().parent


# A side whose test process dies (a crash) is started again past the test it died
# in, at most this many times.
MAX_RESTARTS = 20


def run_side(on: str, files: list[str], keyword: str | None, out: Path, timeout: float) -> dict:
    """`files` in pytest processes on side `on`; their outcomes by test.

    A process that dies in a test leaves that test "crashed" in the outcomes;
    the rest of the selection runs in a new process, without the tests done.
    """
    root = dask_root()
    journal = out / f"{on}.journal"
    journal.unlink(missing_ok=True)
    results = out / f"{on}.part.json"
    cmd = [
        sys.executable, "-m", "pytest", "-c", str(HERE / "pytest.ini"),
        "--rootdir", str(root.parent), "-p", "tests.dask_suite.plugin",
        f"--dask-on={on}", f"--dask-results={results}", f"--dask-journal={journal}",
        "-q", "-p", "no:randomly", *(["-k", keyword] if keyword else []),
        *[str(root / f) for f in files],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    began = time.monotonic()
    outcomes: dict[str, str] = {}
    calls = 0
    crashed: list[str] = []
    for _ in range(MAX_RESTARTS + 1):
        done = [f"--deselect={t}" for t in outcomes]
        with open(out / f"{on}.log", "a") as log:
            left = max(1.0, timeout - (time.monotonic() - began))
            proc = subprocess.run([*cmd, *done], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=left, check=False)  # fmt: skip
        if results.exists():
            found = json.loads(results.read_text())
            results.unlink()
            outcomes.update(found["outcomes"])
            calls += found["shoal_calls"]
            break
        last = _replay(journal, outcomes)
        if last is None:
            raise RuntimeError(f"pytest on {on} died before a test (exit {proc.returncode}): {out}")
        outcomes[last] = "crashed"
        crashed.append(last)
    found = {"outcomes": outcomes, "shoal_calls": calls, "crashed": crashed}
    found["seconds"] = time.monotonic() - began
    (out / f"{on}.json").write_text(json.dumps(found))
    return found


def _replay(journal: Path, outcomes: dict[str, str]) -> str | None:
    """Outcomes from the journal (every process of the side appends to it) into
    `outcomes`; the test the last process died in."""
    running = None
    if not journal.exists():
        return None
    for line in journal.read_text().splitlines():
        event, nodeid = json.loads(line)
        if event == "start":
            running = nodeid
        else:
            outcomes.setdefault(nodeid, event)
            running = None
    return running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="*", default=list(SELECTION))
    parser.add_argument("-k", dest="keyword", default=None)
    parser.add_argument("--out", default=None, help="keep logs and outcomes in this folder")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per side, seconds")
    parser.add_argument(
        "--reuse", action="store_true", help="take a side's outcomes from --out when present"
    )
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="shoal-dask-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    sides = {}
    for on in SIDES:
        kept, journal = out / f"{on}.json", out / f"{on}.journal"
        if args.reuse and kept.exists():
            sides[on] = {"seconds": float("nan"), **json.loads(kept.read_text())}
        elif args.reuse and journal.exists():  # a run still going, or stopped: what it did
            outcomes: dict[str, str] = {}
            for line in journal.read_text().splitlines():
                event, nodeid = json.loads(line)
                if event != "start":
                    outcomes[nodeid] = event
            sides[on] = {"seconds": float("nan"), "outcomes": outcomes, "shoal_calls": 0}
        else:
            sides[on] = run_side(on, args.files, args.keyword, out, args.timeout)
    import dask

    print(f"dask {dask.__version__}: {len(args.files)} files of its test suite")
    print(f"{'':10}" + "".join(f"{o:>9}" for o in OUTCOMES) + f"{'seconds':>9}")
    for on, found in sides.items():
        counts = Counter(found["outcomes"].values())
        row = "".join(f"{counts.get(o, 0):>9}" for o in OUTCOMES)
        print(f"{on:10}{row}{found['seconds']:>9.0f}")
    print(f"computations that reached shoal: {sides['shoal']['shoal_calls']}")
    for on, found in sides.items():
        for test in found.get("crashed", []):
            print(f"  {on}: the test process died in {test}")
    local, shoal = sides["local"]["outcomes"], sides["shoal"]["outcomes"]
    if args.reuse:  # compare the tests both sides have run
        both = local.keys() & shoal.keys()
        local = {t: o for t, o in local.items() if t in both}
        shoal = {t: o for t, o in shoal.items() if t in both}
        print(f"tests both sides ran: {len(both)}")
        for on, found in (("local", local), ("shoal", shoal)):
            counts = Counter(found.values())
            print(f"{on:10}" + "".join(f"{counts.get(o, 0):>9}" for o in OUTCOMES))
    worse = sorted(t for t, o in local.items() if o == "passed" and shoal.get(t) != "passed")
    better = sorted(t for t, o in shoal.items() if o == "passed" and local.get(t) != "passed")
    known = [(t, reason_for(t)) for t in worse if reason_for(t)]
    unknown = [t for t in worse if not reason_for(t)]
    print(f"pass locally, not on shoal: {len(worse)} ({len(known)} that no multi-process "
          f"scheduler can pass, {len(unknown)} others)")  # fmt: skip
    for test, reason in known:
        print(f"  cannot pass: {test}  -- {reason}")
    for test in unknown:
        print(f"  FAILS ON SHOAL: {test} ({shoal.get(test, 'not run')})")
    for test in better:
        print(f"  passes on shoal only: {test} (local: {local.get(test, 'not run')})")
    print(f"logs and outcomes: {out}")
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
