"""The Helm chart, checked offline: `helm lint --strict`, every manifest of a
matrix of values validated for the two newest Kubernetes versions that
kubernetes-validate knows, and assertions on the parsed manifests."""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

import pytest

from shoal.deploy.arguments import CONTAINER_SHARE
from shoal.deploy.options import parse_resources
from shoal.deploy.retire import NANNY_MARGIN_S
from tests.deploy.chart import (
    CHART,
    MATRIX,
    NAMESPACE,
    RELEASE,
    arg,
    containers,
    helm,
    kind,
    matches,
    notes,
    one,
    port_number,
    render,
    scheduler,
    token_of,
    values_of,
    worker_groups,
)
from tests.deploy.crds import SCHEMAS

kv = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.timeout(120)

SERVICE = f"{RELEASE}-shoal-scheduler"


def newest_versions(n: int = 2) -> list[str]:
    versions = {v for v in kv.utils.all_versions() if re.fullmatch(r"\d+\.\d+\.\d+", v)}
    return sorted(versions, key=lambda v: tuple(map(int, v.split("."))))[-n:]


@pytest.fixture(scope="module", params=sorted(MATRIX))
def case(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(values_of(request.param))


# -- lint and schemas ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_helm_lint_strict(name: str) -> None:
    report = helm.lint(str(CHART), values_of(name), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not report["errors"] and not problems, report


def test_the_matrix_covers_what_must_be_checked() -> None:
    assert {"default", "gpu", "metrics", "tls", "existing-secret", "autoscaling", "keda"} <= set(
        MATRIX
    )


def test_every_manifest_validates_for_the_newest_kubernetes_versions(
    case: tuple[str, list[dict]],
) -> None:
    name, docs = case
    versions = newest_versions()
    assert len(versions) == 2
    for doc in docs:
        schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:  # a custom resource: its own schema
            jsonschema.validate(doc, schema)
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.utils.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} on {version}: {exc}")


def test_custom_resource_schemas_are_strict() -> None:
    docs = render(values_of("metrics"))
    monitor = one(docs, "ServiceMonitor", SERVICE)
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])


@pytest.mark.parametrize(
    "values",
    [
        {"workers": {"cpu": {"replicas": "two"}}},
        {"workers": {"cpu": {"replica": 2}}},  # unknown key in a group
        {"workerDefaults": {"nthreads": 0}},
        {"workers": {"GPU_nodes": {}}},  # not a DNS label
        {"scheduler": {"port": "7786"}},
        {"scheduler": {"servce": {}}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"autoscaling": {"keda": {"enabled": "yes"}}},
        {"unknown": True},
        {"workers": {"cpu": {"resources": {"limits": {"cpu": "two"}}}}},
    ],
)
def test_schema_rejects_wrong_types_and_unknown_keys(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match="schema"):
        render(values)


