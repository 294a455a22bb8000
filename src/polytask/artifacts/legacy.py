"""Runs written before architectures became plans (weights format 1) load as they did.

Format 1 stored each architecture's modules under names of its own (``arch.experts``,
``arch.gates.linear``, ``arch.meta``, ...), and slim runs used two architectures that no longer
exist (``slim_moe``, ``task_subset``). Format 2 stores every architecture as the plan
executor's levels (``arch.levels.<l>.experts`` / ``.gates`` / ``.self_gates``) and cross-task
heads under ``heads``. This module is the migration: the old config's model section becomes a
plan where needed (:func:`upgrade_model_section`, no torch) and the old weights are renamed and
reshaped into the new layout (:func:`upgrade_state`). It is the only place that knows the old
layouts; nothing else branches on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from polytask.errors import PolytaskError

LEGACY_ARCHS = ("slim_moe", "task_subset")
Converter = Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]]


# ---------------------------------------------------------------------- configs (no torch)
def upgrade_model_section(model: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``model`` section with ``slim_moe`` or ``task_subset`` as the ``plan`` it
    describes; any other section unchanged."""
    arch = model.get("arch")
    if arch == "slim_moe":
        plan = _slim_moe_plan(model)
    elif arch == "task_subset":
        plan = _task_subset_plan(model)
    else:
        return model
    return {**model, "arch": "plan", "options": plan}


def _slim_moe_plan(model: dict[str, Any]) -> dict[str, Any]:
    options = model["options"]
    hidden, dropout = model.get("hidden", [16]), model.get("dropout", 0.0)
    levels = []
    for level in options["levels"]:
        gates = level["gates"]
        experts: dict[str, Any] = {
            "kind": options.get("expert", "mlp"),
            "count": len(level["experts"]),
            "hidden": hidden,
            "dropout": dropout,
            "reads": level.get("owner"),
        }
        if experts["kind"] == "normed":
            experts["norm"] = options.get("expert_norm", "batch")
            experts["feature_gate_rank"] = options.get("feature_gate_rank", 0)
        kind = {"softmax": "softmax", "masked": "softmax", "static": "fixed"}.get(
            gates["kind"], "dselect"
        )
        new_gates: dict[str, Any] = {
            "kind": kind,
            "allowed": gates["allowed"],
            "reads": gates.get("inputs"),
        }
        if kind == "dselect":
            source = gates["dselect"]
            new_gates.update(
                k=source["k"],
                gamma=source["gamma"],
                per_example=True,
                source_experts=source["source_experts"],
                columns=source["columns"],
            )
        levels.append(
            {"experts": experts, "gates": new_gates, "self_gates": level.get("self_gates")}
        )
    return {"levels": levels, "task_gates": options["task_gates"], "source": options["source"]}


def _task_subset_plan(model: dict[str, Any]) -> dict[str, Any]:
    from polytask.arch import ARCHS
    from polytask.config import ModelSpec

    options = model["options"]
    source = {**model, "arch": options["source"], "options": options.get("source_options", {})}
    plan = ARCHS.get(options["source"]).plan(options["source_tasks"], ModelSpec(**source))
    rows = options["tasks"]
    return {**plan.model_dump(mode="json"), "task_gates": [plan.task_gates[r] for r in rows]}


