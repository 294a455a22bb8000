"""Fisher information and Gram matrices against brute-force computations."""

from __future__ import annotations

import pytest
import torch

from polytask.config import load_spec
from polytask.data.preprocess import Preprocessor
from polytask.errors import ConfigError
from polytask.merge.base import RowOptions
from polytask.merge.statistics import (
    RunRows,
    RunStatistics,
    check_entropy,
    fisher_cotangents,
    prediction_entropy,
    row_fisher,
    sample_labels,
)
from polytask.model import model_for
from tests.conftest import base_spec, make_table


def setup(
    arch: str = "mmoe",
    tasks: tuple[str, ...] = ("click", "segment", "spend"),
    hidden: list[int] | None = None,
):
    torch.manual_seed(0)
    frame = make_table(n=60, seed=4)
    model_section = {"arch": arch, "num_experts": 2, "hidden": hidden or [4]}
    raw = base_spec("unused.csv", model=model_section)
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in tasks]
    spec = load_spec(raw)
    preprocessor = Preprocessor.fit(frame, spec.data, spec.tasks)
    task_list = preprocessor.build_tasks(spec.tasks)
    model = model_for(spec.model, preprocessor, task_list).eval()
    features = preprocessor.transform(frame)
    state = model.state_dict()
    keys = [k for k, v in state.items() if v.is_floating_point()]
    run = RunRows("run", list(range(len(task_list))), spec)
    run._frames["train"] = features
    statistics = RunStatistics(
        model,
        task_list,
        preprocessor,
        [run],
        [state],
        [{k: torch.ones_like(state[k], dtype=torch.bool) for k in keys}],
        keys,
        lambda merged: {**state, **merged},
    )
    return model, task_list, features, statistics


def brute_force_fisher(model, tasks, features):
    """Σ over rows and every label value y of p(y|x) (∂ log p(y|x) / ∂θ)², one backward each."""
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for row in range(len(features)):
        one = features.take(torch.tensor([row]))
        logits = model(one).logits
        for task, out in zip(tasks, logits, strict=True):
            out = out[0]
            if task.kind.value == "multiclass":
                outcomes = [
                    (torch.softmax(out, -1)[y], torch.log_softmax(out, -1)[y])
                    for y in range(out.shape[0])
                ]
            elif task.kind.value in ("binary", "multilabel"):  # labels independent
                p = torch.sigmoid(out)
                outcomes = [(p[j], torch.log(p[j])) for j in range(len(p))]
                outcomes += [(1 - p[j], torch.log(1 - p[j])) for j in range(len(p))]
            else:  # regression: a unit-variance Gaussian, E[(y - f)^2 (∂f)^2] = (∂f)^2
                outcomes = [(torch.ones(()), out[0])]
            for prob, log_p in outcomes:
                grads = torch.autograd.grad(
                    log_p, list(params.values()), retain_graph=True, allow_unused=True
                )
                for (key, _), grad in zip(params.items(), grads, strict=True):
                    if grad is not None:
                        total[key] += prob.detach() * grad**2
    return {k: v / len(features) for k, v in total.items()}


def test_fisher_per_row_with_the_exact_label_expectation():
    model, tasks, features, statistics = setup()
    fisher = statistics.fisher(RowOptions(samples=60))[0]
    expected = brute_force_fisher(
        model,
        tasks,
        features.take(torch.randperm(60, generator=torch.Generator().manual_seed(0))[:60]),
    )
    for key, value in expected.items():
        torch.testing.assert_close(fisher[key], value, rtol=1e-4, atol=1e-7)


def test_grams_are_the_inner_products_of_each_layers_inputs():
    model, _, features, statistics = setup("shared_bottom", ("click", "segment"), [4, 3])
    grams = statistics.grams(RowOptions(samples=60))[0]
    with torch.no_grad():
        x = model.encoders[0](features.categorical, features.numeric)  # the bottom's input
        bank = model.arch.levels[0].experts
        hidden = torch.relu(x @ bank.weights[0][0] + bank.biases[0][0])  # its second layer's
    first, second = (
        grams["arch.levels.0.experts.weights.0"],
        grams["arch.levels.0.experts.weights.1"],
    )
    assert not first.input_last and first.gram.shape == (1, x.shape[1], x.shape[1])
    torch.testing.assert_close(first.gram[0], x.T @ x / 60)
    torch.testing.assert_close(second.gram[0], hidden.T @ hidden / 60)

    mmoe, _, features, statistics = setup("mmoe", ("click", "segment"))
    grams = statistics.grams(RowOptions(samples=60))[0]
    with torch.no_grad():
        x = mmoe.encoders[0](features.categorical, features.numeric)
    gates, experts = grams["arch.levels.0.gates.weight"], grams["arch.levels.0.experts.weights.0"]
    for member in range(2):  # every gate and every expert reads the encoder output
        torch.testing.assert_close(gates.gram[member], x.T @ x / 60)
        torch.testing.assert_close(experts.gram[member], x.T @ x / 60)


def test_entropy_of_each_task_kind():
    _, tasks, _, _ = setup()
    click, segment, spend = tasks
    logits = torch.tensor([[0.0], [100.0]])
    assert torch.isclose(prediction_entropy(click, logits), torch.log(torch.tensor(2.0)) / 2)
    uniform = torch.zeros(4, 3)
    assert torch.isclose(prediction_entropy(segment, uniform), torch.log(torch.tensor(3.0)))
    with pytest.raises(ConfigError, match="regression"):
        prediction_entropy(spend, torch.zeros(2, 1))
    runs = [RunRows("a", [2], None), RunRows("b", [2], None)]  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="all regressions"):
        check_entropy(runs, tasks)
    check_entropy([*runs, RunRows("c", [0], None)], tasks)  # type: ignore[arg-type]


