"""The package layers, read from the source: a lower layer never imports a higher one, and no
modules import each other in a cycle (docs/architecture.md draws the same picture)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# lowest first; a module may import its own layer and the ones below it
LAYERS = {
    "dsnet.core": 0,
    "dsnet.models": 1,
    "dsnet.data": 1,
    "dsnet.zoo": 2,
    "dsnet.cam": 3,
    "dsnet.evidence": 4,
    "app": 5,
}
FRONT_DOOR = "dsnet"  # dsnet/__init__.py: get_model & co., for users; nothing inside the project imports it


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {module_name(p, root): p for folder in ("dsnet", "app") for p in (root / folder).rglob("*.py")}
    if (root / "app.py").exists():
        found["app_main"] = root / "app.py"
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, at any depth (lazy imports in functions count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer(name: str) -> int | None:
    for prefix, rank in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if name == prefix or name.startswith(prefix + "."):
            return rank
    return None


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def back_edges(g: dict[str, set[str]]) -> list[str]:
    found = []
    for name, targets in g.items():
        if name in (FRONT_DOOR, "app_main"):
            continue
        for t in targets:
            if t == FRONT_DOOR:
                found.append(f"{name} -> dsnet (the front door)")
            elif layer(t) is not None and layer(name) is not None and layer(t) > layer(name):
                found.append(f"{name} (layer {layer(name)}) -> {t} (layer {layer(t)})")
    return sorted(found)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules; a package importing its own modules (its re-exports) does not count."""
    g = {k: {t for t in v if t != FRONT_DOOR and not t.startswith(k + ".")} for k, v in g.items() if k != FRONT_DOOR}
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for t in sorted(g.get(node, ())):
            if state.get(t) == "open":
                found.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    return found


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in graph() if m not in (FRONT_DOOR, "app_main") and layer(m) is None]
    assert not unplaced, f"modules outside the layers (add them to a package): {unplaced}"


def test_no_layer_imports_a_higher_one_or_the_front_door():
    found = back_edges(graph())
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checker_finds_a_back_edge_a_lazy_one_and_a_cycle(tmp_path):
    files = {
        "dsnet/__init__.py": "from dsnet.models import registry\n",
        "dsnet/core/__init__.py": "",
        "dsnet/cam/__init__.py": "",
        "dsnet/models/__init__.py": "",
        "dsnet/core/files.py": "def f():\n    from dsnet.cam import service  # lazy, still a back-edge\n",
        "dsnet/models/registry.py": "from . import nets\n",
        "dsnet/models/nets.py": "from .registry import x\nfrom dsnet import get_model\n",
        "dsnet/cam/service.py": "from dsnet.core.files import f\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    g = graph(tmp_path)
    assert back_edges(g) == [
        "dsnet.core.files (layer 0) -> dsnet.cam.service (layer 3)",
        "dsnet.models.nets -> dsnet (the front door)",
    ]
    assert ["dsnet.models.nets", "dsnet.models.registry", "dsnet.models.nets"] in cycles(g)
