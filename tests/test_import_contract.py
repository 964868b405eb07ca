"""The import contract of orchestrator/: no import circles, and imports run one way down the
layers, read from the source with `ast` (imports at module level, inside functions and under
TYPE_CHECKING all count: an import inside a function is a dependency all the same).

Layers, top to bottom (a module may import its own layer and the layers below it):

    commands     orchestrator.cli, orchestrator.__main__, orchestrator.sweep.commands
    after        orchestrator.infer, orchestrator.ui
    sweep        orchestrator.sweep (Ray: cluster, run, trainable, worker, progress, ...)
    tracking     orchestrator.tracking (MLflow)
    report       orchestrator.report (labels, pareto, figures, table, findings, study report)
    sweep files  orchestrator.storage.records, sweep_files, sweep_place, sync
    spec         orchestrator.spec
    recipe       orchestrator.recipe
    data/models  orchestrator.data, orchestrator.models
    base         orchestrator.storage (locations, local), orchestrator.values,
                 orchestrator.tracking.tags (names only)

The report sits below tracking and sweep because both call it (the end-of-sweep table and study
report, the parent run's summary). KNOWN_UPWARD and KNOWN_CIRCLES list what still breaks the
contract, each to be removed; the check fails when one of them is gone, so the lists only shrink.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.paths import REPO

LAYERS: dict[str, int] = {
    "orchestrator": 0,
    "orchestrator.values": 0,
    "orchestrator.storage": 0,
    "orchestrator.tracking.tags": 0,
    "orchestrator.data": 1,
    "orchestrator.models": 1,
    "orchestrator.recipe": 2,
    "orchestrator.recipe.topk_schedule": 2,  # plain Python: the spec runs its check too
    "orchestrator.spec": 3,
    "orchestrator.storage.records": 4,
    "orchestrator.storage.sweep_files": 4,
    "orchestrator.storage.sweep_place": 4,
    "orchestrator.storage.sync": 4,
    "orchestrator.report": 5,
    "orchestrator.report.labels": 5,
    "orchestrator.report.pareto": 5,
    "orchestrator.report.figures": 5,
    "orchestrator.tracking": 6,
    "orchestrator.sweep": 7,
    "orchestrator.infer": 8,
    "orchestrator.ui": 8,
    "orchestrator.cli": 9,
    "orchestrator.__main__": 9,
    "orchestrator.sweep.commands": 9,
}

# Imports that still go up a layer, (importer, imported): the report's sample strip generates a
# preset trial's clip through infer's model and sampler.
KNOWN_UPWARD = frozenset(
    {
        ("orchestrator.report.samples", "orchestrator.infer.model"),
        ("orchestrator.report.samples", "orchestrator.infer.options"),
        ("orchestrator.report.samples", "orchestrator.infer.samples"),
    }
)

# Import circles still there, each as its sorted modules: models.pipeline imports models.weights,
# which imports wan_presets.PRESETS, and wan_presets imports models.pipeline inside functions.
KNOWN_CIRCLES = frozenset(
    {
        (
            "orchestrator.models.pipeline",
            "orchestrator.models.wan_presets",
            "orchestrator.models.weights",
        ),
    }
)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the modules of the package at `root` it imports}, every import statement in the
    file counted, wherever it is."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, package, files):
                if target == root.name or target.startswith(root.name + "."):
                    graph[name].add(_known(target, files))
    return graph


def _targets(node: ast.AST, package: str, files: Mapping[str, Path]) -> Iterable[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod
    found = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in files]
    return found if len(found) == len(node.names) else [source, *found]


def _known(target: str, files: Mapping[str, Path]) -> str:
    """The module itself, or for a name that is not a file the nearest package that is."""
    while target not in files and "." in target:
        target = target.rpartition(".")[0]
    return target


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (or a module importing itself),
    each as a sorted list (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
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
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def layer_of(module: str, layers: Mapping[str, int]) -> int:
    """The layer of the longest key that is the module or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in layers:
            return layers[key]
    raise KeyError(f"{module} is in no layer of LAYERS; add it")


