"""Task kinds: masked losses, outputs and metrics checked against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from polytask.config import TaskKind, TaskSpec
from polytask.errors import ConfigError
from polytask.tasks import Task, labelled_rows, output_columns, task_losses

NAN = float("nan")


def make_task(kind: str, out_dim: int = 1, **spec) -> Task:
    if kind == "multilabel":
        spec.setdefault("targets", [f"t{j}" for j in range(out_dim)])
    else:
        spec.setdefault("target", "y")
    return Task(TaskSpec(name="t", kind=kind, **spec), out_dim=out_dim)


# ---------------------------------------------------------------------- losses
def test_labelled_rows_and_task_presence_follow_the_labels_task_by_task():
    """One-column labels (tested in one pass) and a multilabel task (labelled where any of
    its columns is), in any order."""
    tasks = [
        Task(TaskSpec(name="a", kind="binary", target="a"), out_dim=1),
        Task(TaskSpec(name="m", kind="multilabel", targets=["m0", "m1"]), out_dim=2),
        Task(TaskSpec(name="b", kind="binary", target="b"), out_dim=1),
        Task(TaskSpec(name="c", kind="binary", target="c"), out_dim=1),
    ]
    labels = {
        "a": torch.tensor([1.0, NAN, 0.0]),
        "m": torch.tensor([[NAN, NAN], [1.0, NAN], [NAN, 0.0]]),
        "b": torch.tensor([NAN, NAN, NAN]),
        "c": torch.tensor([NAN, 1.0, NAN]),
    }
    expected = [[True, False, False, False], [False, True, False, True], [True, True, False, False]]
    assert labelled_rows(labels, tasks).tolist() == expected
    logits = [torch.zeros(3, task.out_dim) for task in tasks]
    losses, present = task_losses(logits, labels, tasks)
    assert present.tolist() == [True, True, False, True]
    assert losses[2] == 0


def test_binary_loss_is_mean_bce_over_labelled_rows():
    task = make_task("binary")
    logits = torch.tensor([[0.3], [-1.2], [2.0], [0.1], [-0.4]])
    labels = torch.tensor([1.0, NAN, 0.0, NAN, 1.0])
    keep = torch.tensor([0, 2, 4])
    expected = F.binary_cross_entropy_with_logits(logits[keep, 0], labels[keep])
    torch.testing.assert_close(task.loss(logits, labels), expected)


def test_multiclass_loss_is_mean_cross_entropy_over_labelled_rows():
    task = make_task("multiclass", out_dim=3)
    logits = torch.tensor([[0.3, 1.0, -1.0], [2.0, 0.0, 0.5], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([2.0, NAN, 0.0, 1.0])
    keep = torch.tensor([0, 2, 3])
    expected = F.cross_entropy(logits[keep], labels[keep].long())
    torch.testing.assert_close(task.loss(logits, labels), expected)


@pytest.mark.parametrize(
    ("loss", "reference"),
    [("mse", F.mse_loss), ("l1", F.l1_loss), ("huber", F.huber_loss)],
)
def test_regression_loss_is_mean_over_labelled_rows(loss, reference):
    task = make_task("regression", loss=loss)
    logits = torch.tensor([[0.5], [3.0], [-2.0], [0.0]])
    labels = torch.tensor([1.0, NAN, 0.5, -0.2])
    keep = torch.tensor([0, 2, 3])
    expected = reference(logits[keep, 0], labels[keep])
    torch.testing.assert_close(task.loss(logits, labels), expected)


def test_multilabel_loss_is_mean_bce_over_labelled_cells():
    task = make_task("multilabel", out_dim=2)
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.9]])
    labels = torch.tensor([[1.0, NAN], [0.0, 1.0], [NAN, NAN]])
    cells = ~torch.isnan(labels)
    expected = F.binary_cross_entropy_with_logits(logits[cells], labels[cells])
    torch.testing.assert_close(task.loss(logits, labels), expected)


@pytest.mark.parametrize(
    ("kind", "out_dim", "label_shape"),
    [
        ("binary", 1, (4,)),
        ("multiclass", 3, (4,)),
        ("regression", 1, (4,)),
        ("multilabel", 2, (4, 2)),
    ],
)
def test_no_labels_gives_zero_loss_and_zero_gradient(kind, out_dim, label_shape):
    task = make_task(kind, out_dim=out_dim)
    logits = torch.randn(4, out_dim, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    loss = task.loss(logits, torch.full(label_shape, NAN))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_unlabelled_rows_get_no_gradient():
    task = make_task("binary")
    logits = torch.tensor([[0.3], [-1.2], [2.0]], requires_grad=True)
    task.loss(logits, torch.tensor([1.0, NAN, 0.0])).backward()
    assert logits.grad[1, 0] == 0.0
    assert logits.grad[0, 0] != 0.0 and logits.grad[2, 0] != 0.0


def test_present_marks_labelled_entries():
    task = make_task("binary")
    assert task.present(torch.tensor([1.0, NAN, 0.0])).tolist() == [True, False, True]


# ---------------------------------------------------------------------- outputs
def test_outputs_per_kind():
    logits = torch.tensor([[0.2, -0.3, 1.0], [1.5, 0.0, -2.0]])
    torch.testing.assert_close(
        make_task("binary").outputs(logits[:, :1]), torch.sigmoid(logits[:, 0])
    )
    probabilities = make_task("multiclass", 3).outputs(logits)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(make_task("multilabel", 3).outputs(logits), torch.sigmoid(logits))
    regression = make_task("regression")
    regression.target_mean, regression.target_std = 100.0, 20.0
    torch.testing.assert_close(regression.outputs(logits[:, :1]), 100.0 + 20.0 * logits[:, 0])
    np.testing.assert_allclose(regression.decode_labels(np.array([0.0, -1.0])), [100.0, 80.0])


# ---------------------------------------------------------------------- metrics
@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _with_missing(labels: np.ndarray, rng: np.random.Generator, share: float = 0.25):
    labels = labels.astype(float).copy()
    labels[rng.random(labels.shape) < share] = np.nan
    return labels


def test_binary_metrics_match_sklearn_on_labelled_rows(rng):
    y = _with_missing(rng.integers(0, 2, size=200), rng)
    p = np.clip(0.5 * np.nan_to_num(y, nan=0.5) + 0.5 * rng.random(200), 0.01, 0.99)
    results = make_task("binary").metrics(p, y)
    mask = ~np.isnan(y)
    assert results["auc"] == pytest.approx(skm.roc_auc_score(y[mask], p[mask]))
    assert results["logloss"] == pytest.approx(skm.log_loss(y[mask], p[mask]))
    assert results["accuracy"] == pytest.approx(skm.accuracy_score(y[mask], p[mask] >= 0.5))
    assert set(results) == {"auc", "logloss", "accuracy"}


def test_multiclass_metrics_match_sklearn(rng):
    y = _with_missing(rng.integers(0, 4, size=150), rng)
    p = rng.random((150, 4))
    p /= p.sum(axis=1, keepdims=True)
    results = make_task("multiclass", out_dim=4).metrics(p, y)
    mask = ~np.isnan(y)
    predicted = p[mask].argmax(axis=1)
    assert results["accuracy"] == pytest.approx(skm.accuracy_score(y[mask], predicted))
    assert results["macro_f1"] == pytest.approx(
        skm.f1_score(y[mask], predicted, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    )


@pytest.mark.parametrize("classes", [2, 5, 9])
def test_weighted_macro_f1_matches_sklearn_with_absent_classes(rng, classes):
    """Weights, classes never labelled, classes never predicted, and classes neither."""
    y = rng.integers(0, max(classes - 2, 1), size=90).astype(float)
    p = rng.random((90, classes))
    p[:, 1] += 0.3 * (classes > 2)  # class 1 predicted often, the last two never labelled
    w = rng.integers(0, 4, size=90).astype(float)
    task = make_task("multiclass", out_dim=classes)
    expected = skm.f1_score(
        y.astype(int),
        p.argmax(axis=1),
        average="macro",
        labels=list(range(classes)),
        zero_division=0,
        sample_weight=w,
    )
    assert task.metrics(p, y, w)["macro_f1"] == pytest.approx(expected)
    assert task.metrics(p, y)["macro_f1"] == pytest.approx(
        skm.f1_score(
            y.astype(int),
            p.argmax(axis=1),
            average="macro",
            labels=list(range(classes)),
            zero_division=0,
        )
    )


def test_regression_metrics_match_definitions(rng):
    y = _with_missing(rng.normal(50, 10, size=120), rng)
    p = np.nan_to_num(y, nan=0.0) + rng.normal(0, 3, size=120)
    results = make_task("regression").metrics(p, y)
    mask = ~np.isnan(y)
    error = p[mask] - y[mask]
    assert results["rmse"] == pytest.approx(math.sqrt(np.mean(error**2)))
    assert results["mae"] == pytest.approx(np.mean(np.abs(error)))
    assert results["r2"] == pytest.approx(skm.r2_score(y[mask], p[mask]))


def test_multilabel_mean_auc_is_mean_of_per_label_auc(rng):
    y = _with_missing(rng.integers(0, 2, size=(100, 3)), rng)
    p = rng.random((100, 3))
    result = make_task("multilabel", out_dim=3).metrics(p, y)
    aucs = []
    for j in range(3):
        mask = ~np.isnan(y[:, j])
        aucs.append(skm.roc_auc_score(y[mask, j], p[mask, j]))
    assert result == {"mean_auc": pytest.approx(np.mean(aucs))}


def test_metrics_follow_the_configured_list(rng):
    task = make_task("regression", metrics=["mae"])
    assert set(task.metrics(rng.random(10), rng.random(10))) == {"mae"}
    assert task.primary_metric == "mae"


def test_metrics_without_labels_are_nan():
    results = make_task("binary").metrics(np.array([0.2, 0.7]), np.array([NAN, NAN]))
    assert all(math.isnan(v) for v in results.values())


def test_auc_with_one_class_is_nan_with_a_warning():
    with pytest.warns(UserWarning, match="only one class"):
        results = make_task("binary").metrics(np.array([0.2, 0.7, 0.4]), np.array([1.0, 1.0, 1.0]))
    assert math.isnan(results["auc"])
    assert results["accuracy"] == pytest.approx(1 / 3)


def test_normalised_error_metric_is_skill_over_predicting_the_mean():
    task = make_task("regression")
    y = np.array([1.0, 2.0, 3.0, 4.0, NAN])
    present = y[~np.isnan(y)]
    # Predicting the mean gives skill 0, perfect predictions skill 1.
    assert task.normalised("rmse", float(np.std(present)), y) == pytest.approx(0.0)
    assert task.normalised("rmse", 0.0, y) == pytest.approx(1.0)
    mae_of_mean = float(np.mean(np.abs(present - present.mean())))
    assert task.normalised("mae", mae_of_mean / 2, y) == pytest.approx(0.5)
    assert task.normalised("r2", 0.37, y) == 0.37


def test_normalised_logloss_against_base_rate():
    task = make_task("binary")
    y = np.array([1.0, 0.0, 0.0, 0.0])
    base = skm.log_loss(y, np.full(4, 0.25))
    assert task.normalised("logloss", base, y) == pytest.approx(0.0)
    assert task.normalised("logloss", base / 4, y) == pytest.approx(0.75)


def test_prediction_columns_that_would_collide_are_refused_naming_both():
    """A task 'genre' with class 'action' writes genre_p_action: a task of that name would
    have overwritten it without a word."""
    genre = Task(TaskSpec(name="genre", kind="multiclass", target="g"), 2, classes=["action", "x"])
    clash = Task(TaskSpec(name="genre_p_action", kind="binary", target="b"), 1)
    tags = Task(TaskSpec(name="t", kind="multilabel", targets=["a", "b"]), 2)
    assert list(output_columns([genre, tags])) == [
        "genre",
        "genre_p_action",
        "genre_p_x",
        "t_a",
        "t_b",
    ]
    with pytest.raises(ConfigError, match=r"'genre_p_action' would hold both task 'genre' class"):
        output_columns([genre, clash])


def test_training_refuses_colliding_prediction_columns_before_any_epoch(tmp_path):
    from polytask.config import parse_spec
    from polytask.train.prepare import prepare
    from tests.conftest import base_spec, make_table

    make_table().to_csv(tmp_path / "t.csv", index=False)
    raw = base_spec(tmp_path / "t.csv")
    raw["tasks"][0]["name"] = "segment_p_high"  # the binary task, beside segment's class high
    with pytest.raises(ConfigError, match="and task 'segment' class 'high'"):
        prepare(parse_spec(raw))


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression"])
def test_outputs_of_arrays_equal_outputs_of_tensors(kind):
    """The numpy outputs (torch-free prediction) follow the same definitions, including at
    logits whose naive sigmoid would overflow."""
    spec = {
        "binary": {"target": "y"},
        "multiclass": {"target": "y"},
        "multilabel": {"targets": ["a", "b", "c"]},
        "regression": {"target": "y"},
    }[kind]
    task = Task(TaskSpec(name="t", kind=kind, **spec), out_dim=3, target_mean=4.0, target_std=2.5)
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 5
    logits[0] = torch.tensor([-200.0, 200.0, 0.0])
    with np.errstate(over="raise"):
        got = task.outputs_array(logits.numpy())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, task.outputs(logits).numpy(), rtol=1e-6, atol=1e-7)


def test_task_losses_in_one_pass_equal_each_tasks_loss():
    """Tasks sharing a loss are computed together; each loss equals the task's own."""
    from polytask.tasks import task_losses

    rng = np.random.default_rng(0)
    specs = [TaskSpec(name=f"b{i}", kind=TaskKind.binary, target=f"b{i}") for i in range(3)] + [
        TaskSpec(name="r0", kind=TaskKind.regression, target="r0"),
        TaskSpec(name="r1", kind=TaskKind.regression, target="r1"),
        TaskSpec(name="h", kind=TaskKind.regression, target="h", loss="huber"),
        TaskSpec(name="m", kind=TaskKind.multiclass, target="m"),
    ]
    tasks = [Task(s, 3 if s.kind is TaskKind.multiclass else 1) for s in specs]
    n = 40
    outputs = [torch.from_numpy(rng.normal(size=(n, t.out_dim)).astype(np.float32)) for t in tasks]
    labels = {}
    for task in tasks:
        values = rng.integers(0, task.out_dim if task.out_dim > 1 else 2, size=n).astype(np.float32)
        values[rng.random(n) < 0.3] = np.nan
        labels[task.name] = torch.from_numpy(values)
    labels["b2"][:] = float("nan")  # a task without labels in the batch: loss 0, not present
    weights = {"b1": torch.from_numpy(rng.random(n).astype(np.float32)), "r0": torch.ones(n)}
    losses, present = task_losses(outputs, labels, tasks, weights)
    for index, task in enumerate(tasks):
        expected = task.loss(outputs[index], labels[task.name], weights.get(task.name))
        torch.testing.assert_close(losses[index], expected)
    assert present.tolist() == [True, True, False, True, True, True, True]
    assert float(losses[2]) == 0.0


def test_labelled_rows_marks_the_pairs_with_a_label():
    import torch

    from polytask.config import TaskSpec
    from polytask.tasks import Task, labelled_rows

    tasks = [
        Task(TaskSpec(name="a", kind="binary", target="a"), 1),
        Task(TaskSpec(name="m", kind="multilabel", targets=["x", "y"]), 2),
    ]
    nan = float("nan")
    labels = {
        "a": torch.tensor([1.0, nan, 0.0]),
        "m": torch.tensor([[nan, nan], [1.0, nan], [nan, nan]]),
    }
    assert labelled_rows(labels, tasks).tolist() == [[True, False], [False, True], [True, False]]
