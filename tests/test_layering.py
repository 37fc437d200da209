"""The layers, checked from the imports (every import statement, those inside
functions included, read from each module's syntax tree; nothing is imported).

- `shoal/protocol/` imports nothing of shoal but itself and `shoal.errors`.
- `client/`, `scheduler/` and `worker/` import none of each other, nor `deploy/`:
  only `deploy/` (and the package root, `shoal/__init__.py`) wires them
  together. `Client()` with no address reaches `shoal.deploy.local` through a
  loader that the root installs in `shoal.client.cluster`.
- The pure cores (scheduler/state.py and every module it mixes in or uses,
  worker/state.py and its helpers) import nothing that does I/O, waits or reads
  a clock: asyncio, socket, time, threading, selectors, subprocess.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import shoal

ROOT = Path(shoal.__file__).parent

# Modules of shoal any layer may import: shared types below every package.
# (`shoal.__version__` is the package's metadata, in the root that loads first anyway.)
SHARED = {"shoal.errors", "shoal.__version__"}
LAYERS = ("client", "scheduler", "worker")
PURE_CORES = [
    "scheduler/state.py",
    "scheduler/core.py",
    "scheduler/model.py",
    "scheduler/clients.py",
    "scheduler/replicas.py",
    "scheduler/workers.py",
    "scheduler/placement.py",
    "scheduler/queues.py",
    "scheduler/ingest.py",
    "scheduler/history.py",
    "scheduler/validate.py",
    "scheduler/stalls.py",
    "scheduler/roles.py",
    "scheduler/memory.py",
    "scheduler/tally.py",
    "scheduler/views.py",
    "worker/state.py",
    "worker/memory.py",
    "worker/events.py",
    "worker/validate.py",
    "worker/history.py",
    "worker/slots.py",
    "scheduler/keepers.py",
    "scheduler/restarts.py",
]
IMPURE = {"asyncio", "socket", "time", "threading", "selectors", "subprocess"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in `path`, relative ones resolved, with the
    names a `from X import a` brings as `X.a` as well (they may be submodules)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def all_modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_every_module_is_seen() -> None:
    names = {module_name(path) for path in all_modules()}
    assert {"shoal.protocol.schema", "shoal.scheduler.state", "shoal.worker.state"} <= names
    for core in PURE_CORES:
        assert (ROOT / core).exists(), core


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: module_name(p))
def test_layers_import_only_below_or_beside_them(path: Path) -> None:
    name = module_name(path)
    layer = name.split(".")[1] if name.count(".") else ""
    wrong = []
    for line, module in imports_of(path):
        if not within(module, "shoal") or module == "shoal":
            continue
        if any(within(module, shared) for shared in SHARED):
            continue
        target = module.split(".")[1]
        if layer == "protocol":
            ok = target == "protocol"
        elif layer in LAYERS:
            # The names brought by `from shoal import x` are checked as shoal.x.
            ok = target in (layer, "protocol", "errors")
        else:  # deploy/ and the package root wire everything together
            ok = True
        if not ok:
            wrong.append(f"{path.relative_to(ROOT.parent)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("core", PURE_CORES)
def test_the_pure_cores_do_no_io(core: str) -> None:
    path = ROOT / core
    wrong = [
        f"{core}:{line} imports {module}"
        for line, module in imports_of(path)
        if module.split(".")[0] in IMPURE
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_what_they_should() -> None:
    """The helpers themselves: a function-level import is found, a relative one resolved."""
    client = imports_of(ROOT / "client" / "client.py")
    assert any(within(m, "shoal.client") for _, m in client)
    tree_modules = {m for _, m in imports_of(ROOT / "scheduler" / "state.py")}
    assert "shoal.scheduler.validate" in tree_modules  # imported inside validate()
