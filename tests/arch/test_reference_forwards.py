"""CGC, PLE and OMoE against reference forwards written from the papers' equations.

The references below know nothing of plans, fused banks, readers or masks: they loop over
rows, tasks and experts and use ``F.linear`` and ``torch.softmax`` only. They read each
parameter out of the executor's modules by its meaning (expert e's layer i is
``levels[l].experts.weights[i][e]`` / ``biases[i][e]``; gate g's logits are
``levels[l].gates.weight[g]`` / ``bias[g]``, one column per expert of the level), so the
fused :class:`~polytask.nn.executor.PlanNetwork` must compute the same numbers.

CGC / PLE (Tang et al., RecSys 2020), with k experts per task and s shared experts per level:

- level 1 reads the input x; at level l > 1, task t's experts and gate read task t's output
  of level l-1, the shared experts and the shared gate read the shared output of level l-1;
- task t's gate: g_t(x) = softmax(W_t x + b_t) over [task t's k experts, the s shared ones],
  and task t's output is sum_j g_t(x)_j * expert_j(x) over those experts only;
- every level but the last also has a shared gate, a softmax over ALL experts of the level
  (every task's and the shared ones); CGC is a single level (no shared gate).

OMoE (Ma et al., KDD 2018, the one-gate baseline): n experts and ONE softmax gate, whose
mixture every task's tower reads.

The executor lays its experts out as the architecture's plan says (task t's experts at
positions t*k .. t*k+k-1, then the shared ones; task t's gate is gate t, the shared gate is
gate T); the references use that numbering to find each parameter, nothing else.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytask.nn.executor import PlanNetwork
from tests.arch.helpers import network

TOLERANCE = 1e-6
DTYPE = torch.float64
IN_DIM, ROWS, TASKS = 5, 6, 3


def randomised(net: PlanNetwork, seed: int) -> PlanNetwork:
    """Every parameter drawn from N(0, 1): gates far from uniform and experts far apart, so
    a gate paired with the wrong expert, or an expert reading the wrong input, shows. In
    float64: with weights this large, float32 rounding alone (different summation orders)
    reaches ~1e-5, while a structural error moves outputs by O(1); in float64 the two are
    many orders of magnitude apart and the tolerance can be tight."""
    generator = torch.Generator().manual_seed(seed)
    net = net.double()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=DTYPE))
    return net.eval()


def rows(seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(ROWS, IN_DIM, generator=generator, dtype=DTYPE)


# ---------------------------------------------------------------------- the references
def expert_output(net: PlanNetwork, level: int, expert: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``expert`` of level ``level`` on one row: ReLU after every linear layer."""
    bank = net.levels[level].experts
    for weight, bias in zip(bank.weights, bank.biases, strict=True):
        # weight[expert] is [in, out] (x @ W), bias[expert] is [1, out]
        x = F.relu(F.linear(x, weight[expert].T, bias[expert, 0]))
    return x


def gate_weights(
    net: PlanNetwork, level: int, gate: int, x: torch.Tensor, experts: list[int]
) -> torch.Tensor:
    """softmax(W_g x + b_g) over ``experts`` only, on one row: [len(experts)]."""
    gates = net.levels[level].gates
    columns = torch.tensor(experts)
    weight = gates.weight[gate][:, columns]  # [in, len(experts)]
    bias = gates.bias[gate, 0, columns]
    return torch.softmax(F.linear(x, weight.T, bias), dim=-1)


