"""FusionBench 0.2.33's merging algorithms on checkpoints exported by merge_images.py.

Runs in the FusionBench venv (``make fusionbench``), imports nothing of polytask, and reads
only what merge_images.py wrote: the pretrained and fine-tuned shared networks in a plain
module's layout (the same weights: the CNN encoder's conv1 / conv2 / linear and the shared
bottom as ``nn.Linear`` + ReLU), each task's linear head, and the rows. Each algorithm is
FusionBench's own class, given the model pool; where FusionBench leaves data access to a
subclass (Fisher, RegMean, AdaMerging, WEMoE: ``compute_logits``, the data loaders), the
subclass here mirrors FusionBench's CLIP subclass with this benchmark's heads and rows.
Every algorithm gets fresh copies of the models (some update them in place), is timed around
``run(pool)`` only, and is evaluated on each task's test rows with that task's head.

    .venv-fusionbench/bin/python benchmarks/fusionbench_merge.py JOB.json OUT.json
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.loggers import TensorBoardLogger
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)

from fusion_bench.method import (  # noqa: E402
    DareTaskArithmetic,
    DareTiesMerging,
    SimpleAverageAlgorithm,
    TaskArithmeticAlgorithm,
    TaskSingularVectorMerging,
    TiesMergingAlgorithm,
)
from fusion_bench.method.adamerging.layer_wise_adamerging import (  # noqa: E402
    LayerWiseAdaMergingAlgorithm,
)
from fusion_bench.method.adamerging.task_wise_adamerging import (  # noqa: E402
    TaskWiseAdaMergingAlgorithm,
)
from fusion_bench.method.fisher_merging.fisher_merging import (  # noqa: E402
    FisherMergingAlgorithm,
    get_param_squared_gradients,
)
from fusion_bench.method.regmean.regmean import RegMeanAlgorithm  # noqa: E402
from fusion_bench.method.we_moe.we_moe import WeightEnsemblingMoEAlgorithm  # noqa: E402
from fusion_bench.modelpool import BaseModelPool  # noqa: E402
from fusion_bench.models.we_moe import WeightEnsemblingMoE  # noqa: E402

CPU = L.Fabric(accelerator="cpu", devices=1)


class Encoder(nn.Module):
    """polytask's LeNet-style encoder: conv, pool, relu, conv, pool, relu, linear, relu."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        c1, c2 = state["encoder.conv1.weight"], state["encoder.conv2.weight"]
        out, flat = state["encoder.linear.weight"].shape
        self.conv1 = nn.Conv2d(c1.shape[1], c1.shape[0], c1.shape[2])
        self.conv2 = nn.Conv2d(c2.shape[1], c2.shape[0], c2.shape[2])
        self.pool = nn.MaxPool2d(2)
        self.linear = nn.Linear(flat, out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pool(self.conv1(images)))
        x = torch.relu(self.pool(self.conv2(x)))
        return torch.relu(self.linear(x.flatten(1)))


class Shared(nn.Module):
    """The shared part every fine-tuned run moved: the encoder and the shared bottom (its
    layers each ``nn.Linear`` then ReLU, as polytask's expert bank computes them)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.encoder = Encoder(state)
        layers: list[nn.Module] = []
        while f"bottom.{len(layers)}.weight" in state:
            out_features, in_features = state[f"bottom.{len(layers)}.weight"].shape
            layers += [nn.Linear(in_features, out_features), nn.ReLU()]
        self.bottom = nn.Sequential(*layers)
        self.load_state_dict(state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.bottom(self.encoder(images))


class Pool(BaseModelPool):
    """A model pool over in-memory modules and this benchmark's training rows."""

    def __init__(self, models: dict[str, nn.Module], rows: dict[str, TensorDataset]) -> None:
        super().__init__(models)
        self.rows = rows

    def load_train_dataset(self, dataset_name: str, *args: Any, **kwargs: Any) -> TensorDataset:
        return self.rows[dataset_name]


class Data:
    """Heads and rows, shared by the subclasses below."""

    def __init__(self, folder: Path, tasks: list[str]) -> None:
        self.tasks = tasks
        heads = load_file(str(folder / "heads.safetensors"))
        self.heads = {t: (heads[f"{t}.weight"], heads[f"{t}.bias"]) for t in tasks}
        rows = load_file(str(folder / "rows.safetensors"))
        self.split = {
            split: {
                t: TensorDataset(rows[f"{t}.{split}.images"], rows[f"{t}.{split}.labels"])
                for t in tasks
            }
            for split in ("train", "valid", "test")
        }

    def logits(self, module: nn.Module, images: torch.Tensor, task: str) -> torch.Tensor:
        weight, bias = self.heads[task]
        return F.linear(module(images), weight, bias)

    @functools.cache  # noqa: B019 - one infinite shuffled loader per task, as FusionBench keeps
    def loader(self, task: str, batch_size: int = 16):
        generator = torch.Generator().manual_seed(0)
        data = self.split["valid"][task]
        while True:
            yield from DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)


