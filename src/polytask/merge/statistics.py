"""What merging methods need from the models and the runs' rows, computed on demand.

* Fisher information: per run, the diagonal of E_x E_{y ~ p(y|x)} [∇ log p(y|x)²] for the
  run's tasks, per row (not per batch). ``exact`` takes the expectation over labels exactly:
  with J = ∂outputs/∂θ for one row, binary p(1-p) J², multiclass Σ_y p_y J_y² - (Σ_y p_y J_y)²,
  multilabel the binary form per label, regression J² (a unit-variance Gaussian on the
  standardised target). ``sampled`` draws one label per row from the model's own predictive
  distribution and squares that row's gradient: an unbiased estimate at the cost of one
  gradient per row instead of one per output. Both come from layer hooks
  (:mod:`polytask.merge.per_row`: one backward pass over a chunk of rows per label value),
  per-row Jacobians only for the parameters the hooks don't cover. ``batch`` is
  FusionBench's estimate, not per row: per batch of rows, the square of the gradient of
  Σ_rows Σ_y √p(y|x) log p(y|x) (√p held constant), summed over batches, over the rows; the
  cross terms between a batch's rows stay in. No labels are read.
* Gram matrices: per run, X^T X / n of the inputs of every ``nn.Linear``, every layer of every
  fused expert bank (per member) and every softmax gate bank, on the run's rows.
* Prediction entropy: the sum over runs of the mean entropy of the run's tasks' predictions
  on a fresh batch of its rows (AdaMerging's and the routed merge's objective).

Each run's rows are a seeded sample of one split of the run's own data, preprocessed with
the base's preprocessor. Everything runs the base architecture with the run's weights put
back in place (:func:`polytask.merge.layout.expand`), so the run's tasks compute exactly
what they compute in the run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from polytask.config import RunSpec, TaskKind
from polytask.data.preprocess import Preprocessor
from polytask.data.tabular import load_splits
from polytask.errors import ConfigError, DataError
from polytask.features import Features
from polytask.merge.base import Gram, Objective, RowOptions, StateDict
from polytask.merge.per_row import RowSquares
from polytask.model import MultiTaskModel
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import SoftmaxGates
from polytask.tasks import Task

JACOBIAN_CHUNK = 32  # rows per vectorised Jacobian (memory: rows x outputs x parameters)
HOOK_CHUNK = 256  # rows per hooked forward pass (memory: rows x activations); a multiple of
# LABEL_CHUNK, so that sampled labels are drawn in the same order whatever the chunk
LABEL_CHUNK = 32  # rows per draw of sampled labels
PROBE_ROWS = 4  # rows of the forward pass that checks what the hooks cover


@dataclass
class RunRows:
    """One run as merging sees it: its name, its tasks (indices in the base's task order)
    and where its rows come from. ``shared`` caches the rows of each data section, so runs
    fine-tuned on the same table read it once."""

    name: str
    tasks: list[int]
    spec: RunSpec
    _frames: dict[str, Features] = field(default_factory=dict)
    shared: dict[str, Features] = field(default_factory=dict)

    def features(self, split: str, preprocessor: Preprocessor) -> Features:
        if split not in self._frames:
            key = f"{split}:{self.spec.data.model_dump_json()}"
            if key not in self.shared:
                splits = load_splits(self.spec.data)
                frame = {"train": splits.train, "valid": splits.valid, "test": splits.test}[split]
                if frame is None or not len(frame):
                    raise DataError(f"run {self.name} has no {split} rows to merge with")
                self.shared[key] = preprocessor.transform(frame)
            self._frames[split] = self.shared[key]
        return self._frames[split]

    def sample(self, options: RowOptions, preprocessor: Preprocessor) -> Features:
        rows = self.features(options.split, preprocessor)
        generator = torch.Generator().manual_seed(options.seed)
        count = min(options.samples, len(rows))
        return rows.take(torch.randperm(len(rows), generator=generator)[:count])


def prediction_entropy(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of one task's predictive distribution over the rows of ``logits``."""
    if task.kind is TaskKind.multiclass:
        log_p = torch.log_softmax(logits, dim=-1)
        return -(log_p.exp() * log_p).sum(-1).mean()
    if task.kind in (TaskKind.binary, TaskKind.multilabel):
        p = torch.sigmoid(logits)
        log_p, log_q = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
        return -(p * log_p + (1 - p) * log_q).mean()
    raise ConfigError(
        f"task '{task.name}' is a regression: its predictions have no entropy to minimise; "
        "choose a method that does not adapt on rows"
    )


def fisher_weights(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Per row and output, the weight w of its squared gradient in the Fisher diagonal
    ([R, O] logits -> [R, O]): p for multiclass (with the mean score subtracted, see
    :func:`row_fisher`), p(1-p) for binary and multilabel, 1 for regression."""
    if task.kind is TaskKind.multiclass:
        return torch.softmax(logits, dim=-1)
    if task.kind in (TaskKind.binary, TaskKind.multilabel):
        p = torch.sigmoid(logits)
        return p * (1 - p)
    return torch.ones_like(logits)


def sample_label(task: Task, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per row drawn from the model's predictive distribution ([R, O] logits)."""
    if task.kind is TaskKind.multiclass:
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
    if task.kind in (TaskKind.binary, TaskKind.multilabel):
        return (torch.rand(logits.shape, generator=generator) < torch.sigmoid(logits)).float()
    return logits + torch.randn(logits.shape, generator=generator)


def log_probability(task: Task, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """log p(label | x) for one row's outputs [O]."""
    if task.kind is TaskKind.multiclass:
        return torch.log_softmax(logits, -1).gather(-1, label.unsqueeze(-1)).sum()
    if task.kind in (TaskKind.binary, TaskKind.multilabel):
        log_p, log_q = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
        return (label * log_p + (1 - label) * log_q).sum()
    return -0.5 * ((label - logits) ** 2).sum()


def score(task: Task, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """∂ log p(label | x) / ∂ logits per row ([R, O]; :func:`log_probability`'s gradient)."""
    if task.kind is TaskKind.multiclass:
        return nn.functional.one_hot(label, logits.shape[-1]).to(logits) - logits.softmax(-1)
    if task.kind in (TaskKind.binary, TaskKind.multilabel):
        return label - torch.sigmoid(logits)
    return label - logits


def batch_surrogate(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Σ over the rows and the label values y of √p(y|x) log p(y|x), √p held constant:
    FusionBench's Fisher surrogate (``fisher_merging``'s CLIP subclass, multiclass); binary
    and multilabel tasks take each label's two values."""
    if task.kind is TaskKind.multiclass:
        root = torch.softmax(logits, dim=-1).detach().sqrt()
        return (root * torch.log_softmax(logits, dim=-1)).sum()
    log_p, log_q = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
    root_p, root_q = torch.sigmoid(logits).detach().sqrt(), torch.sigmoid(-logits).detach().sqrt()
    return (root_p * log_p + root_q * log_q).sum()


def check_batch_estimate(tasks: list[Task]) -> None:
    """The batch estimate sums over a finite set of label values; a regression has none."""
    for task in tasks:
        if task.kind is TaskKind.regression:
            raise ConfigError(
                f"options.estimate 'batch' sums over label values, which task '{task.name}' "
                "(a regression) does not have; choose estimate 'exact' or 'sampled'"
            )


def fisher_cotangents(task: Task, logits: torch.Tensor) -> list[torch.Tensor]:
    """Output cotangents u_k ([R, O] each) with Σ_k (u_k · J)² = one row's exact Fisher for
    J = ∂ logits / ∂θ: for multiclass u_c = √p_c (e_c - p), the score of label c weighted by
    √p_c, so Σ_c p_c (J_c - Σ_y p_y J_y)² (:func:`row_fisher`'s quantity, without its
    difference of two large sums); otherwise u_o = √w_o e_o with :func:`fisher_weights` w."""
    outputs = logits.shape[-1]
    eye = torch.eye(outputs, dtype=logits.dtype)
    if task.kind is TaskKind.multiclass:
        p = torch.softmax(logits, dim=-1)
        return [p[:, c : c + 1].sqrt() * (eye[c] - p) for c in range(outputs)]
    root = fisher_weights(task, logits).sqrt()
    return [root[:, o : o + 1] * eye[o] for o in range(outputs)]


def sample_labels(
    tasks: list[Task], logits: list[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """:func:`sample_label` for every task, ``LABEL_CHUNK`` rows at a time (tasks inner)."""
    drawn: list[list[torch.Tensor]] = [[] for _ in tasks]
    for start in range(0, len(logits[0]), LABEL_CHUNK):
        for own, task, z in zip(drawn, tasks, logits, strict=True):
            own.append(sample_label(task, z[start : start + LABEL_CHUNK], generator))
    return [torch.cat(own) for own in drawn]


def _differentiable(
    outputs: list[torch.Tensor], cotangents: list[torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The outputs that depend on a wanted parameter, with their cotangents."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents or outputs, strict=True) if o.requires_grad]
    return [o for o, _ in pairs], [c for _, c in pairs]


def row_fisher(
    tasks: list[Task], logits: list[torch.Tensor], jacobians: list[torch.Tensor]
) -> torch.Tensor:
    """Fisher diagonal of one parameter tensor for a chunk of rows, summed over the rows.

    logits[t]: [R, O_t]; jacobians[t]: [R, O_t, *shape] (∂ output / ∂ parameter)."""
    total = torch.zeros(jacobians[0].shape[2:])
    for task, out, jac in zip(tasks, logits, jacobians, strict=True):
        weights = fisher_weights(task, out.detach())  # [R, O]
        w = weights.reshape(*weights.shape, *([1] * (jac.dim() - 2)))
        value = (w * jac**2).sum(1)
        if task.kind is TaskKind.multiclass:
            value = value - (w * jac).sum(1) ** 2
        total = total + value.sum(0)
    return total


def load_function_transforms() -> None:
    """The first ``torch.func`` transform in a process imports torch's compiler stack (hundreds
    of modules, seconds); do it before a merge is timed, like reading its rows."""
    vmap(grad(lambda x: (x * x).sum()))(torch.ones(1, 1))


class RunStatistics:
    """:class:`polytask.merge.base.Statistics` over the runs being merged.

    template: the base model (its architecture); states: per run, its weights in the base's
    layout; held: per run, the elements it holds; keys: the tensors being merged;
    compose: merged tensors -> the whole model's state (the single-run and untouched parts
    filled in).
    """

    def __init__(
        self,
        template: MultiTaskModel,
        tasks: list[Task],
        preprocessor: Preprocessor,
        runs: list[RunRows],
        states: list[StateDict],
        held: list[StateDict],
        keys: list[str],
        compose: Callable[[StateDict], StateDict],
    ) -> None:
        self.template = template.eval()
        self.tasks = tasks
        self.preprocessor = preprocessor
        self.runs = runs
        self.states = states
        self.held = held
        self.keys = keys
        self.compose = compose
        self._copy: MultiTaskModel | None = None

    def _model(self, run: int) -> MultiTaskModel:
        """The base architecture with run ``run``'s weights: one copy of the template for
        every run (a deep copy per run was a tenth of a batch-estimate Fisher merge)."""
        if self._copy is None:
            self._copy = copy.deepcopy(self.template)
        self._copy.load_state_dict(self.states[run])
        return self._copy.eval()

    # ---------------------------------------------------------------- Fisher
    def fisher(
        self, options: RowOptions, estimate: str = "exact", batch_size: int = 32
    ) -> list[StateDict]:
        if estimate == "batch":
            return [self._batch_fisher(k, options, batch_size) for k in range(len(self.runs))]
        return [self._run_fisher(k, options, estimate) for k in range(len(self.runs))]

    def _batch_fisher(self, run: int, options: RowOptions, batch_size: int) -> StateDict:
        """FusionBench's estimate: per batch of rows in order, the square of the gradient of
        the batch's :func:`batch_surrogate`, summed over batches, over the rows."""
        model = self._model(run)
        rows = self.runs[run].sample(options, self.preprocessor)
        tasks = [self.tasks[t] for t in self.runs[run].tasks]
        check_batch_estimate(tasks)
        params = {k: v for k, v in model.named_parameters() if k in self.keys}
        for name, param in model.named_parameters():
            param.requires_grad_(name in params)
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for start in range(0, len(rows) if params else 0, batch_size):
            chunk = rows.take(torch.arange(start, min(start + batch_size, len(rows))))
            logits = model(chunk).logits
            surrogate = sum(batch_surrogate(self.tasks[t], logits[t]) for t in self.runs[run].tasks)
            assert isinstance(surrogate, torch.Tensor)
            if not surrogate.requires_grad:
                continue
            grads = torch.autograd.grad(surrogate, list(params.values()), allow_unused=True)
            for key, value in zip(params, grads, strict=True):
                if value is not None:
                    total[key] += value**2
        fisher = {k: (v / len(rows)) * self.held[run][k] for k, v in total.items()}
        for key in self.keys:
            fisher.setdefault(key, torch.zeros_like(self.states[run][key]))
        return fisher

    def _run_fisher(self, run: int, options: RowOptions, estimate: str) -> StateDict:
        """Covered layers (:mod:`polytask.merge.per_row`) from one forward pass per chunk and
        one backward pass per cotangent of :func:`fisher_cotangents` (or per sampled label);
        the parameters the hooks don't cover by per-row Jacobians (:meth:`_jacobian_fisher`).
        """
        model = self._model(run)
        rows = self.runs[run].sample(options, self.preprocessor)
        tasks = [self.tasks[t] for t in self.runs[run].tasks]
        positions = self.runs[run].tasks
        names = {k for k, _ in model.named_parameters() if k in self.keys}
        for name, param in model.named_parameters():
            param.requires_grad_(name in names)
        squares = RowSquares(model, names)
        generator = torch.Generator().manual_seed(options.seed + 7)
        labels: list[list[torch.Tensor]] = [[] for _ in tasks]
        if names:
            probe = rows.take(torch.arange(min(PROBE_ROWS, len(rows))))
            with squares.forward(len(probe)):
                outputs = model(probe).logits
            checked = _differentiable([outputs[t] for t in positions])[0]
            squares.check(checked, torch.Generator().manual_seed(options.seed))
        for start in range(0, len(rows) if names else 0, HOOK_CHUNK):
            chunk = rows.take(torch.arange(start, min(start + HOOK_CHUNK, len(rows))))
            with squares.forward(len(chunk)):
                outputs = model(chunk).logits
            logits = [outputs[t] for t in positions]
            if estimate == "sampled":
                drawn = sample_labels(tasks, [z.detach() for z in logits], generator)
                for own, label in zip(labels, drawn, strict=True):
                    own.append(label)
                scores = [
                    score(task, z.detach(), y)
                    for task, z, y in zip(tasks, logits, drawn, strict=True)
                ]
                squares.add(*_differentiable(logits, scores))
                continue
            for task, z in zip(tasks, logits, strict=True):
                for cotangent in fisher_cotangents(task, z.detach()):
                    squares.add(*_differentiable([z], [cotangent]))
        total = dict(squares.totals)
        if squares.uncovered:
            sampled = [torch.cat(own) for own in labels] if estimate == "sampled" else None
            total.update(self._jacobian_fisher(model, rows, run, squares.uncovered, sampled))
        fisher = {k: (v / len(rows)) * self.held[run][k] for k, v in total.items()}
        for key in self.keys:  # buffers (running statistics) carry no Fisher information
            fisher.setdefault(key, torch.zeros_like(self.states[run][key]))
        return fisher

    def _jacobian_fisher(
        self,
        model: MultiTaskModel,
        rows: Features,
        run: int,
        names: set[str],
        labels: list[torch.Tensor] | None,
    ) -> StateDict:
        """Σ over rows of the Fisher diagonal of the ``names`` parameters from each row's
        Jacobian (``vmap(jacrev)``; exact) or each row's gradient at its sampled ``labels``
        (``vmap(grad)``): any module, at the cost of one vectorised model copy per row."""
        tasks = [self.tasks[t] for t in self.runs[run].tasks]
        positions = self.runs[run].tasks
        params = {k: v.detach() for k, v in model.named_parameters() if k in names}
        fixed = {k: v.detach() for k, v in model.state_dict().items() if k not in params}

        def output(values: StateDict, categorical: torch.Tensor, numeric: torch.Tensor):
            features = Features(categorical.unsqueeze(0), numeric.unsqueeze(0))
            logits = functional_call(model, {**fixed, **values}, (features,)).logits
            return [logits[t][0] for t in positions]

        def log_likelihood(values, categorical, numeric, *labels):
            out = output(values, categorical, numeric)
            return sum(
                log_probability(task, z, y) for task, z, y in zip(tasks, out, labels, strict=True)
            )

        def outputs(values: StateDict, categorical: torch.Tensor, numeric: torch.Tensor):
            return tuple(output(values, categorical, numeric))

        per_row = vmap(jacrev(outputs), in_dims=(None, 0, 0))
        per_row_grad = vmap(grad(log_likelihood), in_dims=(None, 0, 0, *([0] * len(tasks))))
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for start in range(0, len(rows), JACOBIAN_CHUNK):
            index = torch.arange(start, min(start + JACOBIAN_CHUNK, len(rows)))
            chunk = rows.take(index)
            if labels is not None:
                grads = per_row_grad(
                    params, chunk.categorical, chunk.numeric, *[y[index] for y in labels]
                )
                for key in params:
                    total[key] += (grads[key] ** 2).sum(0)
                continue
            with torch.no_grad():
                logits = [model(chunk).logits[t] for t in positions]
            jacobians = per_row(params, chunk.categorical, chunk.numeric)
            for key in params:
                total[key] += row_fisher(tasks, logits, [j[key] for j in jacobians])
        return total

    # ---------------------------------------------------------------- Grams
    def grams(self, options: RowOptions) -> list[dict[str, Gram]]:
        return [self._run_grams(k, options) for k in range(len(self.runs))]

    def _run_grams(self, run: int, options: RowOptions) -> dict[str, Gram]:
        model = self._model(run)
        sums: dict[str, torch.Tensor] = {}
        layouts: dict[str, bool] = {}
        counts: dict[str, int] = {}

        def add(key: str, gram: torch.Tensor, rows: int, input_last: bool) -> None:
            if key not in self.keys:
                return
            sums[key] = sums[key] + gram if key in sums else gram
            counts[key] = counts.get(key, 0) + rows
            layouts[key] = input_last

        handles = []
        for name, module in model.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_pre_hook(_linear_hook(prefix, add)))
            elif isinstance(module, ExpertBank):
                handles.append(
                    module.register_forward_pre_hook(_bank_hook(prefix, add), with_kwargs=True)
                )
            elif isinstance(module, SoftmaxGates):
                handles.append(module.register_forward_pre_hook(_gate_hook(prefix, add)))
        rows = self.runs[run].sample(options, self.preprocessor)
        try:
            with torch.no_grad():
                for start in range(0, len(rows), 4096):
                    model(rows.take(torch.arange(start, min(start + 4096, len(rows)))))
        finally:
            for handle in handles:
                handle.remove()
        grams = {}
        for key, total in sums.items():
            held = self.held[run][key]
            members = held.reshape(held.shape[0], -1).any(1) if total.dim() == 3 else held.any()
            gram = total / counts[key]
            if total.dim() == 3:
                gram = gram * members.reshape(-1, 1, 1)
            elif not bool(members):
                continue
            grams[key] = Gram(gram, layouts[key])
        return grams

    # ---------------------------------------------------------------- entropy
    def entropy(self, options: RowOptions, batch_size: int) -> Objective:
        check_entropy(self.runs, self.tasks)
        batches = RowBatches(self.runs, options, self.preprocessor, batch_size)
        model = self.template

        def objective(merged: StateDict) -> torch.Tensor:
            rows, slices = batches.draw()
            logits = functional_call(model, self.compose(merged), (rows,)).logits
            return batches.entropy(self.tasks, logits, slices)

        return objective


class RowBatches:
    """Random batches of every run's rows, drawn together so that one forward pass serves all
    runs; ``entropy`` sums each run's tasks' mean entropy on its own rows."""

    def __init__(
        self, runs: list[RunRows], options: RowOptions, preprocessor: Preprocessor, size: int
    ) -> None:
        self.runs = runs
        self.pools = [run.sample(options, preprocessor) for run in runs]
        self.size = size
        self.generator = torch.Generator().manual_seed(options.seed + 1)

    def draw(self) -> tuple[Features, list[slice]]:
        parts, slices, start = [], [], 0
        for pool in self.pools:
            picks = torch.randint(len(pool), (min(self.size, len(pool)),), generator=self.generator)
            parts.append(pool.take(picks))
            slices.append(slice(start, start + len(picks)))
            start += len(picks)
        rows = Features(
            torch.cat([p.categorical for p in parts]), torch.cat([p.numeric for p in parts])
        )
        return rows, slices

    def entropy(
        self, tasks: list[Task], logits: list[torch.Tensor], slices: list[slice]
    ) -> torch.Tensor:
        """Regression tasks have no entropy and do not count (:func:`check_entropy`)."""
        total = torch.zeros(())
        for run, rows in zip(self.runs, slices, strict=True):
            for t in run.tasks:
                if tasks[t].kind is not TaskKind.regression:
                    total = total + prediction_entropy(tasks[t], logits[t][rows])
        return total


def check_entropy(runs: list[RunRows], tasks: list[Task]) -> None:
    """Entropy minimisation needs at least one classification task among the runs'."""
    if all(tasks[t].kind is TaskKind.regression for run in runs for t in run.tasks):
        raise ConfigError(
            "the runs' tasks are all regressions, whose predictions have no entropy to "
            "minimise; choose a method that does not adapt on rows"
        )


def _linear_hook(prefix: str, add: Callable[..., None]):
    def hook(module: nn.Linear, args: tuple) -> None:
        x = args[0].detach().reshape(-1, module.in_features)
        add(f"{prefix}weight", x.T @ x, x.shape[0], True)

    return hook


def _bank_hook(prefix: str, add: Callable[..., None]):
    """Every layer's input from layer ``start`` on, per member ([B, in] shared or [E, B, in])."""

    def hook(bank: ExpertBank, args: tuple, kwargs: dict) -> None:
        x = args[0].detach()
        start = args[1] if len(args) > 1 else kwargs.get("start", 0)
        for index in range(start, len(bank.weights)):
            if x.dim() == 2:
                gram = (x.T @ x).expand(bank.num_experts, -1, -1).clone()
            else:
                gram = x.transpose(1, 2) @ x
            add(f"{prefix}weights.{index}", gram, x.shape[-2], False)
            x = bank.activate(bank.linear(x, index), index)

    return hook


def _gate_hook(prefix: str, add: Callable[..., None]):
    def hook(gates: SoftmaxGates, args: tuple) -> None:
        x = args[0].detach()
        if x.dim() == 2:
            gram = (x.T @ x).expand(gates.num_gates, -1, -1).clone()
        else:
            gram = x.transpose(1, 2) @ x
        add(f"{prefix}weight", gram, x.shape[-2], False)

    return hook