def mixture(
    net: PlanNetwork,
    level: int,
    gate: int,
    gate_input: torch.Tensor,
    experts: dict[int, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate ``gate``'s weighted sum of the ``experts`` (index -> output), and its weights."""
    indices = list(experts)
    weights = gate_weights(net, level, gate, gate_input, indices)
    out = sum(w * experts[e] for w, e in zip(weights, indices, strict=True))
    assert isinstance(out, torch.Tensor)
    return out, weights


def ple_reference(
    net: PlanNetwork, x: torch.Tensor, task_experts: int, shared_experts: int, levels: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per task [T, B, D] and, per level, every gate's weights over the level's experts
    [G, B, E] (0 where the gate may not weight an expert), row by row."""
    k, s = task_experts, shared_experts

    def own(t: int) -> list[int]:
        return [t * k + j for j in range(k)]

    shared = [TASKS * k + j for j in range(s)]
    count = TASKS * k + s
    outputs, all_weights = [], []
    for row in x:
        task_inputs = [row] * TASKS  # what task t's experts and gate read
        shared_input = row  # what the shared experts and the shared gate read
        row_weights = []
        for level in range(levels):
            last = level == levels - 1
            outs = {}
            for t in range(TASKS):
                for e in own(t):
                    outs[e] = expert_output(net, level, e, task_inputs[t])
            for e in shared:
                outs[e] = expert_output(net, level, e, shared_input)
            gates = TASKS if last else TASKS + 1
            weights = torch.zeros(gates, count, dtype=DTYPE)
            next_inputs = []
            for t in range(TASKS):
                chosen = own(t) + shared
                out, w = mixture(net, level, t, task_inputs[t], {e: outs[e] for e in chosen})
                weights[t, chosen] = w
                next_inputs.append(out)
            if not last:
                shared_input, w = mixture(net, level, TASKS, shared_input, outs)
                weights[TASKS, list(outs)] = w
            task_inputs = next_inputs
            row_weights.append(weights)
        outputs.append(torch.stack(task_inputs))
        all_weights.append(row_weights)
    per_level = [torch.stack([w[level] for w in all_weights], 1) for level in range(levels)]
    return torch.stack(outputs, 1), per_level


def omoe_reference(net: PlanNetwork, x: torch.Tensor, num_experts: int) -> torch.Tensor:
    """One gate's mixture of the experts, row by row: [B, D] (every task reads it)."""
    mixed = []
    for row in x:
        outs = {e: expert_output(net, 0, e, row) for e in range(num_experts)}
        mixed.append(mixture(net, 0, 0, row, outs)[0])
    return torch.stack(mixed)


# ---------------------------------------------------------------------- the tests
PLE_CASES = [
    # (arch, task_experts, shared_experts, levels, hidden)
    ("cgc", 1, 1, 1, [4]),
    ("cgc", 2, 3, 1, [6, 3]),
    ("ple", 1, 2, 2, [4]),
    ("ple", 2, 1, 2, [5, 3]),
    ("ple", 3, 2, 3, [4]),
    ("ple", 1, 1, 3, [6, 4]),
]


@pytest.mark.parametrize(("arch", "task_experts", "shared_experts", "levels", "hidden"), PLE_CASES)
def test_cgc_and_ple_equal_the_papers_equations(arch, task_experts, shared_experts, levels, hidden):
    options = {"task_experts": task_experts, "shared_experts": shared_experts}
    if arch == "ple":
        options["levels"] = levels
    net = randomised(network(arch, IN_DIM, TASKS, hidden=hidden, options=options), seed=levels)
    assert len(net.levels) == levels
    x = rows(7)

    with torch.no_grad():
        result = net(x)
        expected, expected_weights = ple_reference(net, x, task_experts, shared_experts, levels)

    assert result.tasks.shape == (TASKS, ROWS, hidden[-1])
    torch.testing.assert_close(result.tasks, expected, rtol=0.0, atol=TOLERANCE)
    for level, (got, want) in enumerate(zip(result.gates, expected_weights, strict=True)):
        assert got is not None and got.shape == want.shape, level
        torch.testing.assert_close(got, want, rtol=0.0, atol=TOLERANCE)


@pytest.mark.parametrize(("arch", "task_experts", "shared_experts", "levels", "hidden"), PLE_CASES)
def test_ple_gates_give_exactly_zero_weight_to_experts_they_may_not_use(
    arch, task_experts, shared_experts, levels, hidden
):
    """Task t's gate weights task t's and the shared experts only: every other task's
    experts get weight exactly 0 (not a small softmax share), and the allowed ones more.
    The shared gate of a non-final level weights every expert."""
    options = {"task_experts": task_experts, "shared_experts": shared_experts}
    if arch == "ple":
        options["levels"] = levels
    net = randomised(network(arch, IN_DIM, TASKS, hidden=hidden, options=options), seed=3)
    x = rows(8, scale=3.0)
    with torch.no_grad():
        gates = net(x).gates
    k, count = task_experts, TASKS * task_experts + shared_experts
    for level, weights in enumerate(gates):
        assert weights is not None
        last = level == levels - 1
        assert weights.shape == (TASKS if last else TASKS + 1, ROWS, count)
        for t in range(TASKS):
            allowed = torch.zeros(count, dtype=torch.bool)
            allowed[t * k : (t + 1) * k] = True
            allowed[TASKS * k :] = True
            assert torch.all(weights[t][:, ~allowed] == 0.0), (level, t)
            assert torch.all(weights[t][:, allowed] > 0.0), (level, t)
        if not last:
            assert torch.all(weights[TASKS] > 0.0), level
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2], dtype=DTYPE))


@pytest.mark.parametrize(("num_experts", "hidden"), [(1, [4]), (3, [4]), (4, [6, 3]), (2, [5, 5])])
def test_omoe_equals_one_gate_shared_by_every_task(num_experts, hidden):
    net = network("omoe", IN_DIM, TASKS, hidden=hidden, num_experts=num_experts)
    net = randomised(net, seed=num_experts)
    x = rows(9)

    with torch.no_grad():
        result = net(x)
        expected = omoe_reference(net, x, num_experts)

    assert result.tasks.shape == (TASKS, ROWS, hidden[-1])
    for t in range(TASKS):
        torch.testing.assert_close(result.tasks[t], expected, rtol=0.0, atol=TOLERANCE)
    assert result.common is not None  # the one mixture, which the towers read once
    torch.testing.assert_close(result.common, expected, rtol=0.0, atol=TOLERANCE)
    (weights,) = result.gates
    assert weights is not None and weights.shape == (1, ROWS, num_experts)
    assert torch.all(weights > 0.0)