DATA: Data


class Fisher(FisherMergingAlgorithm):
    """FusionBench's Fisher merging; get_fisher_weights as its CLIP subclass computes them."""

    def get_fisher_weights(self, model_name, model, train_dataset, param_names_to_merge):
        loader = DataLoader(train_dataset, batch_size=32, shuffle=False)
        batches, computed = [], 0
        for images, _ in loader:
            if computed >= self.config.num_fisher_examples:
                break
            logits = DATA.logits(model, images, model_name)
            probs = torch.softmax(logits, dim=-1).detach()
            expectation = (torch.sqrt(probs) * torch.log_softmax(logits, dim=-1)).sum(-1).sum(0)
            model.zero_grad()
            expectation.backward()
            batches.append(get_param_squared_gradients(model, param_names_to_merge))
            computed += images.shape[0]
        weights = {}
        for batch in batches:
            for key, value in batch.items():
                weights[key] = weights[key] + value if key in weights else value
        return {key: value / computed for key, value in weights.items()}


class RegMean(RegMeanAlgorithm):
    """FusionBench's RegMean; get_regmean_weights as its CLIP subclass computes them."""

    def get_regmean_weights(self, model_name, model, train_dataset, linear_modules_to_merge):
        grams, counts = {}, {}

        def hook_for(name):
            def hook(module, inputs, output):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
                xtx = x.T @ x
                if name not in grams:
                    grams[name], counts[name] = xtx / x.shape[0], x.shape[0]
                else:
                    grams[name] = (grams[name] * counts[name] + xtx) / (counts[name] + x.shape[0])
                    counts[name] += x.shape[0]

            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in linear_modules_to_merge.items()]
        with torch.no_grad():
            for images, _ in DataLoader(train_dataset, batch_size=32, shuffle=False):
                if counts and next(iter(counts.values())) >= self.num_regmean_examples:
                    break
                DATA.logits(model, images, model_name)
        for handle in handles:
            handle.remove()
        return grams


class TaskWise(TaskWiseAdaMergingAlgorithm):
    _fabric = CPU

    def get_shuffled_test_loader_iter(self, task):
        return DATA.loader(task)

    def compute_logits(self, module, batch, task):
        return DATA.logits(module, batch[0], task)


class LayerWise(LayerWiseAdaMergingAlgorithm):
    def get_shuffled_test_loader_iter(self, task):
        return DATA.loader(task)

    def compute_logits(self, module, images, task):
        return DATA.logits(module, images, task)


class Tokens(nn.Module):
    """WEMoE reads [batch, tokens, hidden]; a row here is one token."""

    def __init__(self, moe: WeightEnsemblingMoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x.unsqueeze(1)).squeeze(1)


class WEMoE(WeightEnsemblingMoEAlgorithm):
    """FusionBench's WEMoE: everything task arithmetic, the bottom an MoE of task vectors,
    built as its CLIP subclass builds the MLPs' MoE."""

    _fabric = CPU

    def load_checkpoint(self, model, checkpoint):
        raise NotImplementedError

    def save_checkpoint(self, model, checkpoint):
        raise NotImplementedError

    def construct_moe_model(self):
        base = self.modelpool.load_model("_pretrained_")
        experts = [self.modelpool.load_model(m) for m in self.modelpool.model_names]
        # The CLIP subclass calls task_arithmetic_merge, which fails in 0.2.33 on its own check
        # ("Tensor type mismatch ... expected Parameter, got Tensor": it mixes state_dict(
        # keep_vars=True) with plain tensors); the algorithm class computes the same merge.
        names = self.modelpool.model_names
        pool = BaseModelPool(
            {
                "_pretrained_": copy.deepcopy(base),
                **{m: copy.deepcopy(e) for m, e in zip(names, experts, strict=True)},
            }
        )
        moe = TaskArithmeticAlgorithm(scaling_factor=self.config.init_lambda).run(pool)
        moe.requires_grad_(False)
        moe.bottom = Tokens(
            WeightEnsemblingMoE(
                hidden_size=base.bottom[0].in_features,
                base_model=base.bottom,
                expert_models=[e.bottom for e in experts],
                init_lambda=self.config.init_lambda,
                batch_first=True,
                router_hidden_layers=self.config.router_hidden_layers,
                batch_reduce=self.config.batch_reduce,
            )
        )
        return moe

    def get_shuffled_test_loader_iter(self, task):
        return DATA.loader(task)

    def compute_logits(self, module, batch, task):
        return DATA.logits(module, batch[0], task)


