"""Schemas of the custom resources the chart may render, which kubernetes-validate
does not know: the fields of prometheus-operator's ServiceMonitor and PodMonitor
and of KEDA's ScaledObject and TriggerAuthentication that the chart uses, written
from their API references. Strict: a field they do not have is an error."""

from __future__ import annotations

from typing import Any


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "required": list(required),
    }


_STR = {"type": "string"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = _obj(
    {"name": _STR, "namespace": _STR, "labels": _STRMAP, "annotations": _STRMAP}, ("name",)
)
_SELECTOR = _obj({"matchLabels": _STRMAP}, ("matchLabels",))
_NAMESPACES = _obj({"matchNames": {"type": "array", "items": _STR}})
_SECRET_KEY = _obj({"name": _STR, "key": _STR, "optional": {"type": "boolean"}}, ("name", "key"))
_AUTHORIZATION = _obj({"type": _STR, "credentials": _SECRET_KEY})
_TLS = _obj({"insecureSkipVerify": {"type": "boolean"}})
_ENDPOINT = {
    "port": _STR,
    "path": _STR,
    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
    "scheme": {"enum": ["http", "https"]},
    "tlsConfig": _TLS,
    "authorization": _AUTHORIZATION,
}
_SCALE_TARGET = _obj({"apiVersion": _STR, "kind": _STR, "name": _STR}, ("name",))


def _resource(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": _META, "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )


SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _obj(
            {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACES,
                "endpoints": {"type": "array", "minItems": 1, "items": _obj(_ENDPOINT, ("port",))},
            },
            ("selector", "endpoints"),
        ),
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _resource(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        _obj(
            {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACES,
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(_ENDPOINT, ("port",)),
                },
            },
            ("selector", "podMetricsEndpoints"),
        ),
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): _resource(
        "keda.sh/v1alpha1",
        "ScaledObject",
        _obj(
            {
                "scaleTargetRef": _SCALE_TARGET,
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(
                        {
                            "type": {"const": "metrics-api"},
                            "metadata": _obj(
                                {
                                    "url": {"type": "string", "pattern": "^https?://"},
                                    "valueLocation": _STR,
                                    "targetValue": _STR,
                                    "authMode": {"enum": ["bearer", "apiKey", "basic", "tls"]},
                                    "unsafeSsl": {"enum": ["true", "false"]},
                                },
                                ("url", "valueLocation", "targetValue"),
                            ),
                            "authenticationRef": _obj({"name": _STR}, ("name",)),
                        },
                        ("type", "metadata"),
                    ),
                },
            },
            ("scaleTargetRef", "triggers"),
        ),
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _resource(
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        _obj(
            {
                "secretTargetRef": {
                    "type": "array",
                    "items": _obj(
                        {"parameter": _STR, "name": _STR, "key": _STR}, ("parameter", "name", "key")
                    ),
                }
            },
            ("secretTargetRef",),
        ),
    ),
}
