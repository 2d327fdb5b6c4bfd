"""Layers point down: simulate <- envs <- agents <- evaluation <- experiment <- the entry scripts.

Each library module is parsed (never imported) and every import it makes is held against the
layer it belongs to:

========================  =========================================================
module                    may import (besides the standard library and third parties)
========================  =========================================================
``simulate``              ``simulate``
``envs``                  ``simulate``, ``envs``
``agents``                the above and ``agents``
``evaluation``            the above and ``evaluation``
``realism``               ``simulate``, ``envs``, ``agents``, ``evaluation``, ``realism``
``experiment``            ``simulate``, ``envs``, ``agents``, ``evaluation``, ``experiment``
``serve.onnx_export``          ``simulate``, ``envs``, ``agents`` and serving's runtime side
serving's runtime side    itself only; third parties numpy, onnxruntime and numba (the HTTP
(every other ``serve``    server adds starlette and uvicorn, the MLflow wrapper mlflow
module)                   and pandas): it runs where the training stack is not installed
========================  =========================================================

Serving's runtime side imports no other project package, so any layer may import it (the
evaluation's log contract and circuit file do). No library module imports an entry script (a
``*.py`` file at the root: ``train``, ``evaluate``, ``export``, ``calibrate``), ``studies``,
``benchmarks`` or ``tests``, nor another package's private (underscored) name.

A ``python -m`` command inside a library module (its top-level ``main()``, run under
``if __name__ == "__main__":``) is an entry point: its imports may reach any library layer
(``experiment`` included: it names policies by MLflow run), never an entry script.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("simulate", "envs", "agents", "evaluation", "realism", "experiment", "serve", "loop")
"""the library packages whose modules are checked"""
ABOVE_LIBRARY = ("studies", "benchmarks", "tests")
"""packages above every library module (as the entry scripts are)"""
BELOW = {
    "simulate": {"simulate"},
    "envs": {"simulate", "envs"},
    "agents": {"simulate", "envs", "agents"},
    "evaluation": {"simulate", "envs", "agents", "evaluation"},
    "realism": {"simulate", "envs", "agents", "evaluation", "realism"},
    "experiment": {"simulate", "envs", "agents", "evaluation", "experiment"},
    "loop": {"simulate", "envs", "agents", "evaluation", "loop"},
    "serve.onnx_export": {"simulate", "envs", "agents"},
    "serve.runtime": set(),
}
"""for each layer, the project layers its modules may import (serving's runtime side, a leaf,
is open to all of them)"""
ENTRY_POINT = {"simulate", "envs", "agents", "evaluation", "realism", "experiment"}
"""what a ``python -m`` command's ``main()`` may import (and serving's runtime side)"""
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime", "numba"}
ADAPTER_THIRD_PARTY = {
    "serve.http": {"starlette", "uvicorn"},
    "serve.pyfunc": {"mlflow", "pandas"},
    "serve.decisions": {"polars"},
}
"""serving modules that adapt the runtime to a framework, and the framework's packages"""


@dataclass(frozen=True)
class Imported:
    """One import of a module: the dotted module imported, the names taken from it, where."""

    module: str
    names: tuple[str, ...]
    line: int
    in_main: bool
    """inside the module's command-line ``main()`` (an entry point)"""


def module_name(path: Path, root: Path) -> str:
    """``evaluation/offline.py`` -> ``evaluation.offline`` (a package's ``__init__`` -> the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


EXPORT_SIDE = ("serve.onnx_export", "serve.graph_choice")
"""serving's export side: builds the ONNX graph (onnx, torch), never loaded by the runtime"""


def layer_of(module: str) -> str:
    """The layer a project module belongs to: its package, except that ``serve`` is two."""
    top = module.split(".")[0]
    if top == "serve":
        return "serve.onnx_export" if module in EXPORT_SIDE else "serve.runtime"
    return top