def upward(graph: Mapping[str, set[str]], layers: Mapping[str, int]) -> set[tuple[str, str]]:
    """Every (importer, imported) where the imported module's layer is above the importer's."""
    return {
        (m, t)
        for m, targets in graph.items()
        for t in targets
        if layer_of(t, layers) > layer_of(m, layers)
    }


def contract_problems(
    root: Path,
    layers: Mapping[str, int],
    known: frozenset[tuple[str, str]] = frozenset(),
    known_circles: frozenset[tuple[str, ...]] = frozenset(),
) -> list[str]:
    """What breaks the contract in the package at `root`, one line each (empty: it holds)."""
    graph = import_graph(root)
    found = {tuple(c) for c in circles(graph)}
    problems = [f"import circle: {' <-> '.join(c)}" for c in sorted(found - known_circles)]
    problems += [f"no longer a circle, drop from KNOWN_CIRCLES: {' <-> '.join(c)}"
                 for c in sorted(known_circles - found)]  # fmt: skip
    up = upward(graph, layers)
    problems += [f"upward import: {m} -> {t}" for m, t in sorted(up - known)]
    problems += [f"no longer imported, drop from KNOWN_UPWARD: {m} -> {t}"
                 for m, t in sorted(known - up)]  # fmt: skip
    return problems


def test_orchestrator_keeps_the_contract():
    problems = contract_problems(REPO / "orchestrator", LAYERS, KNOWN_UPWARD, KNOWN_CIRCLES)
    assert not problems, "\n".join(problems)


def test_graph_sees_imports_inside_functions():
    graph = import_graph(REPO / "orchestrator")
    # infer.command imports infer.pipeline only inside run_infer (diffusers is heavy)
    assert "orchestrator.infer.pipeline" in graph["orchestrator.infer.command"]
    assert "orchestrator.sweep.search_space" in graph["orchestrator.sweep.run"]


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_checker_fails_on_a_planted_circle(tmp_path):
    """a -> b at module level, b -> c inside a function, c -> a by a relative import."""
    root = _package(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "from pkg.low import b\n",
            "low/b.py": "def f():\n    import pkg.low.c\n",
            "low/c.py": "from .a import thing\n",
            "low/d.py": "import pkg.low.a\n",
        },
    )
    graph = import_graph(root)
    assert circles(graph) == [["pkg.low.a", "pkg.low.b", "pkg.low.c"]]
    problems = contract_problems(root, {"pkg": 0})
    assert problems == ["import circle: pkg.low.a <-> pkg.low.b <-> pkg.low.c"]
    known = frozenset({("pkg.low.a", "pkg.low.b", "pkg.low.c")})
    assert contract_problems(root, {"pkg": 0}, known_circles=known) == []
    (root / "low" / "c.py").write_text("")  # the circle broken: its entry must go
    assert contract_problems(root, {"pkg": 0}, known_circles=known) == [
        "no longer a circle, drop from KNOWN_CIRCLES: pkg.low.a <-> pkg.low.b <-> pkg.low.c"
    ]


def test_checker_fails_on_a_planted_upward_import(tmp_path):
    root = _package(
        tmp_path,
        {
            "low.py": "X = 1\n",
            "high.py": "from pkg.low import X\n",
            "bad.py": "def f():\n    from pkg import high\n",
        },
    )
    layers = {"pkg": 0, "pkg.high": 1}
    assert contract_problems(root, layers) == ["upward import: pkg.bad -> pkg.high"]
    assert contract_problems(root, layers, frozenset({("pkg.bad", "pkg.high")})) == []
    stale = frozenset({("pkg.low", "pkg.high")})
    assert contract_problems(root, {"pkg": 0}, stale) == [
        "no longer imported, drop from KNOWN_UPWARD: pkg.low -> pkg.high"
    ]
