"""The layers, read from the source (imports inside functions count too): the core imports no
front end; front ends reach the store only through ``kernel_magics.api``; and the inference
process, as it starts, imports no IPython, ipywidgets or mlflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kernel_magics

ROOT = Path(kernel_magics.__file__).parent
# Parse, call kernel_magics.api, render ("kernel_magics.display" also matches display_*.py, the
# views' modules before they became the display/ package).
FRONT_ENDS = (
    "kernel_magics.magics",
    "kernel_magics.widgets",
    "kernel_magics.display",
    "kernel_magics.cli",
    "kernel_magics.commands",
    "kernel_magics.argtypes",
    "kernel_magics.lab",
)
# kernel_magics/__init__.py is IPython's %load_ext hook: it hands over to magics/.
EXTENSION_HOOK = "kernel_magics"


def _imports() -> dict[str, set[str]]:
    """Module name → the modules it imports anywhere in its source."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[module] = names
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith((p + ".", p + "_")) for p in prefixes)


def _store_module(name: str) -> bool:
    # kernel_magics.store (and names imported from it), mlflow, the api's private modules;
    # not kernel_magics.store_server, the CLI's `store` command.
    return (
        name == "kernel_magics.store"
        or name.startswith("kernel_magics.store.")
        or name == "mlflow"
        or name.startswith(("mlflow.", "kernel_magics.api._"))
    )


def test_the_core_imports_no_front_end() -> None:
    wrong = {
        module: sorted(n for n in names if _within(n, FRONT_ENDS))
        for module, names in _imports().items()
        if not _within(module, FRONT_ENDS) and module != EXTENSION_HOOK
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_front_ends_reach_the_store_only_through_the_api() -> None:
    wrong = {
        module: sorted(n for n in names if _store_module(n))
        for module, names in _imports().items()
        if _within(module, FRONT_ENDS)
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_the_views_import_no_widgets() -> None:
    """``display/`` is what a terminal, papermill and a saved notebook show: no ipywidgets and
    no widgets module (the widgets draw with ``display``, not the other way round)."""
    wrong = {
        module: sorted(n for n in names if _within(n, ("kernel_magics.widgets", "ipywidgets")))
        for module, names in _imports().items()
        if _within(module, ("kernel_magics.display",))
    }
    assert {m: n for m, n in wrong.items() if n} == {}


@pytest.mark.process  # a fresh interpreter
def test_the_inference_process_imports_no_ipython_or_mlflow() -> None:
    """What a supervisor and a worker import as they start (``serving/__main__`` would start
    one), with every registered format loaded."""
    code = (
        "import sys\n"
        "import kernel_magics.serving.process.supervisor, kernel_magics.serving.process.worker\n"
        "import kernel_magics.serving.request.app, kernel_magics.formats.model_files\n"
        "from kernel_magics.formats.loaders import served_flavors\n"
        "served_flavors()\n"
        "heavy = ('IPython', 'ipywidgets', 'ipykernel', 'mlflow', 'onnxruntime')\n"
        "front = ('kernel_magics.magics', 'kernel_magics.widgets', 'kernel_magics.display')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(front)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
