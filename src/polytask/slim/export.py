"""``polytask export``: a run (full or slim) as an ONNX graph over the preprocessor's output.

The graph takes what :meth:`Preprocessor.transform` produces, ``categorical`` int64 [B, C] and
``numeric`` float32 [B, 2F] (F standardised values then F missing flags), with a dynamic batch
axis, and returns one tensor per task named by the task: probabilities for binary [B],
multiclass [B, classes] and multilabel [B, labels], values on the target's scale for regression
[B]. The raw-row preprocessing stays in Python (``preprocessor.json``, named in the sidecar
JSON written next to the graph), because vocabularies and missing-value handling are table
operations, not tensor ones.

Export uses PyTorch's TorchScript-based exporter (``dynamo=False``), which needs no extra
packages and handles every architecture here once two details are taken care of. HoME's
per-expert batch norm is written out elementwise (:class:`FrozenExpertNorm`); top-k routed
levels (``task_moe``) size their expert segments from the data (a host-side ``tolist``), which
a trace would freeze to the example batch, so while tracing they take a static path
(:mod:`polytask.nn.topk`): every expert runs and the top-k weights are laid over all of them
(zero elsewhere). With task routing each task's experts are fixed in eval, so the experts no
task routes to are cut from the plan first and the graph runs only the used ones. Both give
the same outputs as the sparse dispatch. After writing, the graph is checked against
PyTorch with onnxruntime (when installed) on random rows at batch sizes other than the traced
one, so that a shape frozen by the trace cannot pass.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic, write_json
from polytask.artifacts.ownership import check_output_file
from polytask.config import TaskKind
from polytask.errors import PolytaskError
from polytask.features import Features
from polytask.inference.predictor import Predictor
from polytask.model import MultiTaskModel
from polytask.nn.normed import ExpertNorm
from polytask.slim.extract import without_unused_experts
from polytask.slim.report import synthetic_rows
from polytask.tasks import Task

INPUTS = ("categorical", "numeric")
DEFAULT_OPSET = 17
CHECK_BATCHES = (1, 257)  # differ from the traced batch (2): a frozen shape fails the check
OPSETS = range(13, 21)  # einsum and friends from 13; the TorchScript exporter stops at 20
NORM_EPS = 1e-5  # ExpertNorm's batch-norm epsilon
TOLERANCE = 1e-4  # float32 graph vs eager PyTorch; typical differences are ~1e-7


class FrozenExpertNorm(nn.Module):
    """HoME's per-expert batch normalisation in eval, written out elementwise: the exporter
    cannot size ``F.batch_norm`` over the [B, E*D] view it uses (its channel count is computed
    from the traced shape), while this form has only static parameter shapes.

    Shapes: [E, B, D] -> [E, B, D].
    """

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, norm: ExpertNorm) -> None:
        super().__init__()
        experts, _, dim = norm.weight.shape
        self.weight, self.bias = norm.weight, norm.bias
        self.register_buffer("mean", norm.running_mean.view(experts, 1, dim).clone())
        self.register_buffer("var", norm.running_var.view(experts, 1, dim).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * torch.rsqrt(self.var + NORM_EPS) * self.weight + self.bias


def export_friendly(model: MultiTaskModel) -> MultiTaskModel:
    """An equivalent model (in eval) that traces well: experts no task routes to removed
    (top-k gates then trace through their dense path over the rest), and batch-normalised
    experts written out elementwise."""
    model = without_unused_experts(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, ExpertNorm) and module.kind == "batch":
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, FrozenExpertNorm(module))
    return model


class OnnxModule(nn.Module):
    """(categorical, numeric) -> one user-scale output per task: what the graph computes."""

    def __init__(self, model: MultiTaskModel, tasks: list[Task]) -> None:
        super().__init__()
        self.model = export_friendly(copy.deepcopy(model).eval())
        self.tasks = tasks

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Zero-valued ties keep both inputs in the graph even when the encoder reads one only
        # (the CNN encoder ignores categories): the graph's interface stays the same for all.
        numeric = numeric + categorical[:, :0].sum(1, keepdim=True).to(numeric.dtype)
        categorical = categorical + numeric[:, :0].sum(1, keepdim=True).to(categorical.dtype)
        logits = self.model(Features(categorical, numeric)).logits
        return tuple(task.outputs(out) for task, out in zip(self.tasks, logits, strict=True))


def _output_schema(task: Task) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": task.name, "kind": task.kind.value}
    if task.kind is TaskKind.multiclass:
        entry.update(shape=["batch", task.out_dim], meaning="class probabilities")
        entry["classes"] = list(task.classes)
    elif task.kind is TaskKind.multilabel:
        entry.update(shape=["batch", task.out_dim], meaning="probability of 1 per label")
        entry["columns"] = list(task.spec.columns)
    elif task.kind is TaskKind.binary:
        entry.update(shape=["batch"], meaning="probability of 1")
    else:
        entry.update(shape=["batch"], meaning="predicted value on the target's scale")
    return entry


def _onnxruntime() -> Any | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def sidecar_path(out: Path) -> Path:
    """``model.onnx`` -> ``model.json``: where the graph's interface is described."""
    return out.with_suffix(".json")


