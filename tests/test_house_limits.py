"""The house rules every module keeps, read from the source with `ast`:

- no module over 400 lines, the two fused Triton kernel modules excepted (a kernel, its launch
  grid and its autotune configs read best in one file);
- no function over 60 lines, in those modules too;
- an import inside a function is either of a heavy or optional library (the CLI must start
  without loading it) or says why: a comment on its line or the line above, or once for the
  whole module in a comment starting "# Imports inside functions" (an import circle, or a
  module that loads one of those libraries).
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from tests.paths import REPO

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_MODULES_ALLOWED = {"sla_kernel_glue/triton_fwd.py", "sla_kernel_glue/triton_bwd.py"}
# Libraries that cost seconds or are optional extras: imported where a command needs them
HEAVY = {
    "torch", "triton", "ray", "mlflow", "diffusers", "transformers", "peft", "accelerate", "av",
    "torchmetrics", "matplotlib", "optuna", "pynvml", "scipy", "sklearn", "PIL", "psutil",
    "pyarrow", "pandas", "safetensors", "tokenizers", "boto3", "botocore", "numpy", "skimage",
}  # fmt: skip
PACKAGES = ("orchestrator", "sla_kernel_glue", "benchmarks")


def _modules() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *(f"{p}/*.py" for p in PACKAGES)],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [Path(f) for f in out if (REPO / f).is_file()]


def long_modules(files: list[Path]) -> list[str]:
    return [
        f"{f}: {n} lines"
        for f in files
        if str(f) not in LONG_MODULES_ALLOWED
        and (n := len((REPO / f).read_text().splitlines())) > MAX_MODULE_LINES
    ]


def long_functions(source: str, name: str) -> list[str]:
    return [
        f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


MODULE_NOTE = "# Imports inside functions"


def _import_runs(fn: ast.AST) -> list[list[ast.stmt]]:
    """Runs of consecutive import statements in the function's statement lists."""
    runs: list[list[ast.stmt]] = []
    for node in ast.walk(fn):
        for field in ("body", "orelse", "finalbody", "handlers"):
            run: list[ast.stmt] = []
            stmts = getattr(node, field, None)
            for stmt in stmts if isinstance(stmts, list) else []:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    run.append(stmt)
                elif run:
                    runs.append(run)
                    run = []
            if run:
                runs.append(run)
    return runs


def _tops(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    return {"." if node.level else (node.module or "").split(".")[0]}


def unexplained_imports(source: str, name: str) -> list[str]:
    """Imports inside functions that are not of a HEAVY library and have no comment on their
    lines, on the line just above their run of imports, or in a module note."""
    lines, out = source.splitlines(), []
    if any(line.lstrip().startswith(MODULE_NOTE) for line in lines):
        return []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for run in _import_runs(fn):
            first, last = run[0].lineno, run[-1].end_lineno
            said = any("#" in lines[i - 1] for i in range(max(first - 1, 1), last + 1))
            for node in run:
                if not _tops(node) <= HEAVY and not said:
                    out.append(
                        f"{name}:{node.lineno} in {fn.name}: {', '.join(sorted(_tops(node)))}"
                    )
    return sorted(set(out))


def test_no_module_over_400_lines():
    assert long_modules(_modules()) == []


def test_no_function_over_60_lines():
    found = [x for f in _modules() for x in long_functions((REPO / f).read_text(), str(f))]
    assert found == []


def test_imports_inside_functions_are_heavy_or_say_why():
    found = [x for f in _modules() for x in unexplained_imports((REPO / f).read_text(), str(f))]
    assert found == []


def test_the_checks_find_what_they_look_for():
    """Each check fails on a planted breach (so the three tests above cannot pass vacuously)."""
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n", "m.py") == [
        f"m.py:1 f: {MAX_FUNCTION_LINES + 1} lines"
    ]
    planted = (
        "def f():\n    import json\n    f()\n    import torch\n    from . import x  # a circle\n"
    )
    assert unexplained_imports(planted, "m.py") == ["m.py:2 in f: json"]
    assert unexplained_imports(f"{MODULE_NOTE}: circles\n{planted}", "m.py") == []
    assert len(_modules()) > 50
