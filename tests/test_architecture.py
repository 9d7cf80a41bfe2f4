"""The import layers of ``app/`` (who may import whom), held by a scan of every module's imports.

Each layer imports only the ones below it:

1. base: settings, clocks, logs, metrics, tracing, secret masking, lifecycle thresholds;
2. core (``app/core/``): framework-free definitions;
3. storage (``app/storage/``);
4. domain services and queries (``app/domain/*`` except ``routes.py``) and the engine (``app/engine/``);
5. the HTTP edge: ``app/http/``, ``app/security/``, each domain's ``routes.py`` (it reaches the runtime through the
   application's state and names what it needs as protocols, never importing the composition root);
6. the composition root: ``app/server.py``, ``app/runtime.py``, ``app/cli.py``, ``app/seed.py``.

Beside them, ``app/ops/`` (``jobgate ops``) is a client of the published HTTP contract: it imports
nothing of ``app`` but itself, and no server-side library (Litestar, SQLAlchemy, the database and
Redis drivers), so it can only learn about the gateway over HTTP.

Imports inside ``if TYPE_CHECKING:`` and inside functions count like any other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"

BASE = frozenset(
    {"app.settings", "app.instants", "app.logs", "app.metrics", "app.telemetry", "app.sanitize", "app.thresholds"}
)
COMPOSITION_ROOT = ("app.server", "app.runtime", "app.cli", "app.seed")
FRAMEWORK = ("litestar",)

# What each layer must never import (a module or any module below it).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": (
        "app.storage", "app.http", "app.security", "app.domain", "app.engine", *COMPOSITION_ROOT,
        *FRAMEWORK, "sqlalchemy.ext.asyncio",
    ),
    "storage": ("app.http", "app.security", "app.domain", "app.engine", *COMPOSITION_ROOT, *FRAMEWORK),
    "domain": ("app.http", "app.security", *COMPOSITION_ROOT, *FRAMEWORK),
    "engine": ("app.http", "app.security", *COMPOSITION_ROOT, *FRAMEWORK),
    "security": ("app.domain", *COMPOSITION_ROOT),
    "http": COMPOSITION_ROOT,
    "edge": COMPOSITION_ROOT,
    "root": (),
    "ops": (
        "app.storage", "app.http", "app.security", "app.domain", "app.engine", "app.core", *COMPOSITION_ROOT,
        *FRAMEWORK, "sqlalchemy", "asyncpg", "aiosqlite", "redis", "alembic",
    ),
}

# Private names of the libraries (SQLAlchemy, its pool, Litestar) that no module may reach for.
PRIVATE_ATTRIBUTES = frozenset({"_bind_processors", "_result_columns", "_do_get", "_do_return_conn", "_parsers", "_new"})

# Known cases still to be removed; each entry names the file and what it still uses. Empty this
# list as the removals land (an entry that no longer matches is harmless).
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
    }
)


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    if module in COMPOSITION_ROOT:
        return "root"
    top = module.split(".")
    if top[:2] == ["app", "core"]:
        return "core"
    if top[:2] == ["app", "storage"]:
        return "storage"
    if top[:2] == ["app", "engine"]:
        return "engine"
    if top[:2] == ["app", "security"]:
        return "security"
    if top[:2] == ["app", "http"]:
        return "http"
    if top[:2] == ["app", "domain"]:
        return "edge" if top[-1] == "routes" else "domain"
    if top[:2] == ["app", "ops"]:
        return "ops"
    return "root"  # app/__init__.py


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _is_app_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.Module, module: str, is_package: bool, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from … import`` names, wherever it stands (in functions and
    under ``if TYPE_CHECKING:`` too); ``from package import submodule`` names the submodule."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                named = _is_app_module(full, root) or alias.name.startswith("_")
                found.append((node.lineno, full if named else base))
    return found


def scan_source(source: str, path: str, module: str, *, is_package: bool = False, root: Path = ROOT) -> list[Violation]:
    """The imports and attribute accesses of one module that break the rules."""
    tree = ast.parse(source, filename=path)
    layer = layer_of(module)
    violations: list[Violation] = []
    for line, target in imported_modules(tree, module, is_package, root):
        if _within(target, "litestar") and any(part.startswith("_") for part in target.split(".")[1:]):
            violations.append(Violation(path, line, f"import {target}"))
            continue
        if layer == "base":
            if _within(target, "app") and target != "app" and target not in BASE:
                violations.append(Violation(path, line, f"import {target}"))
            continue
        if layer == "ops" and _within(target, "app") and not _within(target, "app.ops"):
            violations.append(Violation(path, line, f"import {target}"))
            continue
        if any(_within(target, forbidden) for forbidden in FORBIDDEN[layer]):
            violations.append(Violation(path, line, f"import {target}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            violations.append(Violation(path, node.lineno, f"attribute {node.attr}"))
    return violations


def scan(root: Path = ROOT) -> list[Violation]:
    violations: list[Violation] = []
    for path in sorted((root / "app").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        violations += scan_source(
            path.read_text(), relative, module_name(path, root), is_package=path.name == "__init__.py", root=root
        )
    return violations


def _reported(violations: list[Violation]) -> list[str]:
    # Deduplicated by (file, what): one allow-list entry covers every line of a known case.
    return sorted({str(v) for v in violations if (v.path, v.what) not in ALLOWED})


def test_every_module_imports_only_the_layers_below_it() -> None:
    assert _reported(scan()) == []


def test_every_layer_holds_modules() -> None:
    layers = {layer_of(module_name(p)) for p in APP.rglob("*.py")}
    assert layers == {"base", "core", "storage", "domain", "engine", "security", "http", "edge", "root", "ops"}


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("app.engine.planted", "from app.http.problems import to_problem\n", "import app.http.problems"),
        ("app.engine.planted", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.runtime import Runtime\n",
         "import app.runtime"),
        ("app.engine.planted", "def later():\n    import litestar\n", "import litestar"),
        ("app.domain.jobs.service", "from app.security.caller import caller_of\n", "import app.security.caller"),
        ("app.domain.jobs.service", "from app import server\n", "import app.server"),
        ("app.storage.planted", "from app.domain.jobs import service\n", "import app.domain.jobs.service"),
        ("app.storage.planted", "from app.http.paging import Limit\n", "import app.http.paging"),
        ("app.core.planted", "from sqlalchemy.ext.asyncio import AsyncSession\n", "import sqlalchemy.ext.asyncio"),
        ("app.core.planted", "from app.storage.models import Job\n", "import app.storage.models"),
        ("app.settings", "from app.core.problems import Problem\n", "import app.core.problems"),
        ("app.security.planted", "from app.domain.audit import queries\n", "import app.domain.audit.queries"),
        ("app.security.planted", "from app.runtime import Runtime\n", "import app.runtime"),
        ("app.http.planted", "from app import server\n", "import app.server"),
        ("app.http.planted", "from litestar._parsers import parse_query_string\n", "import litestar._parsers"),
        ("app.http.planted", "from litestar import _parsers\n", "import litestar._parsers"),
        ("app.http.planted", "def f(session):\n    return session.sync_session._new\n", "attribute _new"),
        ("app.storage.planted", "def f(pool):\n    return pool._do_get()\n", "attribute _do_get"),
        ("app.ops.planted", "from app.storage.models import Job\n", "import app.storage.models"),
        ("app.ops.planted", "def later():\n    from app.domain.deadletter import service\n",
         "import app.domain.deadletter.service"),
        ("app.ops.planted", "from app.engine import worker\n", "import app.engine.worker"),
        ("app.ops.planted", "from app.settings import load_settings\n", "import app.settings"),
        ("app.ops.planted", "import sqlalchemy\n", "import sqlalchemy"),
        ("app.ops.planted", "from app.cli import main\n", "import app.cli"),
    ],
)
def test_the_scan_catches_a_planted_forbidden_import(module: str, source: str, expected: str) -> None:
    found = [v.what for v in scan_source(source, "planted.py", module)]
    assert found == [expected]


def test_the_scan_reads_files_under_app(tmp_path: Path) -> None:
    engine = tmp_path / "app" / "engine"
    engine.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (engine / "__init__.py").write_text("")
    (engine / "worker.py").write_text("from ..http import problems\n")
    (tmp_path / "app" / "http").mkdir()
    (tmp_path / "app" / "http" / "__init__.py").write_text("")
    (tmp_path / "app" / "http" / "problems.py").write_text("")
    assert [str(v) for v in scan(tmp_path)] == ["app/engine/worker.py:1: import app.http.problems"]


def test_allowed_imports_pass() -> None:
    source = (
        "from app.core.problems import Problem\nfrom app.storage.pages import fetch_page\n"
        "from app.domain.quotas import rules\nfrom app import metrics\n"
    )
    assert scan_source(source, "planted.py", "app.engine.planted") == []
    assert scan_source("from app.core.caller import Caller\n", "planted.py", "app.security.planted") == []


def test_the_ops_client_may_import_itself_and_client_libraries() -> None:
    source = "from app.ops.client import Gateway\nimport httpx\nfrom rich.table import Table\n"
    assert scan_source(source, "planted.py", "app.ops.planted") == []


def test_the_ops_client_loads_without_the_server_side() -> None:
    subprocess.run(
        [sys.executable, "-c", "import app.ops.commands, app.ops.client, app.ops.follow, app.ops.views, sys; "
         "loaded = {m.split('.')[0] for m in sys.modules}; "
         "assert not loaded & {'litestar', 'sqlalchemy', 'asyncpg', 'redis'}, loaded"],
        check=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize("module", ["app.engine.worker", "app.engine.reconciler"])
def test_the_engine_loads_without_the_web_framework(module: str) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import {module}, sys; assert 'litestar' not in sys.modules, 'litestar loaded'"],
        check=True,
        cwd=ROOT,
        timeout=60,
    )
