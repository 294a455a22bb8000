"""train.device and train.precision: where a run trains, in which precision, and that what
it saves loads anywhere."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import polytask
from polytask.arch import ARCHS
from polytask.balance import BALANCERS
from polytask.config import TrainSpec, parse_spec
from polytask.errors import ConfigError
from polytask.features import Features
from polytask.tasks import task_losses
from polytask.train.device import Placement, placement, resolve_device
from polytask.train.step import train_step
from tests.conftest import base_spec, make_table, model_and_batch
from tests.train.helpers import read_json, train

NO_CUDA = not torch.cuda.is_available()


# ---------------------------------------------------------------------- the device
def test_auto_takes_a_gpu_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line_naming_the_field(name):
    with pytest.raises(ConfigError, match=r"train\.device: cuda.*no CUDA GPU"):
        resolve_device(name)


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_a_gpu_beyond_the_machine_is_refused():
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=count - 1) == torch.device("cuda", count - 1)
    with pytest.raises(ConfigError, match=rf"train\.device: cuda:{count} does not exist"):
        resolve_device(f"cuda:{count}")
    with pytest.raises(ConfigError, match="every process would share"):
        resolve_device("cuda:0", local_rank=0)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "tpu"])
def test_the_spec_refuses_an_unknown_device(tmp_path, name):
    with pytest.raises(ConfigError, match=r"train\.device.*auto, cpu, cuda, cuda:N or mps"):
        parse_spec(base_spec(tmp_path / "t.csv", train={"device": name}))


def test_fp16_on_the_cpu_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"train\.precision: fp16 needs a CUDA device"):
        placement(TrainSpec(device="cpu", precision="fp16"))


def test_cpu_batches_are_not_copied():
    features = Features(torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 3))
    labels = {"a": torch.ones(4)}
    moved, moved_labels = Placement(torch.device("cpu")).batch(features, labels)
    assert moved is features and moved_labels["a"] is labels["a"]


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_cuda_batches_move_whole_through_pinned_memory():
    features = Features(torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 3))
    place = Placement(torch.device("cuda", 0))
    moved, labels = place.batch(features, {"a": torch.ones(4)})
    assert place.pinned
    assert moved.categorical.is_cuda and moved.numeric.is_cuda and labels["a"].is_cuda


# ---------------------------------------------------------------------- precision
def test_bf16_autocast_runs_the_forward_pass_in_bf16_on_the_cpu():
    with Placement(torch.device("cpu"), "bf16").autocast():
        product = torch.ones(2, 3) @ torch.ones(3, 2)
    assert product.dtype == torch.bfloat16
    with Placement(torch.device("cpu"), "fp32").autocast():
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.float32


@pytest.mark.parametrize("method", ["equal", "mgda"])
def test_bf16_trains_on_the_cpu(tmp_path, method):
    """A bf16 run learns (losses fall, metrics finite), records its precision, keeps float32
    weights, and is not the fp32 run (autocast really ran)."""
    path = tmp_path / "t.csv"
    make_table(n=240).to_csv(path, index=False)
    spec = base_spec(path, balance={"method": method}, train={"epochs": 4, "threads": 1})
    runs = {}
    for precision in ("fp32", "bf16"):
        spec["train"] = {**spec["train"], "precision": precision, "device": "cpu"}
        runs[precision] = train(spec, tmp_path / precision)
    summary = read_json(runs["bf16"] / "summary.json")
    assert summary["precision"] == "bf16" and summary["device"] == "cpu"
    rows = _rows(runs["bf16"])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    final = read_json(runs["bf16"] / "metrics.json")["test"]
    assert all(math.isfinite(value) for task in final.values() for value in task.values())
    weights = load_file(str(runs["bf16"] / "model.safetensors"))
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights.values())
    fp32 = read_json(runs["fp32"] / "metrics.json")["test"]
    assert final != fp32
    assert abs(final["click"]["auc"] - fp32["click"]["auc"]) < 0.1


# every architecture a spec names by itself (``plan`` takes a user's plan); the chained ones
# (aitm, esmm) need binary tasks
ARCHITECTURES = sorted(set(ARCHS.names()) - {"plan"})
CHAINED = {"aitm", "esmm"}


def assert_trains(tmp_path: Path, arch: str, train_section: dict) -> None:
    """Two epochs of ``arch`` give finite test metrics."""
    path = tmp_path / "t.csv"
    make_table(n=240).to_csv(path, index=False)
    spec = base_spec(path, model={"arch": arch}, train={"epochs": 2, **train_section})
    if arch in CHAINED:
        spec["tasks"] = [
            {"name": "click", "kind": "binary", "target": "clicked"},
            {"name": "tag", "kind": "binary", "target": "tag_a"},
        ]
    run = train(spec, tmp_path / "run")
    final = read_json(run / "metrics.json")["test"]
    assert all(math.isfinite(value) for task in final.values() for value in task.values())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_in_bf16_on_the_cpu(tmp_path, arch):
    assert_trains(tmp_path, arch, {"device": "cpu", "precision": "bf16", "threads": 1})


def _rows(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["equal", "dwa", "mgda", "upgrad"])
def test_the_gradient_scaler_scales_gradients_not_what_a_balancer_reads(method):
    """fp16's loss scale multiplies the gradients (and the scaler divides it out before the
    update) but not the loss values or the Gramian a method reads: one step with a scale of
    2^10 moves the weights as one step without it."""
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        model, tasks, features, labels = model_and_batch("mmoe")
        balancer = BALANCERS.get(method)(len(tasks))
        params = list(model.parameters()) + balancer.parameters()
        optimizer = torch.optim.SGD(params, lr=0.1)
        result = train_step(
            model,
            features,
            labels,
            tasks,
            balancer,
            optimizer,
            torch.ones(len(tasks)),
            0,
            scaler=scaler,
        )
        results.append((result, [p.detach().clone() for p in params]))
    (plain, plain_params), (scaled, scaled_params) = results
    torch.testing.assert_close(scaled.losses, plain.losses)
    torch.testing.assert_close(scaled.weights, plain.weights, rtol=1e-4, atol=1e-6)
    for a, b in zip(plain_params, scaled_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    losses, _ = task_losses(model(features).logits, labels, tasks)
    assert torch.isfinite(losses).all()


# ---------------------------------------------------------------------- loading elsewhere
def test_a_run_trained_for_a_gpu_loads_and_predicts_on_the_cpu(trained_run, tmp_path):
    """A run's config names the device it trained on; loading it reads the weights onto the
    CPU whatever that says (safetensors), so a GPU run predicts on a CPU-only machine."""
    import shutil

    run = tmp_path / "gpu-run"
    shutil.copytree(trained_run["run"], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["device"] = "cuda:1"
    config["train"]["precision"] = "fp16"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    model = polytask.load(run)
    rows = trained_run["frames"]["test"]
    expected = polytask.load(trained_run["run"]).predict(rows)
    got = model.predict(rows)
    assert got.equals(expected)


# ---------------------------------------------------------------------- on a GPU
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", BALANCERS.names())
def test_every_balancing_method_trains_on_a_gpu(tmp_path, method):
    path = tmp_path / "t.csv"
    make_table(n=240).to_csv(path, index=False)
    spec = base_spec(path, balance={"method": method}, train={"epochs": 2, "device": "cuda"})
    run = train(spec, tmp_path / "run")
    assert read_json(run / "summary.json")["device"].startswith("cuda")
    assert polytask.load(run).predict(make_table(n=20)).notna().all().all()


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_architecture_trains_on_a_gpu_in_every_precision(tmp_path, arch, precision):
    assert_trains(tmp_path, arch, {"device": "cuda", "precision": precision})
