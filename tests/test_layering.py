"""The import rules of ARCHITECTURE.md, checked on the AST: protocol code never sees Flask, only the
composition root and the CLI touch the store, and samlxml stands alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "broker"

# top-level broker modules/packages each layer may import (besides itself)
COMMON = {"model", "ports", "errors", "logs"}
ALLOWED: dict[str, set[str]] = {
    "samlxml": set(),
    "claims": {"model", "errors"},
    "upstream": COMMON | {"samlxml", "metrics", "trusted_keys"},
    "issuer": COMMON | {"audit", "trusted_keys"},
    "admin": COMMON | {"upstream", "claims", "samlxml", "issuer", "audit"},
    "login": COMMON | {"upstream", "claims", "samlxml", "audit", "metrics"},
    "store": COMMON,
    "devidp": COMMON | {"samlxml", "issuer"},
    "audit": COMMON,
    "metrics": set(),
    "trusted_keys": {"errors"},
    "settings": {"errors"},
    "model": set(),
    "ports": {"model"},
    "errors": set(),
    "logs": set(),
}
FLASK_ALLOWED = {"web", "app"}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "migrations" not in p.parts)


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_import_rules(path: Path) -> None:
    layer = _layer(path)
    for name in _imports(path):
        top = name.split(".")[0]
        if top in ("flask", "werkzeug"):
            assert layer in FLASK_ALLOWED, f"{path.name}: only web/ and app.py may import {top}"
        if top != "broker" or name == "broker":
            continue
        target = name.split(".")[1]
        if target == layer:
            continue
        if layer in ALLOWED:
            assert target in ALLOWED[layer], f"{layer} must not import broker.{target} ({path.name})"
        if target == "store":
            assert layer in ("app", "cli"), f"only app.py and cli.py import broker.store ({path})"
