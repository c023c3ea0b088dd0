"""The package's structure holds: no import cycle, and the layers import only downwards.

Every ``import`` and ``from ... import`` in every module counts, those inside functions too
(a lazy import still makes one module depend on the other); only ``if TYPE_CHECKING:``
imports, which never run, do not."""
from __future__ import annotations

import ast
from pathlib import Path

import pixelwise

ROOT = Path(pixelwise.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The pixelwise modules ``name`` imports (a package's submodule where one is named)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # from pkg import submodule: the submodule; from module import name: the module
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # pixelwise.x.y.attr -> pixelwise.x.y
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_walk_sees_the_package():
    assert len(MODULES) > 80
    assert "pixelwise.inference.predict" in GRAPH["pixelwise.inference.batch"]
    assert "pixelwise.training.distributed" in GRAPH["pixelwise.training.sampling"]  # from . import


def test_no_import_cycle():
    assert find_cycle() is None


def offenders(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{name} imports {target}" for name in GRAPH
                  if name == layer or name.startswith(layer + ".")
                  for target in GRAPH[name] if target.startswith(forbidden))


def test_layers_import_only_downwards():
    training = ("pixelwise.training",)
    for layer in ("pixelwise.inference", "pixelwise.export", "pixelwise.serve",
                  "pixelwise.models", "pixelwise.fast", "pixelwise.data", "pixelwise.io",
                  "pixelwise.metrics", "pixelwise.losses", "pixelwise.devices"):
        assert offenders(layer, training) == [], layer
    assert offenders("pixelwise.models", ("pixelwise.fast",)) == []
    # running a model never needs the exporters (export/ may use inference/'s backends)
    for layer in ("pixelwise.inference", "pixelwise.training", "pixelwise.models"):
        assert offenders(layer, ("pixelwise.export",)) == [], layer


def test_predictor_is_the_bottom_of_inference():
    # batch, raster and video build on Predictor; it imports none of them, nor the CLI
    assert GRAPH["pixelwise.inference.predict"] & {
        "pixelwise.inference.batch", "pixelwise.inference.raster", "pixelwise.inference.video",
        "pixelwise.cli"} == set()
    for user in ("batch", "raster", "video"):
        assert "pixelwise.inference.predict" in GRAPH[f"pixelwise.inference.{user}"]


def test_the_package_root_is_the_entry_points_only():
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["__init__.py", "devices.py", "errors.py"]
