"""Heads that mix tasks after the towers: funnels of dependent binary tasks.

* :class:`ChainHead` (ESMM, Ma et al. SIGIR 2018): the towers give one logit per task, read
  as a *conditional* probability (pCTR, then pCVR given a click, ...). The k-th task of the
  chain outputs the logit of the *product* of the conditional probabilities up to k (pCTCVR =
  pCTR * pCVR), so the ordinary binary cross-entropy on the conversion label over all
  impressions is exactly ESMM's CTCVR loss: pCVR is never fitted on the biased clicked-only
  sample. Labels: the k-th chained task's label is the *joint* event over every row.
* :class:`TransferHead` (AITM, Xi et al. KDD 2021): along the chain, task t's output layer
  reads an attention-weighted mix of its own tower representation q_t and the information
  p_{t-1} = relu(z_{t-1} W_t + b_t) transferred from the previous step (z = what the
  previous task's output layer read). The attention (the AIT module) scores each of the two
  vectors u by <h1(u), h2(u)> / sqrt(d), softmaxes over the two and returns sum_u w_u h3(u);
  h1, h2, h3 are linear maps without bias shared by all steps, as in the authors' code. The
  behavioural expectation calibrator ``calibration_weight * mean_rows(sum_t relu(p_t -
  p_{t-1}))`` penalises a later step predicted as more likely than an earlier one.

A head is ``(towers, representation [T, B, D]) -> (logits per task, auxiliary loss)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polytask.errors import ConfigError
from polytask.nn.towers import Towers

HeadOutput = tuple[list[torch.Tensor], torch.Tensor | None]


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_p)) for log_p < 0, accurate for p near 0 and near 1 (Maechler, 2012).

    Near p = 1 the difference 1 - p is taken by ``expm1`` (no cancellation); far from it
    ``log1p`` keeps precision where 1 - p is close to 1. Each branch sees its input clamped to
    its own domain, so the branch ``where`` discards cannot put inf/NaN into the gradient.
    """
    cut = -math.log(2.0)
    near_one = torch.log(-torch.expm1(log_p.clamp(min=cut)))
    far_from_one = torch.log1p(-torch.exp(log_p.clamp(max=cut)))
    return torch.where(log_p > cut, near_one, far_from_one)


def chained_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits of cumulative products of sigmoid probabilities along the first axis.

    logits [K, B] (conditional logits, chain order) -> [K, B] where row k is
    logit(prod_{j<=k} sigmoid(logits[j])). log p is a sum of logsigmoids (no underflow of the
    product); log p is kept strictly below 0 so that saturated towers give a large finite logit
    rather than +inf. Row 0 is returned unchanged: the first task is an ordinary binary head.
    """
    log_p = torch.cumsum(F.logsigmoid(logits), dim=0)
    log_p = log_p.clamp(max=-torch.finfo(log_p.dtype).tiny)
    joint = log_p - log1mexp(log_p)
    return torch.cat([logits[:1], joint[1:]], dim=0)


def check_binary_heads(chain: Sequence[int], out_dims: Sequence[int]) -> None:
    """Chained tasks are probabilities of one event each: one logit per task."""
    for index in chain:
        if out_dims[index] != 1:
            raise ConfigError(
                f"model: the chain of tasks {list(chain)} includes task {index}, which has "
                f"{out_dims[index]} outputs; chained tasks must be binary"
            )


class ChainHead(nn.Module):
    """Plain tower logits, with the chained tasks' replaced by joint-probability logits."""

    def __init__(self, chain: Sequence[int], out_dims: Sequence[int]) -> None:
        super().__init__()
        check_binary_heads(chain, out_dims)
        self.chain = list(chain)

    def forward(self, towers: Towers, representation: torch.Tensor) -> HeadOutput:
        logits = list(towers(representation))
        conditional = torch.stack([logits[t][:, 0] for t in self.chain])  # [K, B]
        joint = chained_logits(conditional)
        for position, task in enumerate(self.chain):
            logits[task] = joint[position].unsqueeze(1)
        return logits, None

    def extra_repr(self) -> str:
        return f"chain={self.chain}"


