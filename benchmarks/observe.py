"""Polls a shoal scheduler's /metrics and /api/v1/dashboard every INTERVAL seconds,
as a Prometheus scraper and an open dashboard page do, until stdin ends; prints
"started" after the first poll and the number of requests made at the end.

    python -m benchmarks.observe http://127.0.0.1:PORT [INTERVAL]
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request


def main(argv: list[str]) -> int:
    http, interval = argv[0], float(argv[1]) if len(argv) > 1 else 1.0
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    since, requests = 0.0, 0
    while True:
        with urllib.request.urlopen(f"{http}/metrics", timeout=10) as answer:
            answer.read()
        with urllib.request.urlopen(f"{http}/api/v1/dashboard?since={since}", timeout=10) as answer:
            page = json.loads(answer.read())
        since = max([since, *(run["stop"] for run in page["stream"])])
        requests += 2
        if requests == 2:
            print("started", flush=True)
        if stop.wait(interval):
            break
    print(requests, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