def build(spec: dict[str, Any]):
    """The algorithm a job entry names, with its options."""
    name = spec["algorithm"]
    if name == "simple_average":
        return SimpleAverageAlgorithm()
    if name == "task_arithmetic":
        return TaskArithmeticAlgorithm(scaling_factor=spec["scaling_factor"])
    if name == "ties":
        return TiesMergingAlgorithm(
            scaling_factor=spec["scaling_factor"],
            threshold=spec["threshold"],
            remove_keys=[],
            merge_func=spec["merge_func"],
        )
    if name == "dare_task_arithmetic":
        return DareTaskArithmetic(
            scaling_factor=spec["scaling_factor"],
            sparsity_ratio=spec["sparsity_ratio"],
            only_on_linear_weights=False,
            rescale=True,
        )
    if name == "dare_ties":
        return DareTiesMerging(
            sparsity_ratio=spec["sparsity_ratio"],
            only_on_linear_weights=False,
            rescale=True,
            scaling_factor=spec["scaling_factor"],
            threshold=spec["threshold"],
            remove_keys=[],
            merge_func=spec["merge_func"],
        )
    if name == "tsv_m":
        return TaskSingularVectorMerging(alpha=spec["alpha"], exclude_keys=[])
    if name == "fisher":
        return Fisher(
            exclude_param_names_regex=[],
            normalize_fisher_weight=spec["normalise"],
            minimal_fisher_weight=1e-6,
            num_fisher_examples=spec["samples"],
        )
    if name == "regmean":
        return RegMean(
            num_regmean_examples=spec["samples"],
            exclude_param_names_regex=[],
            reduce_non_diagonal_ratio=spec["alpha"],
            weight_transpose=True,
        )
    adaptation = {
        "weights": None,
        "init_values": spec.get("init"),
        "clamp_weights": False,
        "tie_weights": True,
        "strict": False,
        "optimizer": "adam",
        "lr": spec["lr"],
        "max_steps": spec["steps"],
        "fast_dev_run": False,
        "batch_size": 16,
    }
    if name == "adamerging_task":
        return TaskWise(DictConfig(adaptation))
    if name == "adamerging_layer":
        algorithm = LayerWise(DictConfig(adaptation))
        # it logs its hyperparameters to the fabric's logger, which FusionBench's command line
        # sets up; give it one (TensorBoard, installed with FusionBench) instead
        logs = Path(tempfile.mkdtemp(prefix="fusionbench-logs-"))
        algorithm.fabric = L.Fabric(
            accelerator="cpu", devices=1, loggers=TensorBoardLogger(str(logs))
        )
        return algorithm
    if name == "wemoe":
        return WEMoE(
            DictConfig(
                {
                    **adaptation,
                    "init_lambda": spec["init"],
                    "router_hidden_layers": 2,
                    "batch_reduce": True,
                    "use_grad_accumulate": True,
                    "checkpoint": False,
                    "save_checkpoint": False,
                }
            )
        )
    raise ValueError(f"unknown algorithm {name}")


@torch.no_grad()
def accuracy(model: nn.Module) -> dict[str, float]:
    model.eval()
    out = {}
    for task in DATA.tasks:
        images, labels = DATA.split["test"][task].tensors
        predictions = torch.cat(
            [
                DATA.logits(model, images[i : i + 500], task).argmax(-1)
                for i in range(0, len(images), 500)
            ]
        )
        out[task] = float((predictions == labels).float().mean())
    return out


def main() -> None:
    global DATA
    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    folder = Path(job["folder"])
    tasks = job["tasks"]
    DATA = Data(folder, tasks)
    states = {
        name: load_file(str(folder / f"{name}.safetensors")) for name in ["pretrained", *tasks]
    }
    results: dict[str, Any] = {
        "fusion_bench": metadata.version("fusion-bench"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "methods": {},
    }
    checks = {name: accuracy(Shared(states[name])) for name in ["pretrained", *tasks]}
    results["unmerged_accuracy"] = {
        name: checks[name][name] if name != "pretrained" else checks[name] for name in checks
    }
    for entry in job["methods"]:
        label = entry["label"]
        torch.manual_seed(entry.get("seed", 0))
        models = {"_pretrained_": Shared(states["pretrained"])}
        models.update({t: Shared(states[t]) for t in tasks})
        pool = Pool(models, DATA.split["train"])
        try:
            algorithm = build(entry)
            started = time.perf_counter()
            merged = algorithm.run(pool)
            seconds = time.perf_counter() - started
            per_task = accuracy(merged)
            record: dict[str, Any] = {
                "per_task": per_task,
                "seconds": seconds,
                "average": sum(per_task.values()) / len(per_task),
            }
            if isinstance(merged.bottom, nn.Sequential):
                file = folder / f"merged_{entry['algorithm']}_{len(results['methods'])}.safetensors"
                save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, str(file))
                record["weights"] = str(file)
        except Exception as error:  # report exactly what failed, keep going
            record = {
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc().splitlines()[-6:],
            }
        results["methods"][label] = record
        out.write_text(json.dumps(results, indent=1))
        print(label, record.get("average", record.get("error")), flush=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