# ---------------------------------------------------------------------- weights
def upgrade_state(state: dict[str, torch.Tensor], model: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Format-1 weights of the format-1 ``model`` section -> format-2 weights."""
    arch = model.get("arch", "mmoe")
    converter = CONVERTERS.get(arch)
    if converter is None:
        raise PolytaskError(f"weights of a '{arch}' model from an older polytask cannot be read")
    kept = {k: v for k, v in state.items() if not k.startswith("arch.")}
    arch_state = {k.removeprefix("arch."): v for k, v in state.items() if k.startswith("arch.")}
    converted = converter(arch_state, model.get("options") or {})
    for key, value in converted.items():
        kept[key if key.startswith("heads.") else f"arch.{key}"] = value
    return kept


def _moved(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """Every entry under ``old.`` renamed to ``new.``."""
    return {new + k[len(old) :]: v for k, v in state.items() if k.startswith(old + ".")}


def _linear_gates(state: dict[str, torch.Tensor], prefix: str, experts: int) -> dict:
    """An ``nn.Linear(in, G*E)`` gate layout -> weight [G, in, E], bias [G, 1, E]."""
    weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    gates = weight.shape[0] // experts
    return {
        "weight": weight.view(gates, experts, -1).permute(0, 2, 1).contiguous(),
        "bias": bias.view(gates, 1, experts).clone(),
    }


def _level(prefix: str, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"levels.{prefix}.{k}": v for k, v in parts.items()}


def _mmoe(state: dict, options: dict) -> dict:
    experts = _moved(state, "experts", "experts")
    count = state["experts.weights.0"].shape[0]
    gates = {f"gates.{k}": v for k, v in _linear_gates(state, "gates.linear", count).items()}
    return _level("0", {**experts, **gates})


def _shared_bottom(state: dict, options: dict) -> dict:
    return _level("0", _moved(state, "bottom", "experts"))


def _bottoms(state: dict, options: dict) -> dict:
    return _level("0", _moved(state, "bottoms", "experts"))


def _ple(state: dict, options: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith((".owner", ".blocked"))}


def _home_level(state: dict, old: str, new: str) -> dict:
    parts = {
        **_moved(state, f"{old}.feature_gates", "experts.feature_gates"),
        **_moved(state, f"{old}.experts", "experts"),
        **_moved(state, f"{old}.gates", "gates"),
    }
    parts.pop("gates.blocked", None)
    if f"{old}.self_weight" in state:
        parts["self_gates.weight"] = state[f"{old}.self_weight"]
        parts["self_gates.bias"] = state[f"{old}.self_bias"]
    return _level(new, parts)


def _home(state: dict, options: dict) -> dict:
    return {**_home_level(state, "meta", "0"), **_home_level(state, "task", "1")}


def _dselect_k(state: dict, options: dict) -> dict:
    return _level("0", {**_moved(state, "experts", "experts"), **_moved(state, "gates", "gates")})


def _task_moe(state: dict, options: dict) -> dict:
    parts = _moved(state, "experts", "experts")
    if "task_logits" in state:
        parts["gates.task_logits"] = state["task_logits"]
    parts.update(_moved(state, "router", "gates.router"))
    return _level("0", parts)


def _aitm(state: dict, options: dict) -> dict:
    heads = {
        "heads.transfer_weight": state["transfer_weight"],
        "heads.transfer_bias": state["transfer_bias"],
        "heads.attention.projection": state["attention.projection"],
    }
    return {**_bottoms(state, options), **heads}


def _cross_stitch(state: dict, options: dict) -> dict:
    converted: dict[str, torch.Tensor] = {}
    for layer, stitch in enumerate(state["stitches"]):
        converted.update(_level(str(layer), _moved(state, f"columns.{layer}", "experts")))
        converted[f"levels.{layer}.gates.alpha"] = stitch.clone()
    return converted


def _task_bottom(state: dict, options: dict) -> dict:
    parts = {
        **_moved(state, "gates", "experts.gates"),
        **_moved(state, "transform", "experts.transform"),
        **_moved(state, "mlp", "experts.mlp"),
    }
    return _level("0", parts)


def _slim_moe(state: dict, options: dict) -> dict:
    converted: dict[str, torch.Tensor] = {}
    for number, level in enumerate(options["levels"]):
        old = f"levels.{number}"
        count = len(level["experts"])
        parts = {
            **_moved(state, f"{old}.experts", "experts"),
            **_moved(state, f"{old}.feature_gates", "experts.feature_gates"),
        }
        kind = level["gates"]["kind"]
        if kind == "softmax":
            linear = _linear_gates(state, f"{old}.gates.linear", count)
            parts.update({f"gates.{k}": v for k, v in linear.items()})
        elif kind == "dselect":
            parts.update(_moved(state, f"{old}.gates.gates", "gates"))
        else:  # masked (weight, bias) or static (table): the same names
            parts.update(_moved(state, f"{old}.gates", "gates"))
            parts.pop("gates.blocked", None)
        if f"{old}.self_weight" in state:
            parts["self_gates.weight"] = state[f"{old}.self_weight"]
            parts["self_gates.bias"] = state[f"{old}.self_bias"]
        converted.update(_level(str(number), parts))
    return converted


def _task_subset(state: dict, options: dict) -> dict:
    source = _moved(state, "source", "")
    source = {k.removeprefix("."): v for k, v in source.items()}
    return CONVERTERS[options["source"]](source, options.get("source_options", {}))


CONVERTERS: dict[str, Converter] = {
    "mmoe": _mmoe,
    "omoe": _mmoe,
    "shared_bottom": _shared_bottom,
    "single": _bottoms,
    "esmm": _bottoms,
    "aitm": _aitm,
    "cgc": _ple,
    "ple": _ple,
    "home": _home,
    "dselect_k": _dselect_k,
    "task_moe": _task_moe,
    "cross_stitch": _cross_stitch,
    "task_bottom": _task_bottom,
    "slim_moe": _slim_moe,
    "task_subset": _task_subset,
}
