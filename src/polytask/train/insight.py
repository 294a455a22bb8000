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
ANNOTATED_CELLS = 400  # tasks x experts up to which each cell's value is written
MAX_INCHES = 16.0  # the figure's largest side
MAX_TICKS = 40  # task (and expert) labels shown at most


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
        "warnings": collapse_warnings(utilisation, names, own_experts(model)),
    }


def own_experts(model: MultiTaskModel) -> list[set[int]]:
    """Per task, the last level's experts that only its gate may weight (CGC / PLE task
    experts): its gate leaning on them is the design, not a collapse."""
    plan = model.plan
    allowed = plan.levels[-1].gates.allowed
    readers: dict[int, set[int]] = {}
    for gate, members in enumerate(allowed):
        for expert in members:
            readers.setdefault(expert, set()).add(gate)
    return [
        {expert for expert in allowed[gate] if readers[expert] == {gate}}
        for gate in plan.task_gates
    ]


def collapse_warnings(
    utilisation: torch.Tensor, names: list[str], own: list[set[int]] | None = None
) -> list[str]:
    """Plain-language warnings from a [T, E] utilisation matrix; ``own``: per task, experts
    only it may use (no warning when its gate leans on those)."""
    warnings = []
    num_experts = utilisation.shape[1]
    for t, name in enumerate(names):
        share, expert = utilisation[t].max(0)
        if own is not None and int(expert) in own[t]:
            continue
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
    """Heatmap of tasks x experts, with the mean gate weight written in each cell where the
    cells are few (:data:`ANNOTATED_CELLS`). With many tasks the figure keeps a readable size
    (at most :data:`MAX_INCHES` a side, at most :data:`MAX_TICKS` task names shown) instead
    of growing with them: at 150 tasks, writing every cell took most of a run's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["tasks"]
    experts = report["num_experts"]
    matrix = [report["utilisation"][n] for n in names]
    width = min(MAX_INCHES, max(4.0, 0.6 * experts + 2))
    height = min(MAX_INCHES, 0.6 * len(names) + 1.6)
    figure, axes = plt.subplots(figsize=(width, height), layout="constrained")
    image = axes.imshow(
        matrix, cmap="viridis", vmin=0.0, vmax=max(max(r) for r in matrix), aspect="auto"
    )
    step = max(1, -(-len(names) // MAX_TICKS))
    axes.set_yticks(range(0, len(names), step), labels=names[::step])
    axes.set_xticks(range(0, experts, max(1, -(-experts // MAX_TICKS))))
    axes.set_xlabel("expert")
    axes.set_title("mean gate weight per task and expert (validation rows)")
    if len(names) * experts <= ANNOTATED_CELLS:
        for t, row in enumerate(matrix):
            for e, value in enumerate(row):
                axes.text(e, t, f"{value:.2f}", ha="center", va="center", color="w", fontsize=7)
    figure.colorbar(image, ax=axes)
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
