"""The lean serving form as numpy arrays: predicting on a few rows without importing torch.

Importing torch takes most of two seconds, many times what a prediction on a small table
costs. A run whose model has a folded form (:mod:`polytask.inference.lean`: one shared
tabular encoder, one level of MLP experts, gates with a folded form, plain towers) also saves
that form's tensors as ``lean.safetensors`` when it is written, and :class:`LeanArrays` runs it
with numpy: the same operations as :class:`~polytask.inference.lean.LeanModel` (one gather-sum
and product for the first layer, the deeper expert layers, per-task softmax gates, the towers).

The file records the SHA-256 of the run's weights file it was folded from; :func:`read_lean`
answers ``None`` (predict with torch) when the file is absent, of another format, or does not
match the weights beside it, so a run whose weights changed can never predict from stale
arrays.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic

FORMAT = 1
META_KEY = "polytask_lean"


@dataclass
class ArrayHead:
    """One task: its mixture (``gate_columns`` of the first layer, over ``experts``; or none:
    fixed weights folded into the first tower layer), then its tower layers."""

    layers: list[tuple[np.ndarray, np.ndarray]]  # (weight [in, out], bias [out])
    gate_columns: tuple[int, int] | None
    experts: np.ndarray | None
    out_dim: int


@dataclass
class LeanArrays:
    """A folded model over numpy arrays (shapes as in :class:`LeanModel`).

    ``table`` [V, W] is the folded first layer per categorical code (first column's rows carry
    the bias), read at ``codes + offsets``; without categorical inputs ``bias`` [W] is added.
    """

    table: np.ndarray | None
    offsets: np.ndarray | None
    bias: np.ndarray | None
    numeric_weight: np.ndarray
    num_experts: int
    expert_width: int
    deeper: list[tuple[np.ndarray, np.ndarray]]  # weight [E, in, out], bias [E, 1, out]
    heads: list[ArrayHead]

    def forward(self, codes: np.ndarray, numeric: np.ndarray) -> list[np.ndarray]:
        """Logits per task [B, out_t] for categorical codes [B, C] and numeric [B, 2F]."""
        first = self._first_layer(codes, numeric)
        rows = len(first)
        flat = np.maximum(first[:, : self.expert_width], 0.0)
        if self.deeper:
            x = flat.reshape(rows, self.num_experts, -1).transpose(1, 0, 2)  # [E, B, H]
            for weight, bias in self.deeper:
                x = np.maximum(np.matmul(x, weight) + bias, 0.0)
            flat = x.transpose(1, 0, 2).reshape(rows, -1)
        return [self._head(head, first, flat) for head in self.heads]

    def _first_layer(self, codes: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        if self.table is None:
            assert self.bias is not None
            return numeric @ self.numeric_weight + self.bias
        first = self.table[codes + self.offsets].sum(axis=1)
        if self.numeric_weight.shape[0]:
            first += numeric @ self.numeric_weight
        return first

    def _head(self, head: ArrayHead, first: np.ndarray, flat: np.ndarray) -> np.ndarray:
        x = flat
        if head.gate_columns is not None:
            start, stop = head.gate_columns
            stacked = flat.reshape(len(flat), self.num_experts, -1)  # [B, E, H]
            if head.experts is not None:
                stacked = stacked[:, head.experts]
            logits = first[:, start:stop]
            gates = np.exp(logits - logits.max(axis=1, keepdims=True))
            gates /= gates.sum(axis=1, keepdims=True)
            x = np.einsum("be,beh->bh", gates, stacked)
        last = len(head.layers) - 1
        for index, (weight, bias) in enumerate(head.layers):
            x = x @ weight + bias
            if index < last:
                x = np.maximum(x, 0.0)
        return x[:, : head.out_dim]

    # ------------------------------------------------------------------ the file
    def save(self, folder: Path) -> None:
        """Write ``lean.safetensors`` beside the run's weights (which must be written first)."""
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {"numeric_weight": self.numeric_weight}
        for name in ("table", "offsets", "bias"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        for index, (weight, bias) in enumerate(self.deeper):
            tensors[f"deeper.{index}.weight"], tensors[f"deeper.{index}.bias"] = weight, bias
        heads: list[dict[str, Any]] = []
        for task, head in enumerate(self.heads):
            for index, (weight, bias) in enumerate(head.layers):
                tensors[f"head.{task}.{index}.weight"] = weight
                tensors[f"head.{task}.{index}.bias"] = bias
            if head.experts is not None:
                tensors[f"head.{task}.experts"] = head.experts
            heads.append(
                {
                    "layers": len(head.layers),
                    "gate_columns": head.gate_columns,
                    "out_dim": head.out_dim,
                }
            )
        meta = {
            "format": FORMAT,
            "weights_sha256": weights_digest(folder),
            "num_experts": self.num_experts,
            "expert_width": self.expert_width,
            "deeper": len(self.deeper),
            "heads": heads,
        }
        contiguous = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
        header = {META_KEY: json.dumps(meta)}
        write_atomic(folder / rd.LEAN, lambda temp: save_file(contiguous, str(temp), header))


def weights_digest(folder: Path) -> str:
    return hashlib.sha256((folder / rd.WEIGHTS).read_bytes()).hexdigest()


def read_lean(folder: Path) -> LeanArrays | None:
    """The run's lean arrays, or ``None`` where it has none that match its weights."""
    path = folder / rd.LEAN
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as file:
            meta = json.loads((file.metadata() or {}).get(META_KEY, "null"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                return None
            if meta.get("weights_sha256") != weights_digest(folder):
                return None
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        return _from_tensors(tensors, meta)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None


def _from_tensors(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> LeanArrays:
    deeper = [
        (tensors[f"deeper.{i}.weight"], tensors[f"deeper.{i}.bias"]) for i in range(meta["deeper"])
    ]
    heads = []
    for task, head in enumerate(meta["heads"]):
        layers = [
            (tensors[f"head.{task}.{i}.weight"], tensors[f"head.{task}.{i}.bias"])
            for i in range(head["layers"])
        ]
        columns = head["gate_columns"]
        heads.append(
            ArrayHead(
                layers,
                None if columns is None else (int(columns[0]), int(columns[1])),
                tensors.get(f"head.{task}.experts"),
                int(head["out_dim"]),
            )
        )
    return LeanArrays(
        table=tensors.get("table"),
        offsets=tensors.get("offsets"),
        bias=tensors.get("bias"),
        numeric_weight=tensors["numeric_weight"],
        num_experts=int(meta["num_experts"]),
        expert_width=int(meta["expert_width"]),
        deeper=deeper,
        heads=heads,
    )
