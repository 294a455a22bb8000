"""PackNet: pruning keeps the largest free weights, experiences own disjoint entries, an old
task's outputs do not change when a new one trains, and each task's copy is its masked
sub-network (which slim cuts out)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from polytask.data.tabular import read_table
from polytask.grow.run import grow
from polytask.grow.strategies.packnet import prune_free
from polytask.grow.stream import stream
from polytask.inference.predictor import Predictor
from polytask.slim import slim


def test_pruning_keeps_the_largest_free_entries():
    weight = torch.tensor([[0.5, -3.0, 0.1], [2.0, -0.2, 1.0]])
    owner = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.int16)
    prune_free(weight, owner, share=0.5, experience=2)
    # free: -3.0, 0.1, 2.0, -0.2, 1.0 -> keep round(2.5) = 2 largest: -3.0 and 2.0
    assert owner.tolist() == [[1, 2, 0], [2, 0, 0]]
    assert weight.tolist() == [[0.5, -3.0, 0.0], [2.0, 0.0, 0.0]]


PACKNET = {"name": "packnet", "options": {"prune": 0.5, "retrain_epochs": 1}}


def packnet_runs(tables: dict[str, Path], folder: Path) -> tuple[Path, Path]:
    """A one-experience PackNet stream (click), then that run grown with PackNet (segment)."""
    spec = {
        "model": {"arch": "mmoe", "num_experts": 2, "hidden": [8], "tower_hidden": [4]},
        "strategy": PACKNET,
        "train": {"epochs": 2, "batch_size": 64, "figures": False},
        "experiences": [
            {
                "tasks": [{"name": "click", "kind": "binary", "target": "clicked"}],
                "data": {"train": str(tables["base"])},
            },
        ],
    }
    stream(spec, folder / "first")
    grown = {
        "tasks": [{"name": "segment", "kind": "multiclass", "target": "segment"}],
        "data": {"train": str(tables["new"])},
        "strategy": PACKNET,
        "train": {"epochs": 2, "batch_size": 64, "figures": False},
    }
    grow(folder / "first", grown, folder / "second")
    return folder / "first", folder / "second"


def test_old_outputs_unchanged_disjoint_owners_and_slim_extracts_each_task(tables, tmp_path):
    first_run, second_run = packnet_runs(tables, tmp_path)
    first, second = Predictor.load(first_run), Predictor.load(second_run)
    rows = read_table(tables["all"])
    features = first.preprocessor.transform(rows)
    with torch.no_grad():
        before = first.model(features).logits[0]
        after = second.model(features).logits[0]
    assert torch.equal(before, after)
    state = load_file(str(second_run / "grow_state.safetensors"))
    owners = {k: v for k, v in state.items() if k.startswith("owner.")}
    assert owners and all(set(v.unique().tolist()) <= {0, 1, 2} for v in owners.values())
    kept = sum(int((v == 1).sum()) for v in owners.values())
    second_kept = sum(int((v == 2).sum()) for v in owners.values())
    total = sum(v.numel() for v in owners.values())
    assert 0.45 * total <= kept <= 0.55 * total  # half pruned after the first experience
    assert 0 < second_kept <= 0.3 * total  # half of the rest after the second
    # the compact weights hold zero wherever no experience owns the entry
    for name, owner in owners.items():
        weight = state["weights." + name[len("owner.") :]]
        assert (weight[owner == 0] == 0).all()
    # slim cuts out the first task's sub-network, which computes what it did before
    report = slim(
        second_run,
        ["click"],
        tmp_path / "slim",
        threshold=0.0,
        latency_repeats=1,
        latency_batches=(8,),
    )
    cut = Predictor.load(tmp_path / "slim")
    with torch.no_grad():
        torch.testing.assert_close(cut.model(features).logits[0], before, rtol=1e-5, atol=1e-6)
    assert report["slim"]["parameters"] < report["full"]["parameters"]