def _has_main_guard(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            left = node.test.left
            if isinstance(left, ast.Name) and left.id == "__name__":
                return True
    return False


def imports_of(path: Path, root: Path) -> list[Imported]:
    """Every import statement of the module at ``path``, wherever it stands (functions too),
    with relative imports made absolute and ``from package import module`` read as the module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    main_nodes: set[int] = set()
    if _has_main_guard(tree):
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                main_nodes = {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        in_main = id(node) in main_nodes
        if isinstance(node, ast.Import):
            out += [Imported(a.name, (), node.lineno, in_main) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = tuple(a.name for a in node.names)
            out.append(Imported(base, names, node.lineno, in_main))
            for n in names:  # ``from serve import contract``: the module serve.contract
                if (root / base.replace(".", "/") / f"{n}.py").is_file():
                    out.append(Imported(f"{base}.{n}", (), node.lineno, in_main))
    return out


def _private_attributes(path: Path, root: Path, own: str) -> list[tuple[int, str]]:
    """(line, ``alias._name``) where a module of another project package, bound to ``alias``
    by an import, has an underscored attribute read."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if (root / node.module.replace(".", "/") / f"{a.name}.py").is_file():
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    out = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id].split(".")[0] != own
        ):
            out.append((node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return out


def violations(root: Path) -> list[str]:
    """Every import under ``root``'s library packages that points up, at an entry script, or at
    another package's private name; one line each: ``file:line: what is wrong``."""
    # a root script named like a library package (serve.py beside serve/) is shadowed by it
    scripts = {p.stem for p in root.glob("*.py")} - set(LIBRARY)
    project = scripts | set(LIBRARY) | set(ABOVE_LIBRARY)
    stdlib = set(sys.stdlib_module_names)
    found = []
    for package in LIBRARY:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root)
            module = module_name(path, root)
            layer = layer_of(module)
            own = module.split(".")[0]
            for imp in imports_of(path, root):
                top = imp.module.split(".")[0]
                if top in scripts:
                    found.append(f"{where}:{imp.line}: imports the entry script {imp.module}")
                    continue
                if top in ABOVE_LIBRARY:
                    found.append(f"{where}:{imp.line}: imports {imp.module}, above every library")
                    continue
                if top in project:
                    target = layer_of(imp.module)
                    allowed = ENTRY_POINT | BELOW[layer] if imp.in_main else BELOW[layer]
                    if target != "serve.runtime" and target not in allowed | {layer}:
                        found.append(
                            f"{where}:{imp.line}: {module} ({layer}) imports {imp.module} "
                            f"({target}), a layer it may not import"
                        )
                    private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
                    if top != own and private:
                        found.append(
                            f"{where}:{imp.line}: imports {imp.module}'s private {private}"
                        )
                elif layer == "serve.runtime" and top not in stdlib | {"__future__"}:
                    allowed = RUNTIME_THIRD_PARTY | ADAPTER_THIRD_PARTY.get(module, set())
                    if top not in allowed:
                        found.append(
                            f"{where}:{imp.line}: serving's runtime side imports {imp.module} "
                            f"(only {sorted(allowed)} besides the standard library)"
                        )
            found += [
                f"{where}:{line}: reads {name}, another package's private name"
                for line, name in _private_attributes(path, root, own)
            ]
    return found


def test_every_library_import_points_down():
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"train.py": "", "evaluate.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in LIBRARY:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


def test_a_library_module_that_imports_an_entry_script_is_found(tmp_path):
    root = _tree(
        tmp_path,
        {
            "evaluation/offline.py": "def main():\n    from evaluate import resolve_policy\n",
            "realism/fit.py": "import train\n",
        },
    )
    found = violations(root)
    assert any("evaluation/offline.py:2: imports the entry script evaluate" in f for f in found)
    assert any("realism/fit.py:1: imports the entry script train" in f for f in found)


def test_an_import_up_the_layers_or_of_a_private_name_is_found(tmp_path):
    root = _tree(
        tmp_path,
        {
            "agents/breaker.py": "from evaluation.monitor import Monitor\n",
            "evaluation/monitor.py": "Monitor = 1\n",
            "evaluation/offline.py": "def log():\n    from experiment.tracking import x\n",
            "experiment/tracking.py": "x = 1\n",
            "realism/fromlogs.py": "from evaluation.offline import _own\n",
            "serve/runtime.py": "import torch\nfrom envs import features\n",
            "envs/features.py": "",
            "envs/masks.py": "from agents import base\nbase._View\n",
            "agents/base.py": "",
            "simulate/world.py": "from simulate import _private\n",
        },
    )
    found = "\n".join(violations(root))
    assert "agents/breaker.py:1: agents.breaker (agents) imports evaluation.monitor" in found
    assert "evaluation/offline.py:2: evaluation.offline (evaluation) imports experiment" in found
    assert "realism/fromlogs.py:1: imports evaluation.offline's private ['_own']" in found
    assert "serve/runtime.py:1: serving's runtime side imports torch" in found
    assert "serve/runtime.py:2: serve.runtime (serve.runtime) imports envs" in found
    assert "envs/masks.py:1: envs.masks (envs) imports agents" in found
    assert "envs/masks.py:2: reads agents.base._View, another package's private name" in found
    assert "simulate/world.py" not in found  # its own package's private name is its own


def test_a_command_main_is_an_entry_point_that_may_name_runs_but_not_import_scripts(tmp_path):
    root = _tree(
        tmp_path,
        {
            "evaluation/offline.py": (
                "def main():\n"
                "    from experiment.policies import resolve_policy\n"
                "    from evaluate import helper\n"
                "\n"
                'if __name__ == "__main__":\n'
                "    main()\n"
            ),
            "experiment/policies.py": "",
        },
    )
    assert violations(root) == [
        "evaluation/offline.py:3: imports the entry script evaluate",
    ]


def test_the_served_models_requirements_name_every_third_party_its_code_imports():
    """A model logged with ``serve.pyfunc.PIP_REQUIREMENTS`` installs, in an environment of its
    own, every third party that serving's runtime side, the pyfunc wrapper and the decision log
    may import (the layer rule above holds them to these)."""
    from serve.pyfunc import PIP_REQUIREMENTS

    needed = RUNTIME_THIRD_PARTY | ADAPTER_THIRD_PARTY["serve.pyfunc"]
    needed |= ADAPTER_THIRD_PARTY["serve.decisions"]
    assert needed <= set(PIP_REQUIREMENTS), sorted(needed - set(PIP_REQUIREMENTS))