class InfoAttention(nn.Module):
    """The AIT module over two vectors: the transferred information and the task's own.

    Shapes: p_prev [B, d], q [B, d] -> z [B, d].
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # h1, h2, h3 side by side: one product gives all three projections of both inputs
        self.projection = nn.Parameter(torch.empty(dim, 3 * dim))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.projection, -bound, bound)

    def forward(self, p_prev: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        pair = torch.stack([p_prev, q], dim=1)  # [B, 2, d]
        query, key, value = (pair @ self.projection).split(self.dim, dim=-1)
        scores = (query * key).sum(-1) / math.sqrt(self.dim)  # [B, 2]
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(-1) * value).sum(1)


class TransferHead(nn.Module):
    """Tower layers -> information transfer along the chain -> output layers; calibrator.

    The transfer is a recurrence (z_t needs z_{t-1}), so the chain is walked step by step;
    tower layers and output layers stay fused. Tasks outside the chain get plain towers.
    """

    def __init__(
        self,
        chain: Sequence[int],
        out_dims: Sequence[int],
        dim: int,
        calibration_weight: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_binary_heads(chain, out_dims)
        self.chain = list(chain)
        self.calibration_weight = calibration_weight
        steps = len(self.chain) - 1
        # one transfer layer per step of the chain: p_{t-1} = relu(z_{t-1} W_t + b_t)
        self.transfer_weight = nn.Parameter(torch.empty(steps, dim, dim))
        self.transfer_bias = nn.Parameter(torch.empty(steps, dim))
        self.transfer_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.attention = InfoAttention(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Transfer layers initialised like ``nn.Linear(dim, dim)``."""
        bound = 1.0 / math.sqrt(self.transfer_weight.shape[1])
        nn.init.uniform_(self.transfer_weight, -bound, bound)
        nn.init.uniform_(self.transfer_bias, -bound, bound)

    def forward(self, towers: Towers, representation: torch.Tensor) -> HeadOutput:
        own = towers.hidden(representation) if towers.hidden is not None else representation
        mixed = self.transfer_along_chain(own)  # [T, B, d]
        logits = towers.output(mixed)  # [T, B, max_out]
        outputs = [logits[t, :, :width] for t, width in enumerate(towers.out_dims)]
        return outputs, self.calibration(outputs) if self.training else None

    def transfer_along_chain(self, own: torch.Tensor) -> torch.Tensor:
        """[T, B, d] tower representations q -> [T, B, d] output-layer inputs z."""
        rows = list(own.unbind(0))
        previous = rows[self.chain[0]]
        for step, task in enumerate(self.chain[1:]):
            linear = torch.addmm(self.transfer_bias[step], previous, self.transfer_weight[step])
            transferred = self.transfer_dropout(torch.relu(linear))
            previous = self.attention(transferred, rows[task])
            rows[task] = previous
        return torch.stack(rows)

    def calibration(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """calibration_weight * mean over rows of sum_t relu(p_t - p_{t-1}), chain pairs."""
        probs = torch.sigmoid(torch.stack([outputs[t][:, 0] for t in self.chain]))  # [K, B]
        excess = torch.relu(probs[1:] - probs[:-1])  # [K-1, B]
        return self.calibration_weight * excess.sum(0).mean()

    def copy_prefix(self, source: TransferHead) -> None:
        """Take ``source``'s first transfer steps and its attention (a kept chain prefix)."""
        steps = self.transfer_weight.shape[0]
        with torch.no_grad():
            self.transfer_weight.copy_(source.transfer_weight[:steps])
            self.transfer_bias.copy_(source.transfer_bias[:steps])
        self.attention.load_state_dict(source.attention.state_dict())

    def extra_repr(self) -> str:
        return f"chain={self.chain}, calibration_weight={self.calibration_weight}"