def export_onnx(
    run: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    overwrite: bool = False,
    encoder_factory: Callable[[], nn.Module] | None = None,
) -> dict[str, Any]:
    """Write ``run`` as an ONNX graph to ``out`` and its interface to ``out`` with suffix
    ``.json``; return that interface. With ``verify`` and onnxruntime installed, the graph is
    run against PyTorch first and not written unless they agree. Existing files are replaced
    only with ``overwrite`` (see :func:`polytask.artifacts.ownership.check_output_file`)."""
    out = Path(out)
    if not out.name or out.name == "..":
        raise PolytaskError(f"-o {out}: give a file name, e.g. model.onnx")
    sidecar = sidecar_path(out)
    if sidecar == out:
        raise PolytaskError(f"-o {out}: name the graph file with another suffix, e.g. model.onnx")
    run_files = [Path(run) / name for name in (rd.CONFIG, rd.PREPROCESSOR, rd.WEIGHTS)]
    for path in (out, sidecar):
        check_output_file(path, overwrite=overwrite, inputs=run_files)
    if importlib.util.find_spec("onnx") is None:
        raise PolytaskError("ONNX export needs the onnx package: pip install 'polytask[export]'")
    if opset not in OPSETS:
        raise PolytaskError(
            f"--opset must be {OPSETS.start}..{OPSETS.stop - 1} (got {opset}): the range the "
            "TorchScript-based exporter covers for these graphs"
        )
    predictor = Predictor.load(run, encoder_factory=encoder_factory)
    clash = sorted(set(INPUTS) & set(predictor.task_names))
    if clash:
        raise PolytaskError(f"task name '{clash[0]}' is also an input name of the graph")
    module = OnnxModule(predictor.model, predictor.tasks).eval()
    example = synthetic_rows(predictor.preprocessor, 2)
    runtime = _onnxruntime() if verify else None
    result: dict[str, Any] = {"max_abs_difference": None}

    def write(temp: Path) -> None:
        _trace(module, example, temp, predictor.task_names, opset)
        if runtime is not None:
            result["max_abs_difference"] = _check(runtime, temp, predictor)

    write_atomic(out, write)
    preprocessor = predictor.preprocessor
    numeric_columns = [*preprocessor.numeric, *(f"{c}__missing" for c in preprocessor.numeric)]
    interface = {
        "model": out.name,
        "run": str(predictor.run.resolve()),
        "preprocessor": str((predictor.run / rd.PREPROCESSOR).resolve()),
        "arch": predictor.spec.model.arch,
        "opset": opset,
        "inputs": [
            {
                "name": "categorical",
                "dtype": "int64",
                "shape": ["batch", len(preprocessor.categorical)],
                "columns": list(preprocessor.categorical),
                "meaning": "vocabulary index per column, 0 for unknown or missing",
            },
            {
                "name": "numeric",
                "dtype": "float32",
                "shape": ["batch", preprocessor.numeric_width],
                "columns": numeric_columns,
                "meaning": "standardised values (0 where missing), then a 0/1 missing flag each",
            },
        ],
        "outputs": [_output_schema(task) for task in predictor.tasks],
        "max_abs_difference": result["max_abs_difference"],
        "verified": result["max_abs_difference"] is not None,
    }
    if any(level.gates.kind == "topk" for level in predictor.model.plan.levels):
        interface["notes"] = [
            "top-k routed experts are exported through a static path (the experts some task "
            "routes to, dense top-k weights): same outputs, no sparse dispatch"
        ]
    write_json(sidecar, interface)
    return interface


def _expm1(graph: Any, x: Any) -> Any:
    """ONNX has no expm1 and the exporter no rule for it; exp(x) - 1 is its plain spelling
    (ESMM's and AITM's chained probabilities use it, far from where the two differ)."""
    one = graph.op("Constant", value_t=torch.tensor(1.0))
    return graph.op("Sub", graph.op("Exp", x), one)


def _trace(module: nn.Module, example: Features, path: Path, names: list[str], opset: int) -> None:
    batch = {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # the legacy exporter's deprecation notice and tracer notes on Python-side constants
        # (task indices, widths) say nothing about this graph (the parity check does), and
        # on failure it prints the whole graph before raising
        warnings.simplefilter("ignore")
        torch.onnx.register_custom_op_symbolic("aten::expm1", _expm1, opset)
        try:
            torch.onnx.export(
                module,
                (example.categorical, example.numeric),
                str(path),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=list(names),
                dynamic_axes={name: batch for name in [*INPUTS, *names]},
                opset_version=opset,
            )
        except torch.onnx.errors.OnnxExporterError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise PolytaskError(f"ONNX export failed: {first}") from None


def _check(runtime: Any, path: Path, predictor: Predictor) -> float:
    """Largest |onnxruntime - PyTorch| over every task's output, on random rows at batch
    sizes the trace did not see; a disagreement is refused as an export failure."""
    try:
        session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types; any is a failed export
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PolytaskError(f"onnxruntime cannot load the exported graph: {first}") from None
    worst = 0.0
    for seed, size in enumerate(CHECK_BATCHES):
        rows = synthetic_rows(predictor.preprocessor, size, seed=seed + 1)
        feed = {"categorical": rows.categorical.numpy(), "numeric": rows.numeric.numpy()}
        got = session.run(predictor.task_names, feed)
        with torch.inference_mode():
            logits = predictor.model.eval()(rows).logits
            expected = [
                task.outputs(out).numpy() for task, out in zip(predictor.tasks, logits, strict=True)
            ]
        for task, left, right in zip(predictor.tasks, got, expected, strict=True):
            if left.shape != right.shape:
                raise PolytaskError(
                    f"ONNX export of {predictor.spec.model.arch}: task '{task.name}' has shape "
                    f"{left.shape} in the graph but {right.shape} in PyTorch"
                )
            worst = max(worst, float(np.max(np.abs(left - right), initial=0.0)))
    if not worst <= TOLERANCE:
        raise PolytaskError(
            f"ONNX export of {predictor.spec.model.arch} differs from PyTorch by {worst:.2e} "
            f"(more than {TOLERANCE:g}); not written"
        )
    return worst
