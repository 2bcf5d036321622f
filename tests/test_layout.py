"""The package's layering (issue 14), read from the source: no import cycle (function-level imports of the
package's own modules count too: a lazy import does not remove the dependency), no module importing another's
private name, no module over 600 lines, and Ray only in the orchestration layer."""

from __future__ import annotations

import ast
from pathlib import Path

from _paths import ROOT

PACKAGE = ROOT / "armada_ray"
MAX_LINES = 600
# the bottom layers: plain Python/torch, never Ray (only the orchestration modules import it)
NO_RAY = ("armada_ray.cache", "armada_ray.config", "armada_ray.fingerprint", "armada_ray.model", "armada_ray.plan",
          "armada_ray.tasks", "armada_ray.teachers", "armada_ray.tracking", "armada_ray.train.checkpoint",
          "armada_ray.train.data", "armada_ray.train.ds_config", "armada_ray.train.memory", "armada_ray.train.scoring")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for every import anywhere in module ``name``."""
    path = MODULES[name]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full, None) if full in MODULES else (base, a.name))
    return out


def _own(target: str) -> str | None:
    """The package module ``target`` resolves to (a name inside a module resolves to the module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycles_among_the_packages_modules():
    graph = {m: {t for t, _ in map(lambda i: (_own(i[0]), i[1]), _imports(m)) if t and t != m} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in MODULES:
        if m not in index:
            visit(m)
    assert cycles == []


def test_no_module_imports_another_modules_private_name():
    private = [(m, t, n) for m in MODULES for t, n in _imports(m)
               if n and n.startswith("_") and not n.startswith("__") and _own(t) not in (None, m)]
    assert private == []


def test_no_module_is_over_600_lines():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_the_bottom_layers_never_import_ray():
    offenders = [(m, t) for m in MODULES if m.startswith(NO_RAY) for t, _ in _imports(m)
                 if t == "ray" or t.startswith("ray.")]
    assert offenders == []
