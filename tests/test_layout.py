"""The package's layout keeps its promises: no import circle anywhere in sasft/ (imports inside
functions included, since a late import only hides a circle), and the reading side never imports
the experiment's machinery."""

import ast
from pathlib import Path

import sasft

ROOT = Path(sasft.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every sasft module this file imports, wherever the import statement stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name` imports pkg.name when that is a module, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def graph() -> dict[str, set[str]]:
    paths = [p for p in ROOT.rglob("*.py") if "conf" not in p.relative_to(ROOT).parts]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def test_no_import_circle_in_the_package():
    edges, state, circles = graph(), {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_no_import_is_kept_late_to_hold_a_circle():
    late = [str(p) for p in ROOT.rglob("*.py") if "noqa: E402" in p.read_text()]
    assert late == []


def test_the_reading_side_imports_no_experiment_machinery():
    machinery = {"sasft.pipeline", "sasft.train", "sasft.model", "sasft.generation", "sasft.method",
                 "sasft.analyze", "sasft.evaluate"}
    edges = graph()
    reading = {m: edges[m] & machinery for m in edges if m.startswith("sasft.report")}
    assert {m: deps for m, deps in reading.items() if deps} == {}
