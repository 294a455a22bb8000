"""Expert utilisation: how each task's gate spreads its weight over the experts.

For gated architectures (those whose last level's gates give per-row weights: the model's
output carries ``task_gates`` [T, B, E]) this reports, per task, the mean gate weight of
every expert and the mean gate entropy on the validation rows, and warns about collapse: a
task whose gate puts nearly all weight on one expert, or an expert that no task uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from polytask.features import Features
from polytask.inference.predict import model_device
from polytask.model import MultiTaskModel

DOMINANT_SHARE = 0.9  # one expert taking this much of a task's weight is a collapse
UNUSED_FRACTION = 0.1  # an expert below this fraction of uniform weight for every task is unused


@torch.inference_mode()
def expert_utilisation(
    model: MultiTaskModel, features: Features, batch_size: int
) -> dict[str, Any] | None:
    """Mean gate weight per (task, expert), mean gate entropy per task, and warnings."""
    was_training = model.training
    model.eval()
    weight_sum: torch.Tensor | None = None
    entropy_sum: torch.Tensor | None = None
    device = model_device(model)
    for start in range(0, len(features), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(features)))
        gates = model(features.take(rows).to(device)).task_gates  # [T, B, E]
        if gates is None:
            model.train(was_training)
            return None
        entropy = -(gates * torch.log(gates.clamp(min=1e-12))).sum(-1)  # [T, B]
        batch_weights, batch_entropy = gates.sum(1), entropy.sum(1)
        weight_sum = batch_weights if weight_sum is None else weight_sum + batch_weights
        entropy_sum = batch_entropy if entropy_sum is None else entropy_sum + batch_entropy
    model.train(was_training)
    assert weight_sum is not None and entropy_sum is not None
    utilisation = weight_sum.cpu() / len(features)  # [T, E]
    entropy = entropy_sum.cpu() / len(features)
    names = model.task_names
    return {
        "tasks": names,
        "num_experts": utilisation.shape[1],
        "utilisation": {n: utilisation[t].tolist() for t, n in enumerate(names)},
        "gate_entropy": {n: float(entropy[t]) for t, n in enumerate(names)},
        "max_entropy": math.log(utilisation.shape[1]),
        "warnings": collapse_warnings(utilisation, names),
    }


def collapse_warnings(utilisation: torch.Tensor, names: list[str]) -> list[str]:
    """Plain-language warnings from a [T, E] utilisation matrix."""
    warnings = []
    num_experts = utilisation.shape[1]
    for t, name in enumerate(names):
        share, expert = utilisation[t].max(0)
        if share >= DOMINANT_SHARE and num_experts > 1:
            warnings.append(
                f"task '{name}': expert {int(expert)} takes {float(share):.0%} of the gate weight"
            )
    # Experts outside a task's allowed set have weight 0 by construction (CGC/PLE), so an expert
    # counts as unused only when every task gives it almost nothing.
    threshold = UNUSED_FRACTION / num_experts
    unused = (utilisation < threshold).all(0).nonzero().flatten().tolist()
    if unused:
        listed = ", ".join(str(e) for e in unused)
        warnings.append(f"expert(s) {listed} unused by every task (< {threshold:.3f} weight)")
    return warnings


def plot_utilisation(report: dict[str, Any], path: Path) -> None:
    """Heatmap of tasks x experts, the mean gate weight written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["tasks"]
    matrix = [report["utilisation"][n] for n in names]
    width = max(4.0, 0.6 * report["num_experts"] + 2)
    figure, axes = plt.subplots(figsize=(width, 0.6 * len(names) + 1.6))
    image = axes.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(max(r) for r in matrix))
    axes.set_xticks(range(report["num_experts"]))
    axes.set_yticks(range(len(names)), labels=names)
    axes.set_xlabel("expert")
    axes.set_title("mean gate weight per task and expert (validation rows)")
    for t, row in enumerate(matrix):
        for e, value in enumerate(row):
            axes.text(e, t, f"{value:.2f}", ha="center", va="center", color="w", fontsize=7)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
