"""Task-specific bottom representations, after DTRN (Bi et al., Kuaishou, CIKM 2023).

Hard sharing gives every task the same bottom representation, although tasks care about
different features and different feature interactions. Here each task gets its own view of
the shared embedding at little parameter cost; as a bank, expert t is task t's view:

1. a per-task squeeze-excitation gate re-weights the input features,
   x_t = x * sigmoid(MLP_t(x)), all T gate MLPs in one fused bank;
2. a task-conditioned transform y_t = relu(x_t (W + U_t V_t^T) + b): a shared weight W plus a
   rank-r correction whose factors a small hypernetwork generates from a learned task
   embedding, so tasks share most of the transform and differ in a few directions;
3. one MLP with shared weights over every task's y_t, computed as one product.

Shapes: x [B, in_dim] -> [T, B, hidden[-1]].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from polytask.nn.experts import ExpertBank


class LowRankTaskTransform(nn.Module):
    """relu(x_t (W + U_t V_t^T) + b), with (U_t, V_t) generated from task embeddings.

    The hypernetwork is ``e_t -> relu(A e_t + a) -> B (.) + c``, its output split into U_t
    [in, r] and V_t [out, r]. The rows that generate V start at zero (as LoRA's second factor
    does), so every task starts from the shared transform and gradients still reach both
    factors.

    Shapes: x [T, B, in] -> [T, B, out].
    """

    def __init__(self, num_tasks: int, in_dim: int, out_dim: int, embed_dim: int, rank: int):
        super().__init__()
        self.in_dim, self.out_dim, self.rank = in_dim, out_dim, rank
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.task_embedding = nn.Parameter(torch.randn(num_tasks, embed_dim))
        self.hyper = nn.Sequential(
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, rank * (in_dim + out_dim)),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        generator = self.hyper[-1]
        assert isinstance(generator, nn.Linear)
        with torch.no_grad():
            generator.weight[self.rank * self.in_dim :].zero_()
            generator.bias[self.rank * self.in_dim :].zero_()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task low-rank factors U [T, in, r] and V [T, out, r]."""
        flat = self.hyper(self.task_embedding)  # [T, r * (in + out)]
        num_tasks = flat.shape[0]
        u, v = flat.split([self.rank * self.in_dim, self.rank * self.out_dim], dim=1)
        return u.view(num_tasks, self.in_dim, self.rank), v.view(num_tasks, self.out_dim, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.factors()
        shared = torch.matmul(x, self.weight) + self.bias  # [T, B, out]
        correction = torch.bmm(torch.bmm(x, u), v.transpose(1, 2))  # [T, B, r] -> [T, B, out]
        return torch.relu(shared + correction)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}"


class TaskBottomBank(nn.Module):
    """T task views of one input: feature gates -> low-rank task transform -> shared MLP.

    The shared transform weight, hypernetwork and MLP serve every member; a member's own
    parameters are its feature-gate MLP and its task embedding, so :meth:`select` slices
    those and keeps the rest whole.
    """

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        hidden: list[int],
        se_hidden: int,
        task_embedding_dim: int,
        hyper_rank: int,
        transform_dim: int | None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_experts, self.in_dim, self.hidden = num_tasks, in_dim, list(hidden)
        width = transform_dim or in_dim
        self.gates = ExpertBank(num_tasks, in_dim, [se_hidden, in_dim], activate_last=False)
        self.transform = LowRankTaskTransform(
            num_tasks, in_dim, width, task_embedding_dim, hyper_rank
        )
        self.mlp = ExpertBank(1, width, hidden, dropout=dropout)

    @property
    def out_dim(self) -> int:
        return self.hidden[-1]

    def feature_gates(self, x: torch.Tensor) -> torch.Tensor:
        """Per-task feature weights in (0, 1): [B, in] -> [T, B, in]."""
        return torch.sigmoid(self.gates(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_task = x.unsqueeze(0) * self.feature_gates(x)  # [T, B, in]
        transformed = self.transform(per_task)  # [T, B, d]
        num_tasks, batch, width = transformed.shape
        shared = self.mlp(transformed.reshape(num_tasks * batch, width))  # [1, T*B, out]
        return shared.view(num_tasks, batch, self.out_dim)

    def select(self, experts: Sequence[int]) -> TaskBottomBank:
        """The given members' gates and task embeddings; the shared parts copied whole."""
        transform = self.transform
        bank = TaskBottomBank(
            len(experts),
            self.in_dim,
            self.hidden,
            self.gates.hidden[0],
            transform.task_embedding.shape[1],
            transform.rank,
            transform.out_dim,
        )
        bank.gates = self.gates.select(experts)
        state = transform.state_dict()
        state["task_embedding"] = state["task_embedding"][torch.tensor(list(experts))]
        bank.transform.load_state_dict(state)
        bank.mlp.load_state_dict(self.mlp.state_dict())
        bank.mlp.dropout = self.mlp.dropout
        return bank.train(self.training)
