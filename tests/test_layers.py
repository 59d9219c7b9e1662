"""Both packages' layers: imports only go downward (as docs/architecture.md lists them), no cycle, no private
name across modules, and the light commands stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def _imports(path: Path) -> set[str]:
    """Sibling modules a module imports, at top level or inside functions (a lazy import is still an edge)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.startswith("pipeline."):
                names = [node.module.split(".")[1]]
            else:
                continue
            found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {m: _imports(PACKAGE / f"{m}.py") & modules for m in modules}


def test_the_pipeline_package_has_no_import_cycle():
    graph = _graph()
    assert {"spec", "shards", "storage", "manifest"} <= set(graph)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]) if n in path
                            else f"import cycle through {n}")
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_private_name_crosses_a_module():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("pipeline")):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"


def test_the_lower_layers_do_not_reach_up():
    graph = _graph()
    base = {"storage", "manifest", "spec"}
    for m in base:
        assert graph[m] <= base, f"{m} imports {graph[m] - base}"
    assert "encoder" not in graph["cli"] and "runner" not in graph["spec"]


@pytest.mark.parametrize("command", [["stats", "{a}", "--json"], ["query", "{a}", "SELECT count(*) FROM manifest"],
                                     ["stats", "--help"], ["--help"]])
def test_light_commands_start_without_torch_or_ray(tmp_path, command):
    from pipeline.manifest import ManifestRow, to_parquet

    (tmp_path / "manifest").mkdir()
    rows = [ManifestRow(key="a", status="ok", bytes=10, bpp=0.5, source_bytes=100, run_id="r"),
            ManifestRow(key="b", run_id="r").fail("bad image: truncated")]
    (tmp_path / "manifest" / "part-000000.parquet").write_bytes(to_parquet(rows))
    argv = [c.format(a=tmp_path) for c in command]
    code = (f"import sys\nfrom pipeline.cli import main\ntry:\n    rc = main({argv!r})\nexcept SystemExit as e:\n"
            "    rc = e.code\nheavy = sorted(m for m in ('torch', 'ray') if m in sys.modules)\n"
            "print('RC', rc, 'HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "RC 0 HEAVY []" in out, out[-2000:]
    if command[0] == "stats" and "--json" in command:
        assert '"images": 2' in out and '"bad image": 1' in out


def test_each_module_imports_only_from_the_rows_above_it_in_the_architecture_map():
    """docs/architecture.md lists the pipeline's modules lowest first; the imports must agree with it."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = text[text.index("## `pipeline/`"):text.index("## Words")]
    rows = [re.findall(r"`(\w+)\.py`", line) for line in section.splitlines() if line.startswith("| `")]
    level = {m: i for i, mods in enumerate(rows) for m in mods}
    graph = _graph()
    assert set(level) == set(graph), f"map and package differ: {set(level) ^ set(graph)}"
    for m, deps in graph.items():
        upward = {d for d in deps if level[d] >= level[m] and d not in rows[level[m]]}
        assert not upward, f"{m} imports {upward}, listed below it in docs/architecture.md"


# ------------------------------------------------------------------ msinn: modules and sub-packages as nodes
MSINN = PACKAGE.parent / "msinn"


def _msinn_node(path: Path) -> str:
    """A top-level module, or the sub-package a module belongs to (``portable``, ``cli``, ...)."""
    rel = path.relative_to(MSINN)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _msinn_imports(path: Path) -> tuple[set[str], list[str]]:
    """(nodes a module imports, private names it imports from another node)."""
    here = list(path.relative_to(MSINN).parts[:-1])
    found, private = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(here):
                    continue
                base = here[: len(here) - (node.level - 1)]
                parts = base + [p for p in (node.module or "").split(".") if p]
                targets = [parts[0]] if parts else [a.name for a in node.names]
            elif node.module and node.module.startswith("msinn."):
                targets = [node.module.split(".")[1]]
            crossing = [t for t in targets if t != _msinn_node(path)]
            if crossing:
                private += [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("msinn.")]
        found.update(targets)
    return found, private


def _msinn_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in MSINN.rglob("*.py"):
        node = _msinn_node(p)
        if node == "__init__":
            continue  # the package's lazy front door imports everything on demand
        graph.setdefault(node, set()).update(_msinn_imports(p)[0])
    return {m: deps & set(graph) - {m} for m, deps in graph.items()}


def test_msinn_imports_only_from_its_own_row_or_the_rows_above_it_in_the_architecture_map():
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = text[text.index("## `msinn/`"):text.index("## `pipeline/`")]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `") and not line.startswith("| `portable/") or line.startswith("| `portable/` |"):
            names = re.findall(r"`([\w/]+?(?:\.py|/))`", line.split("|")[1])
            rows.append([m.rstrip("/").removesuffix(".py") for m in names])
    level = {m: i for i, mods in enumerate(rows) for m in mods}
    graph = _msinn_graph()
    assert set(level) == set(graph), f"map and package differ: {set(level) ^ set(graph)}"
    for m, deps in graph.items():
        upward = {d for d in deps if level[d] > level[m]}
        assert not upward, f"msinn/{m} imports {upward}, listed below it in docs/architecture.md"


def test_msinn_has_no_import_cycle_and_no_private_name_crosses_a_module():
    graph = _msinn_graph()
    assert {"model", "codec", "portable", "cli"} <= set(graph)
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        for n in sorted(graph[m]):
            assert n not in path, "import cycle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in done:
                visit(n, path + [n])
        done.add(m)

    for m in sorted(graph):
        visit(m, [m])
    for p in MSINN.rglob("*.py"):
        private = _msinn_imports(p)[1]
        assert not private, f"{p.relative_to(MSINN)} imports private {private} from another module"
