"""The imports point one way: every gateway module sits in a layer and imports only its own
layer and the ones below, and no modules import each other in a circle.

The layers are the ones docs/architecture.md describes; a new module must be given one here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"

# Bottom first. A unit is a top-level module or subpackage of gateway/.
LAYERS: tuple[tuple[str, ...], ...] = (
    # foundations: no gateway imports at all
    ("errors", "sse", "breaker", "budget", "prices", "capacity", "metrics", "logs",
     "propagation", "background"),
    # settings and sans-IO protocol code
    ("config", "openai", "spend", "trail", "redact", "dialects", "stream"),
    # infrastructure: connections, stores, the mock upstream, the HTTP client
    ("redisconn", "store", "spool", "keys", "ledger", "httpclient", "httppool",
     "mock"),
    # the engine and the services around it
    ("recording", "gate", "source", "deployments", "upstream", "relay", "guard", "router",
     "hedging", "eventlog", "resumable", "cache", "ratelimit", "stats", "bus", "load",
     "preflight", "manage"),
    # the aiohttp application
    ("web",),
    # processes and the command line
    ("server", "supervisor", "cli", "__main__"),
)  # fmt: skip
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gateway_imports(path: Path, modules: set[str]) -> set[str]:
    """The gateway modules ``path`` imports (``from gateway import x`` names the module x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("gateway"):
                continue
            for alias in node.names:
                qualified = f"{node.module}.{alias.name}"
                found.add(qualified if qualified in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway."))
    return {name for name in found if name in modules}


def unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: gateway_imports(path, modules) - {name} for name, path in paths.items()}


def test_every_module_has_a_layer() -> None:
    """A module nobody placed cannot be checked: each top-level unit is in LAYERS."""
    units = {unit(m) for m in import_graph()} - {""}
    assert units - set(LAYER_OF) == set()
    assert set(LAYER_OF) - units == set(), "LAYERS names a unit that no longer exists"


def test_no_module_imports_from_a_layer_above_it() -> None:
    """No upward arrow: a module's imports are in its own layer or below."""
    upward = [
        f"{module} ({LAYERS[LAYER_OF[unit(module)]][0]}…) imports {target}"
        for module, targets in import_graph().items()
        if unit(module)
        for target in targets
        if unit(target) and LAYER_OF[unit(target)] > LAYER_OF[unit(module)]
    ]
    assert upward == []


def test_no_import_cycles_between_units() -> None:
    """Within a layer, units may import each other, but never in a circle."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        here = unit(module)
        graph.setdefault(here, set()).update(unit(t) for t in targets if unit(t) not in ("", here))
    graph.pop("", None)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_every_module_is_at_most_400_lines() -> None:
    """A module that grows past 400 lines is a room to split (docs/architecture.md)."""
    long = {
        str(path.relative_to(ROOT)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 400
    }
    assert long == {}