def test_tls_without_a_secret_and_both_autoscalers_are_refused() -> None:
    with pytest.raises(helm.HelmError, match=r"tls\.secretName"):
        render({"tls": {"enabled": True}})
    with pytest.raises(helm.HelmError, match="not both"):
        render({"autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}})


# -- labels and selectors --------------------------------------------------------------------


def test_every_object_has_the_standard_labels(case: tuple[str, list[dict]]) -> None:
    _, docs = case
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], labels)
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_selectors_are_disjoint(case: tuple[str, list[dict]]) -> None:
    _, docs = case
    deployments = kind(docs, "Deployment")
    for d in deployments:
        selector = d["spec"]["selector"]["matchLabels"]
        assert matches(selector, d["spec"]["template"]["metadata"]["labels"]), d["metadata"]
    for a, b in itertools.permutations(deployments, 2):
        selector = a["spec"]["selector"]["matchLabels"]
        assert not matches(selector, b["spec"]["template"]["metadata"]["labels"]), (
            f"{a['metadata']['name']} selects the pods of {b['metadata']['name']}"
        )
    # The Service selects the scheduler's pods and no worker's.
    service = one(docs, "Service", SERVICE)
    selected = [
        d["metadata"]["name"]
        for d in deployments
        if matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert selected == [SERVICE]


def test_budgets_and_autoscalers_target_their_own_group() -> None:
    for case in ("everything", "autoscaling", "keda"):
        docs = render(values_of(case))
        groups = worker_groups(docs)
        for pdb in kind(docs, "PodDisruptionBudget"):
            chosen = [
                d
                for d in kind(docs, "Deployment")
                if matches(
                    pdb["spec"]["selector"]["matchLabels"],
                    d["spec"]["template"]["metadata"]["labels"],
                )
            ]
            assert len(chosen) == 1 and chosen[0]["metadata"]["name"] == pdb["metadata"]["name"]
        for scaler in kind(docs, "HorizontalPodAutoscaler") + kind(docs, "ScaledObject"):
            target = scaler["spec"]["scaleTargetRef"]["name"]
            group = scaler["metadata"]["labels"]["shoal.io/worker-group"]
            assert groups[group]["metadata"]["name"] == target
            # An autoscaled Deployment leaves its replicas to the autoscaler.
            assert "replicas" not in groups[group]["spec"]


# -- the token --------------------------------------------------------------------------------


def test_the_token_comes_only_from_the_secret(case: tuple[str, list[dict]]) -> None:
    name, docs = case
    existing = values_of(name).get("token", {}).get("existingSecret")
    secret_name = existing or f"{RELEASE}-shoal-token"
    key = values_of(name).get("token", {}).get("key", "token")
    secrets = kind(docs, "Secret")
    if existing:
        assert secrets == []
    else:
        assert [s["metadata"]["name"] for s in secrets] == [secret_name]
        token = token_of(docs)
        assert len(token) >= 32
        assert secrets[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # Nowhere else: not in a command line, not in a plain env value, not in any
        # other object (a probe header, an annotation).
        for doc in docs:
            if doc["kind"] != "Secret":
                assert token not in str(doc), f"the token appears in {doc['kind']}"
    for deployment, container in containers(docs):
        words = container.get("command", []) + container.get("args", [])
        assert not any(w.startswith("--token") for w in words), deployment["metadata"]["name"]
        env = {e["name"]: e for e in container["env"]}
        ref = env["SHOAL_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret_name, "key": key}
        assert "value" not in env["SHOAL_TOKEN"]
    for scaler_auth in kind(docs, "TriggerAuthentication"):
        assert scaler_auth["spec"]["secretTargetRef"][0]["name"] == secret_name


def test_each_render_makes_a_new_token_only_without_a_secret_to_keep() -> None:
    # Offline, `lookup` finds no Secret: each render makes a fresh random token.
    # In a cluster it finds the existing one and keeps it (see templates/secret.yaml).
    first, second = token_of(render()), token_of(render())
    assert first != second and re.fullmatch(r"[A-Za-z0-9]{48}", first)
    assert "lookup" in (CHART / "templates" / "secret.yaml").read_text()


# -- probes, ports and the scheduler's address --------------------------------------------------


def test_probes_are_on_the_http_port_and_liveness_is_lenient(case: tuple[str, list[dict]]) -> None:
    name, docs = case
    tls = values_of(name).get("tls", {}).get("enabled", False)
    for _, container in containers(docs):
        http_port = int(arg(container, "--http-port") or 0)
        assert http_port
        ready, alive = container["readinessProbe"], container["livenessProbe"]
        assert ready["httpGet"]["path"] == "/ready"
        assert alive["httpGet"]["path"] == "/health"
        for probe in (ready, alive):
            assert port_number(container, probe["httpGet"]["port"]) == http_port
            assert probe["httpGet"]["scheme"] == ("HTTPS" if tls else "HTTP")
        # A busy process is not killed: minutes of failures before a restart.
        assert alive["periodSeconds"] * alive["failureThreshold"] >= 120
        assert alive["timeoutSeconds"] >= 10
        assert "httpHeaders" not in alive and "httpHeaders" not in ready


def test_every_worker_group_joins_the_scheduler_service(case: tuple[str, list[dict]]) -> None:
    name, docs = case
    tls = values_of(name).get("tls", {}).get("enabled", False)
    service = one(docs, "Service", SERVICE)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    sched = scheduler(docs)["spec"]["template"]["spec"]["containers"][0]
    # The Service's ports lead to the scheduler's own ports.
    assert port_number(sched, ports["shoal"]["targetPort"]) == int(arg(sched, "--port") or 0)
    assert port_number(sched, ports["http"]["targetPort"]) == int(arg(sched, "--http-port") or 0)
    address = f"{'tls' if tls else 'tcp'}://{SERVICE}.{NAMESPACE}.svc:{ports['shoal']['port']}"
    groups = worker_groups(docs)
    assert groups, "no worker group"
    for group, deployment in groups.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:2] == ["worker", address], group
        assert arg(container, "--name") == "$(SHOAL_POD_NAME)"
        names = [e["name"] for e in container["env"]]
        assert names.index("SHOAL_POD_NAME") >= 0  # defined, so $(SHOAL_POD_NAME) expands
        listen = arg(container, "--listen") or ""
        assert listen.startswith("tls://" if tls else "tcp://")
        assert int(listen.rsplit(":", 1)[1]) == port_number(container, "data")
        if tls:
            assert arg(container, "--tls-ca") == "/etc/shoal/tls/ca.crt"


def test_the_grace_period_fits_the_retirement(case: tuple[str, list[dict]]) -> None:
    _, docs = case
    for group, deployment in worker_groups(docs).items():
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        retire = float(arg(container, "--retire-timeout") or 0)
        assert retire > 0, group
        assert spec["terminationGracePeriodSeconds"] >= retire + NANNY_MARGIN_S + 10
        assert container["command"][:2] == ["tini", "--"]  # SIGTERM reaches shoal


# -- workers' resources --------------------------------------------------------------------------


def test_threads_and_memory_are_derived_from_the_resources_unless_set() -> None:
    groups = worker_groups(render(values_of("autoscaling")))
    cpu = groups["cpu"]["spec"]["template"]["spec"]["containers"][0]
    assert arg(cpu, "--nthreads") == "1"
    assert int(arg(cpu, "--memory-limit") or 0) == int(2 * 2**30 * CONTAINER_SHARE)
    big = groups["big"]["spec"]["template"]["spec"]["containers"][0]
    assert arg(big, "--nthreads") == "4"  # the limit, rounded up
    assert int(arg(big, "--memory-limit") or 0) == int(16 * 2**30 * CONTAINER_SHARE)
    # Requests only: the CPU request decides; no memory limit: the worker reads
    # its cgroup itself.
    docs = render({"workerDefaults": {"resources": {"limits": None, "requests": {"cpu": "2500m"}}}})
    c = worker_groups(docs)["cpu"]["spec"]["template"]["spec"]["containers"][0]
    assert arg(c, "--nthreads") == "3" and arg(c, "--memory-limit") is None
    # Set: used as given.
    c = worker_groups(render(values_of("everything")))["cpu"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert arg(c, "--nthreads") == "3" and arg(c, "--memory-limit") == "6GiB"
    assert parse_resources(arg(c, "--resources") or "") == {"MEM": 6e9}


def test_the_gpu_group_asks_for_gpus_on_gpu_nodes() -> None:
    docs = render(values_of("gpu"))
    groups = worker_groups(docs)
    assert set(groups) == {"cpu", "gpu"}
    spec = groups["gpu"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # One worker per device the pod is given, each offering GPU=1 itself; the
    # container's memory is shared among them; one thread each unless set.
    assert arg(container, "--gpus") == "all"
    assert arg(container, "--resources") is None
    assert arg(container, "--nthreads") is None
    assert arg(container, "--memory-limit") == str(int(32 * 2**30 * 0.95))
    assert container["image"].endswith(":0.1.0-gpu")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["runtimeClassName"] == "nvidia"
    cpu = groups["cpu"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert arg(cpu["containers"][0], "--resources") is None
    assert "runtimeClassName" not in cpu and cpu["containers"][0]["image"].endswith(":0.1.0")


def test_groups_are_merged_over_the_defaults_and_can_be_turned_off() -> None:
    docs = render(
        {
            "workerDefaults": {"retireTimeout": 120},
            "workers": {"cpu": {"enabled": False}, "io": {"replicas": 5}},
        }
    )
    groups = worker_groups(docs)
    assert set(groups) == {"io"}
    io = groups["io"]
    assert io["spec"]["replicas"] == 5
    container = io["spec"]["template"]["spec"]["containers"][0]
    assert arg(container, "--retire-timeout") == "120"
    assert io["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 150


# -- optional parts ---------------------------------------------------------------------


def test_optional_parts_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert kinds == {"Deployment", "Service", "Secret", "ServiceAccount"}


def test_the_network_policy_lets_only_workers_and_clients_reach_the_scheduler() -> None:
    docs = render(values_of("everything"))
    policy = one(docs, "NetworkPolicy", SERVICE)
    sched_labels = scheduler(docs)["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], sched_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    peers = rules[0]["from"]
    worker_labels = [
        d["spec"]["template"]["metadata"]["labels"] for d in worker_groups(docs).values()
    ]
    selectors = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert any(all(matches(s, labels) for labels in worker_labels) for s in selectors)
    assert {f"{RELEASE}-shoal-client": "true"} in selectors
    assert not any(matches(s, sched_labels) for s in selectors)
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "notebooks"}}
    } in peers
    # The only other rule: the HTTP port, for the peers named (a Prometheus).
    assert [r["ports"] for r in rules[1:]] == [[{"port": "http", "protocol": "TCP"}]]


def test_metrics_ingress_and_autoscalers_point_at_the_right_ports() -> None:
    docs = render(values_of("everything"))
    monitor = one(docs, "ServiceMonitor", SERVICE)
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert (
        one(docs, "PodMonitor", f"{RELEASE}-shoal-workers")["spec"]["podMetricsEndpoints"][0][
            "port"
        ]
        == "http"
    )
    ingress = one(docs, "Ingress", SERVICE)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": SERVICE, "port": {"name": "http"}}
    docs = render(values_of("autoscaling"))
    for group, hpa in (
        (h["metadata"]["labels"]["shoal.io/worker-group"], h)
        for h in kind(docs, "HorizontalPodAutoscaler")
    ):
        bounds = {"cpu": (1, 20), "big": (0, 5)}[group]
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == bounds
        metric = hpa["spec"]["metrics"][0]["external"]
        assert metric["metric"]["name"] == "shoal_scheduler_desired_workers"
        assert metric["metric"]["selector"]["matchLabels"] == {"group": group}
        assert metric["target"] == {"type": "AverageValue", "averageValue": "1"}
    docs = render(values_of("keda"))
    scaled = one(docs, "ScaledObject", f"{RELEASE}-shoal-worker-cpu")
    assert [s["metadata"]["name"] for s in kind(docs, "ScaledObject")] == [
        f"{RELEASE}-shoal-worker-cpu"
    ]  # only the group named in autoscaling.groups
    assert worker_groups(docs)["io"]["spec"]["replicas"] == 3
    trigger = scaled["spec"]["triggers"][0]
    assert (
        trigger["metadata"]["url"]
        == f"http://{SERVICE}.{NAMESPACE}.svc:8787/api/v1/desired-workers"
    )
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 20)
    assert trigger["authenticationRef"]["name"] == f"{RELEASE}-shoal-token"


def test_notes_say_how_to_connect() -> None:
    text = notes()
    assert f"tcp://{SERVICE}.{NAMESPACE}.svc:7786" in text
    assert f"kubectl port-forward -n {NAMESPACE} svc/{SERVICE} 7786 8787" in text
    assert "SHOAL_TOKEN" in text and base64.b64encode(b"x")  # the token is fetched, not printed