def test_sampled_fisher_is_an_unbiased_estimate_of_the_exact_one():
    _, _, features, statistics = setup()
    repeats = 150  # every row many times: the sampled labels average out
    index = torch.arange(len(features)).repeat(repeats)
    statistics.runs[0]._frames["train"] = features.take(index)
    options = RowOptions(samples=len(index))
    exact = statistics.fisher(options, "exact")[0]
    sampled = statistics.fisher(options, "sampled")[0]
    for key, value in exact.items():
        if float(value.sum()) == 0.0:
            continue
        relative = float((sampled[key].sum() - value.sum()).abs() / value.sum())
        assert relative < 0.1, (key, relative)
        correlation = torch.corrcoef(torch.stack([sampled[key].flatten(), value.flatten()]))[0, 1]
        assert float(correlation) > 0.9, key


def jacobian_fisher(statistics, estimate: str) -> dict[str, torch.Tensor]:
    """The per-row Jacobian path (vmap(jacrev) / vmap(grad)) for every parameter."""
    options = RowOptions(samples=60)
    model = statistics._model(0)
    rows = statistics.runs[0].sample(options, statistics.preprocessor)
    names = {k for k, _ in model.named_parameters()}
    labels = None
    if estimate == "sampled":  # the labels the hooked path draws, in the same order
        with torch.no_grad():
            logits = [model(rows).logits[t] for t in statistics.runs[0].tasks]
        tasks = [statistics.tasks[t] for t in statistics.runs[0].tasks]
        labels = sample_labels(tasks, logits, torch.Generator().manual_seed(options.seed + 7))
    total = statistics._jacobian_fisher(model, rows, 0, names, labels)
    return {k: v / len(rows) for k, v in total.items()}


@pytest.mark.parametrize("estimate", ["exact", "sampled"])
@pytest.mark.parametrize("task", ["click", "segment", "spend", "tags"])
def test_hooked_fisher_equals_the_per_row_jacobian_for_each_task_kind(task, estimate):
    _, _, _, statistics = setup("shared_bottom", (task,), [4, 3])
    hooked = statistics.fisher(RowOptions(samples=60), estimate)[0]
    expected = jacobian_fisher(statistics, estimate)
    assert any(float(v.abs().sum()) > 0 for v in expected.values())
    for key, value in expected.items():
        torch.testing.assert_close(hooked[key], value, rtol=1e-4, atol=1e-8)


def test_fisher_with_uncovered_parameters_takes_them_from_per_row_jacobians():
    """MMoE's gates and the tabular encoder's embeddings have no hooks; every task kind at
    once, against the per-row Jacobians and the brute-force loop."""
    model, tasks, features, statistics = setup("mmoe", ("click", "segment", "spend", "tags"))
    fisher = statistics.fisher(RowOptions(samples=60))[0]
    expected = jacobian_fisher(statistics, "exact")
    rows = features.take(torch.randperm(60, generator=torch.Generator().manual_seed(0)))
    brute = brute_force_fisher(model, tasks, rows)
    for key in ("arch.levels.0.gates.weight", "encoders.0.embedding.weight"):
        assert float(expected[key].abs().sum()) > 0
    for key, value in expected.items():
        torch.testing.assert_close(fisher[key], value, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(fisher[key], brute[key], rtol=1e-4, atol=1e-7)


def test_cotangents_square_to_the_exact_fisher_of_a_row():
    _, tasks, _, _ = setup()
    generator = torch.Generator().manual_seed(3)
    for task in tasks:
        logits = torch.randn(5, 3 if task.kind.value == "multiclass" else 1, generator=generator)
        jacobian = torch.randn(5, logits.shape[1], 7, generator=generator)  # [R, O, θ]
        ours = sum(
            (torch.einsum("ro,rop->rp", u, jacobian) ** 2).sum(0)
            for u in fisher_cotangents(task, logits)
        )
        torch.testing.assert_close(ours, row_fisher([task], [logits], [jacobian]))


def test_batch_estimate_squares_each_batchs_summed_surrogate_gradient():
    """FusionBench's definition, computed here by hand: per batch of 7 rows in the sampled
    order, (∂/∂θ Σ_rows Σ_y √p_y log p_y)², √p constant, summed, divided by the rows."""
    model, tasks, features, statistics = setup("mmoe", ("click", "segment", "tags"))
    options = RowOptions(samples=60)
    fisher = statistics.fisher(options, "batch", batch_size=7)[0]
    rows = features.take(torch.randperm(60, generator=torch.Generator().manual_seed(0)))
    params = dict(model.named_parameters())
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, 60, 7):
        logits = model(rows.take(torch.arange(start, min(start + 7, 60)))).logits
        surrogate = torch.zeros(())
        for task, z in zip(tasks, logits, strict=True):
            if task.kind.value == "multiclass":
                p = torch.softmax(z, -1)
                surrogate = surrogate + (p.detach().sqrt() * p.log()).sum()
            else:
                p = torch.sigmoid(z)
                for q in (p, 1 - p):
                    surrogate = surrogate + (q.detach().sqrt() * q.log()).sum()
        grads = torch.autograd.grad(surrogate, list(params.values()), allow_unused=True)
        for key, grad in zip(params, grads, strict=True):
            if grad is not None:
                expected[key] += grad**2
    for key, value in expected.items():
        torch.testing.assert_close(fisher[key], value / 60, rtol=1e-4, atol=1e-9)


def test_batch_estimate_refuses_a_regression():
    _, _, _, statistics = setup("mmoe", ("click", "spend"))
    with pytest.raises(ConfigError, match=r"estimate 'batch'.*'spend'"):
        statistics.fisher(RowOptions(samples=60), "batch")
