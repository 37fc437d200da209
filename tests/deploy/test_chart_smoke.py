"""The chart's smoke test, beyond linting: render it, take the scheduler's and a
worker group's container command, args and environment from the manifests (the
token from the rendered Secret), run them as local processes on loopback, wait
on the readiness probes the chart declares, hit its liveness probes, run a
graph, and retire the worker as the kubelet would (SIGTERM) within the pod's
grace period.

Kubernetes' part is played here: the Service name resolves to 127.0.0.1,
0.0.0.0 binds to 127.0.0.1 (tests reach only loopback), each port the manifests
name is mapped to a free local port, `$(VAR)` in args is expanded from the
container's environment as the kubelet does, the image's init (tini) is left
out, and `shoal` is this checkout's.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from shoal import Client
from tests.deploy.chart import (
    NAMESPACE,
    RELEASE,
    kind,
    port_number,
    render,
    scheduler,
    worker_groups,
)
from tests.test_integration import ROOT, Proc

pytestmark = pytest.mark.timeout(180)

WAIT_S = 60.0
VALUES = {
    "workers": {
        "cpu": {
            "replicas": 1,
            "retireTimeout": 20,
            "resources": {
                "requests": {"cpu": "2", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "1Gi"},
            },
        }
    }
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Local:
    """Plays the cluster's part for one rendered release (see the module's doc)."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs
        self.secrets = {
            s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
            for s in kind(docs, "Secret")
        }
        service = next(s for s in kind(docs, "Service"))
        self.hosts = {
            f"{service['metadata']['name']}.{NAMESPACE}.svc": "127.0.0.1",
            "0.0.0.0": "127.0.0.1",
        }
        # Every port a manifest names: the Service's and each container's.
        numbers = {int(p["port"]) for p in service["spec"]["ports"]}
        for deployment in kind(docs, "Deployment"):
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                numbers |= {int(p["containerPort"]) for p in container.get("ports", [])}
        self.ports = {n: free_port() for n in sorted(numbers)}

    def env(self, container: dict, pod: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = self.expand(entry["value"], env)
                continue
            source = entry["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[entry["name"]] = self.secrets[ref["name"]][ref["key"]]
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[entry["name"]] = pod
            else:
                raise AssertionError(f"no stand-in for {source}")
        return env

    @staticmethod
    def expand(text: str, env: dict[str, str]) -> str:
        """$(VAR) -> its value, as the kubelet expands container args."""
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)

    def local(self, text: str) -> str:
        for host, here in self.hosts.items():
            text = text.replace(host, here)
        return re.sub(r"(?<=[:=])(\d+)\b", lambda m: str(self.ports.get(int(m[1]), m[1])), text)

    def command(self, container: dict, env: dict[str, str]) -> list[str]:
        words = [*container["command"], *container["args"]]
        assert words[:3] == ["tini", "--", "shoal"], words
        return [self.local(self.expand(w, env)) for w in words[3:]]

    def start(self, container: dict, pod: str) -> Proc:
        env = self.env(container, pod)
        assert "SHOAL_TOKEN" in env
        process_env = {k: v for k, v in os.environ.items() if k != "SHOAL_TOKEN"}
        process_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        )
        process_env.update(env)
        return Proc.start(*self.command(container, env), env=process_env)

    def probe(self, container: dict, which: str) -> tuple[str, int]:
        """The URL of a container's probe, and its timeout."""
        probe = container[which]["httpGet"]
        port = self.ports[port_number(container, probe["port"])]
        scheme = probe.get("scheme", "HTTP").lower()
        return f"{scheme}://127.0.0.1:{port}{probe['path']}", int(
            container[which].get("timeoutSeconds", 1)
        )


def get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_ready(local: Local, container: dict, proc: Proc) -> None:
    """Poll the readiness probe as the kubelet would, until it answers 200."""
    url, timeout = local.probe(container, "readinessProbe")
    deadline = time.monotonic() + WAIT_S
    while get(url, timeout) != 200:
        if proc.popen.poll() is not None:
            pytest.fail(f"{container['name']} exited ({proc.popen.returncode}):\n{proc.text}")
        if time.monotonic() > deadline:
            pytest.fail(f"{url} never ready:\n{proc.text}")
        time.sleep(0.1)


def square(x: int) -> int:
    return x * x


def test_the_rendered_scheduler_and_workers_run_a_graph() -> None:
    docs = render(VALUES)
    local = Local(docs)
    sched = scheduler(docs)["spec"]["template"]["spec"]["containers"][0]
    group = worker_groups(docs)["cpu"]["spec"]["template"]
    worker = group["spec"]["containers"][0]
    procs: list[Proc] = []
    try:
        procs.append(local.start(sched, f"{RELEASE}-shoal-scheduler-0"))
        wait_ready(local, sched, procs[0])
        procs.append(local.start(worker, f"{RELEASE}-shoal-worker-cpu-0"))
        wait_ready(local, worker, procs[1])
        for container in (sched, worker):
            url, timeout = local.probe(container, "livenessProbe")
            assert get(url, timeout) == 200, url
        # A client as one in the cluster would connect: the Service's address, the
        # token from the Secret.
        address = local.local(worker["args"][1])
        token = local.env(worker, "client")["SHOAL_TOKEN"]
        with Client(address, token=token, timeout=WAIT_S) as client:
            info = client.scheduler_info()["workers"]
            assert list(info) == [f"{RELEASE}-shoal-worker-cpu-0"]
            assert info[f"{RELEASE}-shoal-worker-cpu-0"]["nthreads"] == 2  # from the limit
            total = client.submit(sum, client.map(square, range(100)))
            assert total.result(timeout=WAIT_S) == sum(x * x for x in range(100))
        # Scale-down: the kubelet's SIGTERM; the worker retires within the grace period.
        grace = group["spec"]["terminationGracePeriodSeconds"]
        began = time.monotonic()
        procs[1].popen.send_signal(signal.SIGTERM)
        assert procs[1].popen.wait(grace) == 0
        assert time.monotonic() - began < grace
        assert "retired" in procs[1].text, procs[1].text
    finally:
        for proc in reversed(procs):
            proc.stop()
    for proc in procs:
        assert "Traceback" not in proc.text, proc.text
