"""Batched inference: a model's logits for many rows, in eval mode, without a graph."""

from __future__ import annotations

import torch

from polytask.features import Features
from polytask.model import MultiTaskModel


@torch.inference_mode()
def predict_logits(
    model: MultiTaskModel | torch.nn.Module, features: Features, batch_size: int
) -> list[torch.Tensor]:
    """Logits per task for all rows, in eval mode, without building a graph."""
    was_training = model.training
    model.eval()
    if len(features) <= batch_size:  # one chunk: no row copy (the server's common case)
        logits = model(features).logits
        model.train(was_training)
        return list(logits)
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, len(features), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(features)))
        chunks.append(model(features.take(rows)).logits)
    model.train(was_training)
    return [torch.cat([chunk[t] for chunk in chunks]) for t in range(len(chunks[0]))]
