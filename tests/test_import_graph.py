"""clip_jax's import graph has no cycles, and its packages keep to one layering.

The graph is read from the source with `ast` (nothing is imported): one node per module of
`clip_jax/`, an edge for every import of a `clip_jax` module anywhere in the file: at module
level, inside functions (a function-level import that hides a cycle is still a cycle), and
`importlib.import_module("clip_jax....")` strings. `from clip_jax.x import y` points at module
`clip_jax.x.y` when that is a module, else at package `clip_jax.x`. Parent packages that Python
initialises on the way are not edges (the convention of import-linter and pydeps).

Layering, lowest first. A module may import its own unit and the units of lower layers only;
units on one layer are independent of each other.

 0  errors, lazy              ConfigError, imported by everyone; packages' modules
                              imported on first attribute access
 1  runtime                   mesh and sharding rules, hardware facts, host tuning
 2  models                    configs (and the one dtype table), presets, layers, towers, CLIP
 3  data                      tokenizer, preprocessing, input pipelines, eval sources
 4  convert, inference        format converters (OpenAI, open_clip, transformers); Encoder,
                              image index
 5  training.checksums,       a checkpoint's pieces that know nothing of checkpoints: the
    training.orbax_quiet      state's checksums, orbax's echoes of a failed read dropped
 6  training.checkpoints,     what a workdir holds (checkpoints, metrics.jsonl): read by
    training.metric_writers   `clip_jax.load(workdir)` and standalone evaluation, so these two
                              sit below them although filed under training/ next to the loop
 7  pretrained                `clip_jax.load` of every source, released-weights registry,
                              the open_clip-style factory (create_model(pretrained=), save)
 8  evaluation                evaluators, embedding passes, metrics, reports
 9  configs                   the base config (every field a run has) and the shipped
                              experiment configs; what fields exist, for every config check
10  training                  losses, optimizer, step, config checks, the loop (it evaluates
                              and initialises from pretrained weights)
11  planning                  deviceless compile plans of the training step
12  clip_jax                  the public API (`clip_jax/__init__.py`)
13  demo                      the demo (`python -m clip_jax.demo`)
14  cli                       the `clip-jax` command (its `demo` subcommand runs the demo)

So models import nothing from data, training, evaluation or conversion; data imports no
training, evaluation, conversion or loading; converters know nothing of loading (`pretrained`
composes them) and nothing of training. A new package or top-level module must be placed here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from fresh_python import run_python

ROOT = Path(__file__).resolve().parents[1]

LAYERS = (
    ("clip_jax.errors", "clip_jax.lazy"),
    ("clip_jax.runtime",),
    ("clip_jax.models",),
    ("clip_jax.data",),
    ("clip_jax.convert", "clip_jax.inference"),
    ("clip_jax.training.checksums", "clip_jax.training.orbax_quiet"),
    ("clip_jax.training.checkpoints", "clip_jax.training.metric_writers"),
    ("clip_jax.pretrained",),
    ("clip_jax.evaluation",),
    ("clip_jax.configs",),
    ("clip_jax.training",),
    ("clip_jax.planning",),
    ("clip_jax",),
    ("clip_jax.demo",),
    ("clip_jax.cli",),
)
LAYER = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}
IMPORT_FUNCTIONS = ("import_module", "__import__")

Graph = dict[str, dict[str, int]]  # module -> {imported module: first line}


def modules(root: Path, package: str = "clip_jax") -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `root`."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported_names(node: ast.AST, package: str) -> list[str]:
    """Dotted names an import statement (or `importlib.import_module("...")` call) asks for;
    `from a import b` gives `a.b` (resolved to `a` later when `b` is not a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in IMPORT_FUNCTIONS and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    return []


def import_graph(root: Path = ROOT, package: str = "clip_jax") -> Graph:
    """Edges between the modules of `package`, from every import anywhere in each file."""
    files = modules(root, package)
    graph: Graph = {}
    for name, path in files.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            requested = _imported_names(node, own_package)
            if isinstance(node, ast.ImportFrom) and len(requested) > 1:
                # `from pkg import x`: the module pkg.x where x is one, else pkg itself.
                base, names = requested[0], requested[1:]
                requested = [n if n in files else base for n in names]
            for target in requested:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (first node repeated at the end) per strongly connected component of two or
    more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_cycle_within(graph, set(c)) for c in components]


