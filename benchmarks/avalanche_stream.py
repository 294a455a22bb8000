"""One task-incremental stream trained with Avalanche 0.6, for benchmarks/continual.py.

Runs in Avalanche's own environment (``make avalanche-venv``: torch 2.14.1, torchvision
0.29.1, avalanche-lib 0.6.0, quadprog), never imports polytask, and writes JSON back: the
accuracy matrix (after each experience, on every experience's test rows) and the wall time of
training and evaluation. The data arrive as an .npz written by continual.py from polytask's
own loader, so both libraries see the same rows:

    x_train_<i>, y_train_<i>, x_test_<i>, y_test_<i>   float32 pixels, int64 classes 0..C-1

The model is the MLP of van de Ven et al.'s protocol: fully connected ReLU layers
(``--hidden``) and one output layer per task (Avalanche's MultiHeadClassifier).

    .venv-avalanche/bin/python benchmarks/avalanche_stream.py --data s.npz --strategy ewc \
        --options '{"ewc_lambda": 1000}' --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from torch import nn


def build_model(inputs: int, hidden: list[int]):
    from avalanche.models import MultiHeadClassifier, MultiTaskModule

    class MultiHeadMLP(MultiTaskModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            width = inputs
            for size in hidden:
                layers += [nn.Linear(width, size), nn.ReLU()]
                width = size
            self.features = nn.Sequential(*layers)
            self.classifier = MultiHeadClassifier(width, initial_out_features=2, masking=False)

        def forward_single_task(self, x, task_label):
            return self.classifier(self.features(x), task_label)

    return MultiHeadMLP()


def strategy_class(name: str):
    from avalanche.training import (
        AGEM,
        EWC,
        GEM,
        LwF,
        Naive,
        Replay,
        SynapticIntelligence,
    )
    from avalanche.training.supervised import JointTraining

    return {
        "naive": Naive,
        "ewc": EWC,
        "si": SynapticIntelligence,
        "lwf": LwF,
        "agem": AGEM,
        "gem": GEM,
        "replay": Replay,
        "joint": JointTraining,
    }[name]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", default="400,400")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    from avalanche.benchmarks import tensors_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ExperienceBalancedBuffer

    data = np.load(args.data)
    count = len([k for k in data.files if k.startswith("x_train_")])
    train = [
        (torch.from_numpy(data[f"x_train_{i}"]), torch.from_numpy(data[f"y_train_{i}"]))
        for i in range(count)
    ]
    test = [
        (torch.from_numpy(data[f"x_test_{i}"]), torch.from_numpy(data[f"y_test_{i}"]))
        for i in range(count)
    ]
    bench = tensors_benchmark(
        train_tensors=train, test_tensors=test, task_labels=list(range(count))
    )

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = build_model(train[0][0].shape[1], [int(h) for h in args.hidden.split(",")])
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    options = json.loads(args.options)
    name = args.strategy
    if name == "replay":  # a fixed budget per experience, like polytask's per task
        per_task = options.pop("rows_per_task")
        policy = ExperienceBalancedBuffer(
            max_size=per_task * count, adaptive_size=False, num_experiences=count
        )
        options["plugins"] = [ReplayPlugin(mem_size=per_task * count, storage_policy=policy)]
        name = "naive"
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy = strategy_class(name)(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=args.batch,
        train_epochs=args.epochs,
        eval_mb_size=4096,
        device="cpu",
        evaluator=evaluator,
        **options,
    )
    started = time.perf_counter()
    matrix: list[list[float | None]] = []
    steps = [bench.train_stream] if args.strategy == "joint" else list(bench.train_stream)
    for done, step in enumerate(steps):
        strategy.train(step)
        results = strategy.eval(bench.test_stream)
        row = []
        for j in range(count):
            key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{j:03d}/Exp{j:03d}"
            seen = args.strategy == "joint" or j <= done
            row.append(float(results[key]) if seen and key in results else None)
        matrix.append(row)
    seconds = time.perf_counter() - started
    with open(args.out, "w") as handle:
        json.dump({"matrix": matrix, "seconds": seconds, "library": "avalanche 0.6.0"}, handle)


if __name__ == "__main__":
    main()
