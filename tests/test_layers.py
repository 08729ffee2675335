"""The house rules of app/, checked on the import graph (standard library `ast` only).

Layers, lowest first; a unit may import only units of a strictly lower rank (or itself):

    0  app.errors
    1  app.domain
    2  app.config, app.logging_setup, app.metrics      (bottom modules: no app package below them)
    3  app.metrics_export                              (/metrics registries, process sampler)
    4  app.store
    5  app.market
    6  app.ai, app.broker                              (peers: never import each other)
    7  app.trading
    8  app.backtest
    9  app.container, app.extensions                   (wiring; peers)
    10 app.tasks                                       (Celery wiring and thin task wrappers)
    11 app.api, app.cli                                (peers; the API may start tasks)
    12 app (the create_app factory in app/__init__.py)
    13 app.make_celery                                 (the Celery entry point)

Every import counts: module level, inside functions and under TYPE_CHECKING. On top of that:
no import cycle between modules, no module over MAX_LINES lines, `flask.request` only in
app/api, and alpaca-py imported only by app/broker/alpaca*.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500

RANKS: dict[str, int] = {
    "errors": 0,
    "domain": 1,
    "config": 2,
    "logging_setup": 2,
    "metrics": 2,
    "metrics_export": 3,
    "store": 4,
    "market": 5,
    "ai": 6,
    "broker": 6,
    "trading": 7,
    "backtest": 8,
    "container": 9,
    "extensions": 9,
    "tasks": 10,
    "api": 11,
    "cli": 11,
    "": 12,  # app/__init__.py
    "make_celery": 13,
}


def modules(root: Path, package: str = "app") -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `root`."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module of the package, line) for every import in the file, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:  # `from app import metrics`: the submodule
                    yield target, node.lineno
                elif base in known:
                    yield base, node.lineno


def unit(module: str, package: str = "app") -> str:
    """`app.ai.store` -> "ai"; `app.metrics` -> "metrics"; `app` -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == package else ""


def layer_violations(root: Path, package: str = "app") -> list[str]:
    known = modules(root, package)
    found = []
    for name, path in known.items():
        src = unit(name, package)
        if src not in RANKS:
            found.append(f"{name}: not placed in a layer (add it to RANKS)")
            continue
        for target, line in imports(path, name, known):
            dst = unit(target, package)
            if dst == src:
                continue
            if dst not in RANKS or RANKS[dst] >= RANKS[src]:
                found.append(
                    f"{path.relative_to(root)}:{line}: {name} imports {target} (up/sideways)"
                )
    return found


def import_cycles(root: Path, package: str = "app") -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    known = modules(root, package)
    graph = {n: sorted({t for t, _ in imports(p, n, known) if t != n}) for n, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def oversized(root: Path, package: str = "app", limit: int = MAX_LINES) -> list[str]:
    found = []
    for path in modules(root, package).values():
        lines = len(path.read_text().splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(root)}: {lines} lines")
    return found


def _external_imports(path: Path) -> Iterator[tuple[str, str, int]]:
    """(module, imported name or "", line) for every absolute import in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                yield node.module, alias.name, node.lineno


def flask_request_uses(root: Path, package: str = "app") -> list[str]:
    found = []
    for name, path in modules(root, package).items():
        if unit(name, package) == "api":
            continue
        for module, imported, line in _external_imports(path):
            if (module == "flask" and imported == "request") or module == "flask.request":
                found.append(f"{path.relative_to(root)}:{line}: imports flask.request")
        if "flask.request" in path.read_text():
            found.append(f"{path.relative_to(root)}: uses flask.request")
    return found


def alpaca_uses(root: Path, package: str = "app") -> list[str]:
    found = []
    for path in modules(root, package).values():
        rel = path.relative_to(root)
        if rel.parent == Path(package, "broker") and rel.name.startswith("alpaca"):
            continue
        for module, _, line in _external_imports(path):
            if module == "alpaca" or module.startswith("alpaca."):
                found.append(f"{rel}:{line}: imports {module} (alpaca-py stops in app/broker/)")
    return found


# --- the rules on the real app/ ----------------------------------------------------------


def test_every_import_goes_down_the_layers() -> None:
    assert layer_violations(ROOT) == []


def test_no_import_cycles() -> None:
    assert import_cycles(ROOT) == []


def test_no_module_over_the_line_cap() -> None:
    assert oversized(ROOT) == []


def test_only_the_api_touches_flask_request() -> None:
    assert flask_request_uses(ROOT) == []


def test_alpaca_py_stays_in_the_broker() -> None:
    assert alpaca_uses(ROOT) == []


def test_every_package_says_what_lives_there() -> None:
    for init in sorted((ROOT / "app").glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring"


# --- the checker itself can fail ---------------------------------------------------------


def _fake_app(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "app" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in [tmp_path / "app", *(tmp_path / "app").rglob("*")]:
        if directory.is_dir() and not (directory / "__init__.py").exists():
            (directory / "__init__.py").write_text("")
    return tmp_path


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    root = _fake_app(
        tmp_path,
        {
            "store/db.py": "def helper():\n    from app.trading.cycle import run\n",
            "trading/cycle.py": "from app.store.db import helper\n\ndef run(): ...\n",
        },
    )
    found = layer_violations(root)
    assert len(found) == 1
    assert "app.store.db imports app.trading.cycle" in found[0]


def test_a_sideways_import_between_peers_is_caught(tmp_path: Path) -> None:
    root = _fake_app(tmp_path, {"ai/model.py": "from app.broker import sim\n", "broker/sim.py": ""})
    assert layer_violations(root) != []


def test_type_checking_imports_count(tmp_path: Path) -> None:
    root = _fake_app(
        tmp_path,
        {
            "trading/summary.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from app.container import Services\n"
            ),
            "container.py": "",
        },
    )
    assert layer_violations(root) != []


def test_an_unplaced_module_is_reported(tmp_path: Path) -> None:
    root = _fake_app(tmp_path, {"services/thing.py": ""})
    assert any("not placed in a layer" in v for v in layer_violations(root))


def test_a_cycle_inside_a_package_is_caught(tmp_path: Path) -> None:
    root = _fake_app(
        tmp_path,
        {
            "backtest/engine.py": "from app.backtest import metrics\n",
            "backtest/metrics.py": "def f():\n    from .engine import run\n",
        },
    )
    assert import_cycles(root) == [["app.backtest.engine", "app.backtest.metrics"]]


def test_size_request_and_alpaca_rules_fail(tmp_path: Path) -> None:
    root = _fake_app(
        tmp_path,
        {
            "trading/big.py": "x = 1\n" * (MAX_LINES + 1),
            "trading/view.py": "from flask import request\n",
            "market/feed.py": "from alpaca.data.historical import StockHistoricalDataClient\n",
            "broker/alpaca_data.py": "import alpaca\n",
            "api/views.py": "from flask import request\n",
        },
    )
    assert oversized(root) == [f"app/trading/big.py: {MAX_LINES + 1} lines"]
    assert [v.split(":")[0] for v in flask_request_uses(root)] == ["app/trading/view.py"]
    assert [v.split(":")[0] for v in alpaca_uses(root)] == ["app/market/feed.py"]


@pytest.mark.parametrize("module", ["app.ai.store", "app.metrics", "app"])
def test_units(module: str) -> None:
    assert unit(module) in RANKS