def _cycle_within(graph: Graph, component: set[str]) -> list[str]:
    """A concrete cycle through the component's first module (breadth-first, so the shortest)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if child in component and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def _describe(graph: Graph, cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + (
        f" -> {cycle[-1]}")


def unit(module: str) -> str | None:
    """The layering unit of a module: the longest unit name that is it or a package above it
    (`clip_jax` itself only for `clip_jax/__init__.py`)."""
    candidates = [u for u in LAYER if module == u or (u != "clip_jax" and
                                                       module.startswith(u + "."))]
    return max(candidates, key=len, default=None)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_the_graph_sees_module_and_function_level_imports(graph):
    # Known edges, so that an empty or mis-parsed graph cannot pass the tests below.
    assert "clip_jax.convert.hf_import" in graph["clip_jax.pretrained.load"]  # module level
    assert "clip_jax" in graph["clip_jax.cli"]  # `from clip_jax import load` inside a function
    assert "clip_jax.models" in graph["clip_jax.pretrained.factory"]  # from clip_jax import models
    assert len(graph) > 50


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


def test_cycle_detection_reports_function_level_cycles(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("def f():\n    import pkg.a\n")
    (package / "d.py").write_text("import importlib\nimportlib.import_module('pkg.a')\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == {"pkg.a": 2}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]]
    (package / "sub" / "c.py").write_text("")
    assert find_cycles(import_graph(tmp_path, "pkg")) == []


def test_every_module_has_a_layer(graph):
    unplaced = sorted(m for m in graph if unit(m) is None)
    assert not unplaced, f"place these in LAYERS (tests/test_import_graph.py): {unplaced}"


def test_packages_import_only_lower_layers(graph):
    violations = []
    for module, targets in graph.items():
        for target, line in targets.items():
            source, destination = unit(module), unit(target)
            if source != destination and LAYER[destination] >= LAYER[source]:
                violations.append(f"{module}:{line} imports {target} ({source}, layer "
                                  f"{LAYER[source]} -> {destination}, layer {LAYER[destination]})")
    assert not violations, "imports against the layering:\n" + "\n".join(sorted(violations))


RESOLVE = """
import functools, sys
import clip_jax
names = {names}
failed = []
for name in names:
    try:
        found = functools.reduce(getattr, name.split(".")[1:], clip_jax)
    except AttributeError as error:
        failed.append(f"{{name}}: {{error}}")
        continue
    if name in sys.modules and found is not sys.modules[name]:
        failed.append(f"{{name}} resolved to {{found!r}}")
assert not failed, failed
assert not hasattr(clip_jax.models, "no_such_module")
assert not hasattr(clip_jax, "no_such_package")
"""


def test_every_path_resolves_after_a_bare_import_clip_jax():
    """`import clip_jax` and then a dotted path the README names
    (`clip_jax.convert.hf_export.export_hf`, `clip_jax.pretrained.factory.export_hf_from`)
    raised AttributeError unless the process had imported that module some other way (trial
    Q). In a fresh interpreter: the README's `clip_jax.` paths first (nothing else imported
    yet), then every module of the package, deepest first (but `python -m`'s `__main__`);
    a name that is no module stays AttributeError."""
    readme = (ROOT / "README.md").read_text()
    named = sorted(set(re.findall(r"\bclip_jax(?:\.[A-Za-z_]\w*)+", readme)))
    assert "clip_jax.convert.hf_export.export_hf" in named  # the extraction finds them
    every_module = sorted((m for m in modules(ROOT) if not m.endswith(".__main__")),  # runs
                          key=lambda m: (-m.count("."), m))
    run_python(RESOLVE.format(names=json.dumps(named + every_module)))
