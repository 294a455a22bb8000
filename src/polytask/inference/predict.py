"""Batched inference: a model's logits for many rows, in eval mode, without a graph."""

from __future__ import annotations

import torch

from polytask.features import Features
from polytask.model import MultiTaskModel


@torch.inference_mode()
def predict_logits(
    model: MultiTaskModel | torch.nn.Module, features: Features, batch_size: int
) -> list[torch.Tensor]:
    """Logits per task for all rows, in eval mode, without building a graph. The rows are
    moved to the model's device chunk by chunk; the logits come back to the CPU."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    if len(features) <= batch_size:  # one chunk: no row copy (the server's common case)
        logits = model(features.to(device)).logits
        model.train(was_training)
        return [values.cpu() for values in logits]
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, len(features), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(features)))
        chunks.append([values.cpu() for values in model(features.take(rows).to(device)).logits])
    model.train(was_training)
    return [torch.cat([chunk[t] for chunk in chunks]) for t in range(len(chunks[0]))]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")
