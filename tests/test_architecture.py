"""The layout the package promises: plug-ins are found through the registries, and modules stand alone.

* No module outside `l2l_app/algorithms/` branches on an algorithm's name (or an alias): no
  comparison with it, no dict keyed by it, no lookup by it.  What differs between algorithms is
  read from their registered `AlgorithmSpec`.  The same holds for dataset names outside
  `l2l_app/data/<dataset>.py` and backbone names outside `l2l_app/backbones/<backbone>.py`.
* Every module of the package imports on its own in an interpreter that has imported no other
  module of the package, which finds import cycles that function-level imports would hide.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

import l2l_app.config  # noqa: F401  (registers every algorithm, backbone and dataset)
from l2l_app.config import ALGO_ALIASES
from l2l_app.registry import ALGORITHMS, BACKBONES, DATASETS

PACKAGE = Path(l2l_app.config.__file__).resolve().parent
REPO = PACKAGE.parent


def modules() -> List[str]:
    """Every module of the package, dotted ('l2l_app.data.cache')."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def branches_on(source: str, names: Set[str]) -> Iterator[Tuple[int, str]]:
    """(line, name) of every string constant in `names` that a comparison, a dict key, a subscript
    or a collection inside a comparison uses: the ways code dispatches on a name."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        candidates: List[ast.AST] = []
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                candidates.append(operand)
                if isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
                    candidates.extend(operand.elts)
        elif isinstance(node, ast.Dict):
            candidates.extend(k for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            candidates.append(node.slice)
        elif isinstance(node, ast.match_case):
            candidates.extend(n for n in ast.walk(node.pattern) if isinstance(n, ast.Constant))
        for c in candidates:
            if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in names:
                yield c.lineno, c.value


def _files_outside(owned: Set[Path]) -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in owned:
            yield path


@pytest.mark.parametrize("kind,names,owned", [
    ("algorithm", set(ALGORITHMS.names()) | set(ALGO_ALIASES),
     set((PACKAGE / "algorithms").rglob("*.py"))),
    ("dataset", set(DATASETS.names()),
     {PACKAGE / "data" / f"{type(spec).__module__.rsplit('.', 1)[-1]}.py" for _, spec in DATASETS.items()}),
    ("backbone", set(BACKBONES.names()), set((PACKAGE / "backbones").rglob("*.py"))),
])
def test_nothing_outside_a_plugin_branches_on_its_name(kind, names, owned):
    found = [f"{path.relative_to(REPO)}:{line} {name!r}" for path in _files_outside(owned)
             for line, name in branches_on(path.read_text(), names)]
    assert not found, f"code outside the {kind} modules dispatches on {kind} names: {found}"


def test_the_branch_finder_finds_branches():
    """The check above can fail: each way of dispatching on a name is found."""
    code = textwrap.dedent("""
        if algo == "maml": pass
        if algo in ("protonet", "reptile"): pass
        TABLE = {"maml": 1}
        x = TABLE["reptile"]
        match algo:
            case "protonet": pass
        default = "maml"   # a default value is not a branch
        print("maml")      # nor is a message
    """)
    found = sorted(branches_on(code, {"maml", "protonet", "reptile"}))
    assert found == [(2, "maml"), (3, "protonet"), (3, "reptile"), (4, "maml"), (5, "reptile"), (7, "protonet")]


#: imports every third-party dependency once, then forks a child per module: each child starts with
#: no module of the package imported, so it imports exactly what that module pulls in
_FORK_IMPORTS = textwrap.dedent("""
    import os, sys, traceback
    import torch, numpy, click, PIL.Image, learn2learn  # noqa: E401  third-party only
    failed = []
    for name in sys.argv[1:]:
        assert not any(m == "l2l_app" or m.startswith("l2l_app.") for m in sys.modules)
        pid = os.fork()
        if pid == 0:
            try:
                __import__(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(name)
    print("FAILED " + " ".join(failed) if failed else "OK")
""")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX)")
def test_every_module_imports_on_its_own():
    mods = modules()
    assert "l2l_app.config" in mods and "l2l_app.data.types" in mods and len(mods) > 30
    result = subprocess.run([sys.executable, "-c", _FORK_IMPORTS, *mods], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.stdout.strip() == "OK", result.stdout + result.stderr[-3000:]


def test_a_cycle_is_found(tmp_path):
    """The import check can fail: two modules that import each other at the top cannot be imported
    starting from the second when it needs a name of the first."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from cyc.a import A\nB = 2\n")
    script = _FORK_IMPORTS.replace("import torch, numpy, click, PIL.Image, learn2learn  # noqa: E401  third-party only",
                                   "pass")
    result = subprocess.run([sys.executable, "-c", script, "cyc.a"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "FAILED cyc.a", result.stdout + result.stderr
