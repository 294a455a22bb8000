"""Mixed-task batches through LoRA adapters: polytask's one vectorised pass beside PEFT 0.21.2.

Eight tasks, one batch of 256 rows (32 rows of each task, shuffled), one LoRA adapter per task
(rank 8, alpha 16) on the same linear layers of the same frozen backbone, a linear head per
task. Four backbones:

* ``images``: the eight-task image benchmark's network (``merge_images.py``): polytask's
  LeNet-style CNN encoder (its last layer, 320 -> 64, adapted) and a shared bottom (64 -> 128,
  adapted), on 28 x 28 images; random weights (only time and agreement are measured here).
* ``tabular`` and ``tabular-64``: a user ``nn.Module``, an MLP over 128 numeric inputs (four
  layers of 256, or of 64, ReLU: the expert stacks of tabular models, MMoE's experts on
  Census-Income are 16 wide), all four layers adapted;
* ``tokens``: a user ``nn.Module``, six pre-norm feed-forward blocks (a transformer's FFN
  half: 256 -> 1024 -> 256, GELU) over 16 tokens of width 256, mean-pooled; all twelve
  linear layers adapted, as LoRA is used on larger backbones.

Measured, alternating the two libraries round by round in one process (so that a busy
machine slows both alike; the ratios are what to read):

* inference: polytask's adapter model on the mixed batch (eval, no autograd) against PEFT's
  own mixed-batch forward, ``model(x, adapter_names=[...])`` (which runs the frozen layer on
  the whole batch and, in every LoRA layer, each adapter on its rows);
* training: one polytask training step (``polytask.train.step.train_step``: forward, per-task
  losses, backward, Adam) against one PEFT step the way PEFT users train mixed batches
  (PEFT refuses ``adapter_names`` in training mode): per task, ``set_adapter`` + forward +
  loss + backward on its sub-batch, then one Adam step (``benchmarks/_peft.py``).
* the frozen backbone alone (the plain module, no adapter): both libraries run it once over
  the batch at inference, so PEFT's time over it bounds any speed-up there;
* agreement: PEFT's adapters (B made non-zero) copied into polytask's layout; the largest
  absolute difference of the two libraries' logits on the batch.

    python benchmarks/adapters_throughput.py --rounds 7

Needs peft (``pip install -e .[bench]`` or ``make bench``); writes
docs/results/adapters_throughput.json.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info
from _peft import adapter_parameters, mixed_forward, peft_model, train_mixed_step
from _summary import write_json

from polytask.config import parse_spec
from polytask.data.preprocess import Preprocessor
from polytask.model import model_for
from polytask.nn.cnn import CNNEncoder
from polytask.train.step import train_step
from polytask.train.trainer import build_balancer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "adapters_throughput.json"
TASKS = [f"task{t}" for t in range(8)]
BATCH, RANK, ALPHA, CLASSES, BOTTOM = 256, 8, 16.0, 10, 128


class Blocks(nn.Module):
    """Pre-norm feed-forward blocks over tokens, read from the numeric inputs."""

    def __init__(self, tokens: int = 16, width: int = 256, depth: int = 6) -> None:
        super().__init__()
        self.tokens, self.width, self.out_dim = tokens, width, width
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 4 * width),
                nn.GELU(),
                nn.Linear(4 * width, width),
            )
            for _ in range(depth)
        )

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        x = numeric[:, : self.tokens * self.width].reshape(-1, self.tokens, self.width)
        for block in self.blocks:
            x = x + block(x)
        return x.mean(1)


class Tabular(nn.Module):
    """An MLP over a row's numeric inputs (a tabular expert stack): 128 -> 256 -> ... -> 256."""

    def __init__(self, inputs: int = 128, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.inputs, self.out_dim = inputs, width
        sizes = [inputs] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        x = numeric[:, : self.inputs]
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def backbone(name: str) -> tuple[nn.Module, int, list[str]]:
    """The encoder module, its input width and its adapted linear layers' names in it."""
    torch.manual_seed(0)
    if name == "images":
        return CNNEncoder([1, 28, 28], [10, 20], 64, 2 * 784), 784, ["linear"]
    if name.startswith("tabular"):
        mlp = Tabular(width=64 if name == "tabular-64" else 256)
        return mlp, mlp.inputs, [f"layers.{i}" for i in range(len(mlp.layers))]
    module = Blocks()
    names = [f"blocks.{b}.{layer}" for b in range(6) for layer in (1, 3)]
    return module, module.tokens * module.width, names


class Plain(nn.Module):
    """The backbone as PEFT wraps it: encoder then the shared bottom (Linear + ReLU)."""

    def __init__(self, encoder: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.bottom = nn.Sequential(nn.Linear(out_dim, BOTTOM), nn.ReLU())

    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        empty = numeric.new_zeros(numeric.shape[0], 0, dtype=torch.long)
        return self.bottom(self.encoder(empty, numeric))


def batch(inputs: int) -> tuple[pd.DataFrame, list[str]]:
    """256 rows: inputs, and one label each of its task (the other tasks' labels missing)."""
    rng = np.random.default_rng(0)
    owners = rng.permutation(np.repeat(np.arange(len(TASKS)), BATCH // len(TASKS)))
    frame = pd.DataFrame(
        rng.normal(size=(BATCH, inputs)).astype(np.float32),
        columns=[f"p{i}" for i in range(inputs)],
    )
    labels = np.zeros(BATCH)
    for t in range(len(TASKS)):  # every class among each task's rows
        mine = np.flatnonzero(owners == t)
        labels[mine] = rng.permutation(np.arange(len(mine)) % CLASSES)
    for t, task in enumerate(TASKS):
        frame[task] = np.where(owners == t, labels, np.nan)
    return frame, [TASKS[t] for t in owners]


def polytask_model(encoder: nn.Module, out_dim: int, frame: pd.DataFrame, targets: list[str]):
    spec = parse_spec(
        {
            "data": {"train": "unused.csv", "scaling": "none"},
            "tasks": [{"name": t, "kind": "multiclass", "target": t} for t in TASKS],
            "model": {
                "arch": "shared_bottom",
                "hidden": [BOTTOM],
                "tower_hidden": [],
                "encoder": {"name": "custom"},
                "adapters": {
                    "method": "lora",
                    "targets": targets,
                    "options": {"rank": RANK, "alpha": ALPHA},
                    "heads": "train",
                },
            },
            "train": {"lr": 1e-3},
        }
    )
    preprocessor = Preprocessor.fit(frame, spec.data, spec.tasks)
    tasks = preprocessor.build_tasks(spec.tasks)
    model = model_for(spec.model, preprocessor, tasks, lambda: copy.deepcopy(encoder))
    return spec, preprocessor, tasks, model


def copy_weights(
    plain: Plain, heads: dict[str, nn.Linear], peft: Any, model: nn.Module, layers: dict[str, str]
) -> None:
    """PEFT's backbone, heads and LoRA pairs into polytask's layout (``layers``: PEFT module
    name -> polytask adapter key)."""
    from _peft import lora_weights

    state = model.state_dict()
    with torch.no_grad():
        state["arch.levels.0.experts.weights.0"].copy_(plain.bottom[0].weight.T[None])
        state["arch.levels.0.experts.biases.0"].copy_(plain.bottom[0].bias[None, None])
        for t, task in enumerate(TASKS):
            state["towers.output.weights.0"][t].copy_(heads[task].weight.T)
            state["towers.output.biases.0"][t, 0].copy_(heads[task].bias)
            for name, (a, b, scaling) in lora_weights(peft, task).items():
                adapter = model.adapters[layers[name]]
                assert abs(adapter.scale - scaling) < 1e-12
                adapter.down[t, 0].copy_(a.T)
                adapter.up[t, 0].copy_(b.T)


def timed(step: Callable[[], object], rounds: int, repeats: int) -> list[float]:
    return [_once(step, repeats) for _ in range(rounds)]


def _once(step: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def run_backbone(name: str, rounds: int, repeats: int) -> dict[str, Any]:
    encoder, inputs, inner = backbone(name)
    frame, owners = batch(inputs)
    polytask_targets = ["encoders.0." + n for n in inner] + ["arch.levels.0.experts.0"]
    spec, preprocessor, tasks, model = polytask_model(
        encoder, encoder.out_dim, frame, polytask_targets
    )
    rows = frame
    features = preprocessor.transform(rows)
    labels = preprocessor.encode_labels(rows, tasks)
    x = features.numeric  # PEFT's module reads the same tensor
    y = torch.tensor([int(rows[task].iloc[i]) for i, task in enumerate(owners)])

    plain = Plain(copy.deepcopy(encoder), encoder.out_dim)
    torch.manual_seed(1)
    heads = {task: nn.Linear(BOTTOM, CLASSES) for task in TASKS}
    peft_targets = ["encoder." + n for n in inner] + ["bottom.0"]
    bare = copy.deepcopy(plain).eval()  # PEFT wraps ``plain`` in place
    peft = peft_model(plain, peft_targets, RANK, ALPHA, TASKS, seed=0)
    with torch.no_grad():  # trained-looking adapters: B away from its zero start
        for task in TASKS:
            for parameter in adapter_parameters(peft, task):
                if not parameter.abs().sum():
                    parameter.normal_(0, 0.05)
    layers = dict(zip(peft_targets, [t.replace(".", "__") for t in polytask_targets], strict=True))
    copy_weights(plain, heads, peft, model, layers)

    model.eval()
    with torch.no_grad():
        ours = model(features).logits
        theirs = mixed_forward(peft, x, owners)
    # polytask computes every task for every row by default; compare each row's own task
    ours_rows = torch.stack([ours[TASKS.index(task)][i] for i, task in enumerate(owners)])
    theirs_rows = torch.stack([heads[task](theirs[i]) for i, task in enumerate(owners)])
    asked = features.asking(torch.stack([labels[t] == labels[t] for t in TASKS], 1))
    with torch.no_grad():
        own = model(asked).logits
    own_rows = torch.stack([own[TASKS.index(task)][i] for i, task in enumerate(owners)])
    difference = float((own_rows - theirs_rows).abs().max().detach())
    assert torch.allclose(ours_rows, own_rows, atol=1e-5)

    def ours_infer() -> object:
        with torch.no_grad():
            return [model(asked).logits[TASKS.index(t)] for t in TASKS[:1]]

    def theirs_infer() -> object:
        out = mixed_forward(peft, x, owners)
        return [heads[task](out[i : i + 1]) for i, task in enumerate(owners[:1])]

    trainable = [p for p in model.parameters() if p.requires_grad]
    for _, parameter in model.backbone_parameters():
        if not _.startswith("towers."):
            parameter.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    balancer = build_balancer(spec, len(TASKS))
    weights = torch.ones(len(TASKS))

    def ours_train() -> object:
        model.train()
        return train_step(model, features, labels, tasks, balancer, optimizer, weights, 0)

    head_params = [p for h in heads.values() for p in h.parameters()]
    peft_optimizer = torch.optim.Adam(
        [p for task in TASKS for p in adapter_parameters(peft, task)] + head_params, lr=1e-3
    )

    def theirs_train() -> object:
        return train_mixed_step(peft, x, owners, heads, peft_optimizer, y, F.cross_entropy)

    def backbone_alone() -> object:  # the frozen network, no adapter: what bounds a speed-up
        with torch.no_grad():
            return bare(x)

    steps = {
        "ours_infer": ours_infer,
        "theirs_infer": theirs_infer,
        "ours_train": ours_train,
        "theirs_train": theirs_train,
        "backbone_infer": backbone_alone,
    }
    for step in steps.values():  # warm up
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(_once(step, repeats))
    median = {k: statistics.median(v) for k, v in times.items()}
    trainable_count = sum(p.numel() for p in trainable)
    return {
        "adapted_layers": polytask_targets,
        "trainable_parameters": trainable_count,
        "backbone_parameters": sum(p.numel() for _, p in model.backbone_parameters()),
        "max_abs_logit_difference": difference,
        "seconds_per_batch": times,
        "median_seconds_per_batch": median,
        "inference": {
            "polytask_rows_per_second": BATCH / median["ours_infer"],
            "peft_rows_per_second": BATCH / median["theirs_infer"],
            "speedup": median["theirs_infer"] / median["ours_infer"],
            # no implementation runs the frozen backbone faster: PEFT's time over it alone
            "largest_possible_speedup": median["theirs_infer"] / median["backbone_infer"],
        },
        "training": {
            "polytask_rows_per_second": BATCH / median["ours_train"],
            "peft_rows_per_second": BATCH / median["theirs_train"],
            "speedup": median["theirs_train"] / median["ours_train"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--backbones", nargs="+", default=["tabular-64", "tabular", "images", "tokens"]
    )
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "command": "python benchmarks/adapters_throughput.py " + " ".join(sys.argv[1:]),
        "machine": machine_info("peft", "transformers"),
        "setup": {
            "tasks": len(TASKS),
            "batch": BATCH,
            "rank": RANK,
            "alpha": ALPHA,
            "threads": args.threads,
        },
        "load_average_1m_start": os.getloadavg()[0],
        "backbones": {},
    }
    for name in args.backbones:
        record = run_backbone(name, args.rounds, args.repeats)
        results["backbones"][name] = record
        print(
            f"{name}: inference {record['inference']['speedup']:.2f}x PEFT, training "
            f"{record['training']['speedup']:.2f}x PEFT, max |logit difference| "
            f"{record['max_abs_logit_difference']:.2e}",
            flush=True,
        )
    results["load_average_1m_end"] = os.getloadavg()[0]
    write_json(args.json, results)


if __name__ == "__main__":
    main()
