"""The pipeline package's layers: imports only go downward, and the light commands stay light."""

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
    assert {"spec", "cluster", "shards", "storage", "manifest"} <= set(graph)
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
    base = {"storage", "manifest", "spec", "cluster"}
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
