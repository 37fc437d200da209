"""Rendering the Helm chart (helm/shoal) offline for the deploy tests, and reading
what was rendered. Helm runs in-process through helm-python-sdk (Helm's Go SDK);
nothing here reaches a cluster."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

helm = pytest.importorskip("helm_python", reason="make check-deploy installs the deploy tools")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shoal"
RELEASE, NAMESPACE = "rel", "shoal"
# The matrix of values every check runs over: defaults, a GPU group, metrics on,
# TLS on, an existing Secret, autoscaling on (HPA, KEDA), everything optional on.
MATRIX = {path.name.removesuffix("-values.yaml"): path for path in sorted(CHART.glob("ci/*.yaml"))}


def values_of(case: str) -> dict[str, Any]:
    return yaml.safe_load(MATRIX[case].read_text()) or {}


def render(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> list[dict]:
    """Every object the chart renders with `values`, parsed, in template order."""
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    docs = []
    for template, text in sorted(out.items()):
        if template.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return out["shoal/templates/NOTES.txt"]


def kind(docs: list[dict], name: str) -> list[dict]:
    return [d for d in docs if d["kind"] == name]


def one(docs: list[dict], kind_: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind_ and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind_}/{name}: {len(found)} rendered"
    return found[0]


def containers(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, container) for every container of every Deployment."""
    for deployment in kind(docs, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


def worker_groups(docs: list[dict]) -> dict[str, dict]:
    """The worker Deployments, by group name."""
    return {
        d["metadata"]["labels"]["shoal.io/worker-group"]: d
        for d in kind(docs, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    }


def scheduler(docs: list[dict]) -> dict:
    return one(docs, "Deployment", f"{RELEASE}-shoal-scheduler")


def arg(container: dict, flag: str) -> str | None:
    """The value of `--flag=value` among a container's args, or None."""
    for a in container.get("args", []):
        if a.startswith(f"{flag}="):
            return a.split("=", 1)[1]
    return None


def token_of(docs: list[dict]) -> str:
    secret = one(docs, "Secret", f"{RELEASE}-shoal-token")
    return base64.b64decode(secret["data"]["token"]).decode()


def port_number(container: dict, port: str | int) -> int:
    """A probe's port, by name or number, as the container's port number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
