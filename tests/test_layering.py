"""No module imports upward: the package's layers, from the bottom, are the contract below.

Every ``import polytask.x`` in a module (at the top or inside a function: a lazy import is
still a dependency) must name a module of the same layer or a lower one. The layers follow
the way data flows (docs/architecture.md): the specification and the architecture plans,
data and tasks, the network, balancing, run-directory formats, inference, training, then what
works on trained runs, then the API and the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "polytask"

LAYERS: list[tuple[str, ...]] = [
    # 0: the specification: errors, registries, configs, plans, architectures (no torch)
    ("errors", "registry", "config", "plan", "arch", "features", "console", "optional"),
    # 1: data and tasks
    ("data", "tasks"),
    # 2: the network
    ("nn", "model", "adapters"),
    # 3: balancing
    ("balance",),
    # 4: run-directory formats
    ("artifacts",),
    # 5: inference on a trained model
    ("inference",),
    # 6: training
    ("train", "relations"),
    # 7: what works on trained runs
    ("slim", "serve", "baselines", "merge", "grow", "track", "sweep", "report"),
    # 8: the API and the command line
    ("api", "cli", "__init__", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# The spec validates balancing and adapter options against their declarations, a layer or
# two up: the only sanctioned upward edges (torch-free declarations, read, not run).
ALLOWED_UPWARD = {("config", "balance"), ("config", "adapters")}


def top_name(module: str) -> str:
    """polytask.x.y -> x."""
    return module.split(".")[1] if "." in module else "__init__"


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every polytask module ``path`` imports, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "polytask":
                names.update(f"polytask.{alias.name}" for alias in node.names)
            elif node.module.startswith("polytask."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("polytask."))
    return names


def owner(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py")


def test_every_module_belongs_to_a_layer():
    unplaced = sorted({owner(path) for path in modules()} - set(RANK))
    assert not unplaced, f"add these to a layer in tests/test_layering.py: {unplaced}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path):
    mine = owner(path)
    upward = []
    for module in imported(path):
        theirs = top_name(module)
        if theirs not in RANK:
            continue  # a name imported from the package root that is not a module
        if RANK[theirs] > RANK[mine] and (mine, theirs) not in ALLOWED_UPWARD:
            upward.append(module)
    assert not upward, f"{path.relative_to(SRC)} (layer {RANK[mine]}) imports {upward}"


def test_lazy_and_package_level_imports_are_seen(tmp_path):
    module = tmp_path / "example.py"
    module.write_text(
        "import polytask.nn.gates\n"
        "from polytask import slim\n"
        "def late():\n"
        "    from polytask.train.trainer import fit\n"
    )
    assert imported(module) == {"polytask.nn.gates", "polytask.slim", "polytask.train.trainer"}
