"""docs/architecture.md's promises about the import graph, checked on the source (nothing is imported or run).

Dependencies point one way: no import loop between maskprobe's modules (function-level imports count: a lazy import
is a loop all the same), and the library never imports the CLI's layers (commands/, render/, console, progress, cli).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "maskprobe"
CLI_LAYERS = ("maskprobe.cli", "maskprobe.commands", "maskprobe.render", "maskprobe.console", "maskprobe.progress",
              "maskprobe.__main__")  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the maskprobe modules it imports anywhere in its source (``from . import x`` names x)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                targets = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), packages' __init__ re-exports left out."""
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] - packages:
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
                found.append(sorted(comp))

    for v in sorted(graph.keys() - packages):
        if v not in index:
            visit(v)
    return found


def test_no_import_loops():
    assert _cycles(import_graph()) == []


def test_the_library_never_imports_the_cli_layers():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.startswith(CLI_LAYERS)) for m, ts in graph.items() if not m.startswith(CLI_LAYERS)}
    assert {m: ts for m, ts in bad.items() if ts and m != "maskprobe"} == {}


def test_the_check_sees_a_loop_and_a_library_import_of_render():
    """The checks can fail: a made-up graph with a loop and a library module importing render/."""
    graph = {"maskprobe.a": {"maskprobe.b"}, "maskprobe.b": {"maskprobe.a"}, "maskprobe.c": set()}
    assert _cycles(graph) == [["maskprobe.a", "maskprobe.b"]]
    real = import_graph()
    assert "maskprobe.render" in real["maskprobe.commands.compare"] or any(
        t.startswith("maskprobe.render") for t in real["maskprobe.commands.compare"]
    )


def test_every_old_module_path_imports_the_same_module_object():
    """The modules moved into subpackages (docs/architecture.md); scripts and plugins that import the old paths
    get the very same module (so a monkeypatch through either name reaches both)."""
    import importlib
    import subprocess
    import sys

    import maskprobe

    for old, new in maskprobe._MOVED.items():
        assert (PACKAGE / (new.replace(".", "/") + ".py")).is_file(), new
        assert not (PACKAGE / f"{old}.py").exists(), old
        moved = importlib.import_module(f"maskprobe.{new}")
        assert importlib.import_module(f"maskprobe.{old}") is moved, old
        assert moved.__spec__.name == f"maskprobe.{new}" and moved.__name__ == f"maskprobe.{new}"
    # an old path imported first, in a fresh interpreter: the new path is the same object, `from` works
    code = (
        "import maskprobe.maskfile as a, maskprobe.masks.maskfile as b; from maskprobe.task_args import resolve_tasks;"
        "from maskprobe.tasks import Task, load_task; assert a is b and a.__spec__.name == 'maskprobe.masks.maskfile'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # every module file of the package is either at a new path or not moved (no stray copy at the root)
    roots = {f.stem for f in PACKAGE.glob("*.py")}
    assert not roots & set(maskprobe._MOVED), roots & set(maskprobe._MOVED)


def test_the_architecture_page_names_every_module():
    """docs/architecture.md's layer list names every module file (a new file is placed on the page)."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    each = ("builtin", "commands")  # described as one file per task / one module per command
    files = [f for f in PACKAGE.rglob("*.py") if not f.name.startswith("__") and f.parent.name not in each]
    missing = [str(f.relative_to(PACKAGE)) for f in files if f.name not in page]
    assert not missing, f"docs/architecture.md does not name: {missing}"
    for group in ("loading/", "learning/", "masks/", "measure/", "tasks/", "builtin/", "commands/", "render/"):
        assert group in page, group
