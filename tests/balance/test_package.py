"""The balance package's boundary: importing it (to validate a config or list the methods)
does not import torch, and code outside it uses only its public modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import polytask
import polytask.balance

SRC = Path(polytask.__file__).parent
BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
PUBLIC = {"polytask.balance", "polytask.balance.base", "polytask.balance.options"}

TORCH_FREE = """
import sys
from typer.testing import CliRunner
from polytask.balance import OPTIONS
from polytask.cli import app
from polytask.config import parse_spec
from polytask.errors import ConfigError

raw = {
    "data": {"train": "t.csv"},
    "tasks": [{"name": "a", "kind": "binary", "target": "a"}],
    "balance": {"method": "cagrad", "options": {"c": 0.2, "mode": "exact"}},
}
assert parse_spec(raw).balance.resolved_options().rescale == 1
raw["balance"]["options"] = {"c": 2}
try:
    parse_spec(raw)
except ConfigError:
    pass
result = CliRunner().invoke(app, ["balancers", "--json"])
assert result.exit_code == 0, result.output
assert len(OPTIONS.names()) == 18
assert "torch" not in sys.modules, "torch was imported"
"""


def test_validating_a_config_and_listing_the_methods_do_not_import_torch():
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_registry_loads_every_method_on_its_first_look_up():
    code = (
        "from polytask.balance.base import BALANCERS\n"
        "from polytask.balance import OPTIONS\n"
        "assert BALANCERS.names() == OPTIONS.names(), BALANCERS.names()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _balance_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every import of polytask.balance... in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("polytask.balance")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "polytask.balance"
        ):
            found += [(str(node.module), a.name) for a in node.names]
    return found


def _private(module: str, name: str) -> bool:
    """Whether importing ``name`` from ``module`` reaches past the package's public surface:
    polytask.balance's ``__all__``, and the public names of its base and options modules."""
    if module == "polytask.balance":
        return name not in polytask.balance.__all__
    return module not in PUBLIC or name.startswith("_")


def test_code_outside_the_package_uses_only_its_public_modules():
    outside = [p for p in SRC.rglob("*.py") if SRC / "balance" not in p.parents]
    outside += sorted(BENCHMARKS.glob("*.py"))
    assert len(outside) > 20
    reached = [
        f"{path.name}: {module} {name}".rstrip()
        for path in outside
        for module, name in _balance_imports(path)
        if _private(module, name)
    ]
    assert reached == []
    assert _private("polytask.balance", "jacobian") and _private("polytask.balance._linalg", "nnls")
    assert _private("polytask.balance.famo", "masked_adam_step")
    assert not _private("polytask.balance.base", "GramianWeighting")
