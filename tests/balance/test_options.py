"""Every balancing method's declared options, checked against one table.

The table is written from the methods' definitions and papers (defaults, ranges), not read from
the declaration: a default or a bound that drifts fails here. Every option is also shown to be
used (another value changes what the method does), so none is declared and then ignored.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from polytask.balance import BALANCERS, OPTIONS, Balancer, parse_options
from polytask.balance.options import accepted
from polytask.config import parse_spec
from polytask.errors import ConfigError
from tests.balance.toy import Toy, toy_step
from tests.conftest import base_spec

MODES = "one of 'exact', 'fast'"
GRAMIAN: dict[str, tuple[Any, str]] = {"mode": ("fast", MODES), "every": (1, "an integer >= 1")}
SEED = (0, "an integer >= 0")
NORMALIZE = ("none", "one of 'none', 'l2', 'loss', 'loss+'")

# method -> option -> (default, what it accepts)
TABLE: dict[str, dict[str, tuple[Any, str]]] = {
    "equal": {},
    "uw": {"init": (0.0, "a finite number")},
    "dwa": {"temperature": (2.0, "a number > 0")},
    "gradnorm": {"alpha": (1.5, "a number >= 0"), "lr": (0.025, "a number > 0")},
    "rlw": {"distribution": ("normal", "one of 'normal', 'dirichlet'"), "seed": SEED},
    "famo": {"lr": (0.025, "a number > 0"), "weight_decay": (1e-3, "a number >= 0")},
    "db_mtl": {"beta": (0.9, "a number in [0, 1)"), "beta_sigma": (0.5, "a number >= 0")},
    "imtl": {
        **GRAMIAN,
        "variant": ("both", "one of 'g', 'l', 'both'"),
        "lr": (1e-2, "a number > 0"),
    },
    "mgda": {**GRAMIAN, "mode": ("exact", MODES), "normalize": NORMALIZE},
    "mgda_ub": {**GRAMIAN, "normalize": NORMALIZE},
    "pcgrad": {**GRAMIAN, "seed": SEED},
    "gradvac": {**GRAMIAN, "seed": SEED, "beta": (0.01, "a number in [0, 1]")},
    "cagrad": {**GRAMIAN, "c": (0.4, "a number in [0, 1)"), "rescale": (1, "an integer in [0, 2]")},
    "nash_mtl": {**GRAMIAN, "normalize_gramian": (False, "true or false")},
    "aligned_mtl": GRAMIAN,
    "upgrad": GRAMIAN,
    "graddrop": {"leak": (0.0, "a number in [0, 1]"), "seed": SEED},
    "sam_task": {"rho": (0.05, "a number > 0")},
}

# what each kind of range refuses (just outside each bound) and accepts (on the bounds)
OUTSIDE: dict[str, list[Any]] = {
    "a finite number": [math.inf, -math.inf, math.nan],
    "a number > 0": [0.0, -1e-12],
    "a number >= 0": [-1e-12, -1],
    "a number in [0, 1)": [-1e-12, 1.0, 1],
    "a number in [0, 1]": [-1e-12, 1.0 + 1e-12, 2],
    "an integer >= 0": [-1],
    "an integer >= 1": [0, -1],
    "an integer in [0, 2]": [-1, 3],
    "true or false": [],
}
INSIDE: dict[str, list[Any]] = {
    "a finite number": [-3.5, 0, 2],
    "a number > 0": [1e-12, 3],
    "a number >= 0": [0, 0.0, 7.5],
    "a number in [0, 1)": [0, 0.0, 1.0 - 1e-12],
    "a number in [0, 1]": [0, 1, 1.0],
    "an integer >= 0": [0, 2**40],
    "an integer >= 1": [1, 25],
    "an integer in [0, 2]": [0, 2],
    "true or false": [True, False],
}
WRONG_TYPE = {
    "number": [True, False, "0.5", None, [1.0]],
    "integer": [True, 1.0, "1", None],
    "bool": [1, 0, "true", "yes", None],
    "choice": [1, True, None, "EXACT"],
}

# per option, another valid value: it must change what the method does
OTHER: dict[str, dict[str, Any]] = {
    "uw": {"init": 1.0},
    "dwa": {"temperature": 0.1},
    "gradnorm": {"alpha": 0.0, "lr": 0.5},
    "rlw": {"distribution": "dirichlet", "seed": 1},
    "famo": {"lr": 0.5, "weight_decay": 5.0},
    "db_mtl": {"beta": 0.0, "beta_sigma": 3.0},
    "imtl": {"mode": "exact", "every": 2, "variant": "g", "lr": 0.5},
    "mgda": {"mode": "fast", "every": 2, "normalize": "l2"},
    "mgda_ub": {"mode": "exact", "every": 2, "normalize": "l2"},
    "pcgrad": {"mode": "exact", "every": 2, "seed": 1},
    "gradvac": {"mode": "exact", "every": 2, "seed": 1, "beta": 1.0},
    "cagrad": {"mode": "exact", "every": 2, "c": 0.9, "rescale": 0},
    "nash_mtl": {"mode": "exact", "every": 2, "normalize_gramian": True},
    "aligned_mtl": {"mode": "exact", "every": 2},
    "upgrad": {"mode": "exact", "every": 2},
    "graddrop": {"leak": 0.5, "seed": 1},
    "sam_task": {"rho": 0.5},
}

TASKS = 3
OPTION_ROWS = [(m, o) for m, options in TABLE.items() for o in options]


def _kind(text: str) -> str:
    if text.startswith("one of"):
        return "choice"
    if text == "true or false":
        return "bool"
    return "integer" if text.startswith("an integer") else "number"


def _message(method: str, option: str, given: Any) -> str:
    what = TABLE[method][option][1]
    return f"balance.options.{option} ({method}): expected {what}, got {given!r}"


def _spec_error(method: str, options: dict[str, Any]) -> str:
    raw = base_spec("t.csv", balance={"method": method, "options": options})
    with pytest.raises(ConfigError) as caught:
        parse_spec(raw)
    return str(caught.value)


def test_the_declaration_is_the_table_and_every_method_has_one():
    assert OPTIONS.names() == BALANCERS.names() == sorted(TABLE)
    for method, options in TABLE.items():
        declared = OPTIONS.get(method)
        assert BALANCERS.get(method).Options is declared, method
        fields = declared.model_fields
        assert {k: (f.default, accepted(f)) for k, f in fields.items()} == options, method
        assert all(f.description and "\n" not in f.description for f in fields.values())
        assert (declared.__doc__ or "").strip(), f"{method} has no one-line summary"


@pytest.mark.parametrize("method", sorted(TABLE))
def test_the_method_runs_with_the_declared_defaults(method):
    defaults = {option: default for option, (default, _) in TABLE[method].items()}
    balancer = BALANCERS.get(method)(TASKS)
    assert balancer.options.model_dump() == defaults
    described = balancer.describe()
    assert {key: described[key] for key in defaults if key in described} == {
        key: value for key, value in defaults.items() if key in described
    }
    explicit = BALANCERS.get(method)(TASKS, **defaults)
    _assert_same(_trajectory(explicit), _trajectory(BALANCERS.get(method)(TASKS)))


@pytest.mark.parametrize(("method", "option"), [(m, o) for m, o in OPTION_ROWS])
def test_every_option_changes_what_the_method_does(method, option):
    other = OTHER[method][option]
    assert other != TABLE[method][option][0]
    default = _trajectory(BALANCERS.get(method)(TASKS))
    changed = _trajectory(BALANCERS.get(method)(TASKS, **{option: other}))
    assert not _same(default, changed), f"{method}: {option}={other!r} changes nothing"


@pytest.mark.parametrize(("method", "option"), OPTION_ROWS)
def test_out_of_range_values_name_the_option_the_range_and_the_value(method, option):
    cls = BALANCERS.get(method)
    for bad in OUTSIDE.get(TABLE[method][option][1], ["unheard-of"]):
        expected = _message(method, option, bad)
        with pytest.raises(ValueError) as caught:
            cls(2, **{option: bad})
        assert str(caught.value) == expected
        assert _spec_error(method, {option: bad}) == f"config: {expected}"
    for good in INSIDE.get(TABLE[method][option][1], []):
        assert getattr(cls(2, **{option: good}).options, option) == good


@pytest.mark.parametrize(("method", "option"), OPTION_ROWS)
def test_values_of_the_wrong_type_are_refused(method, option):
    for bad in WRONG_TYPE[_kind(TABLE[method][option][1])]:
        with pytest.raises(ValueError, match=r"^balance\.options") as caught:
            BALANCERS.get(method)(2, **{option: bad})
        assert str(caught.value) == _message(method, option, bad)
        if bad is not None:  # a YAML null: the same refusal, checked above
            assert _spec_error(method, {option: bad}) == f"config: {_message(method, option, bad)}"


@pytest.mark.parametrize("method", sorted(TABLE))
def test_unknown_options_list_the_allowed_ones_with_a_did_you_mean(method):
    allowed = ", ".join(TABLE[method]) or "none"
    first = next(iter(TABLE[method]), None)
    typo = f"{first}x" if first else "alpha"
    hint = f" (did you mean '{first}'?)" if first else ""
    expected = f"balance.options.{typo} ({method}): unknown key{hint}; allowed: {allowed}"
    with pytest.raises(ValueError) as caught:
        BALANCERS.get(method)(2, **{typo: 1})
    assert str(caught.value) == expected
    assert _spec_error(method, {typo: 1}) == f"config: {expected}"


def test_several_problems_are_one_line():
    message = _spec_error("cagrad", {"c": 2, "every": 0, "colour": "red"})
    assert "\n" not in message
    for fragment in ("options.c (cagrad)", "options.every (cagrad)", "options.colour (cagrad)"):
        assert fragment in message


def test_a_choice_close_to_an_allowed_value_gets_a_did_you_mean():
    with pytest.raises(ValueError, match=r"got 'exat' \(did you mean 'exact'\?\)$"):
        parse_options("upgrad", {"mode": "exat"})


def test_the_spec_resolves_the_options_with_their_defaults():
    spec = parse_spec(base_spec("t.csv", balance={"method": "cagrad", "options": {"c": 0}}))
    assert spec.balance.options == {"c": 0}  # the saved config keeps what the user wrote
    assert spec.balance.resolved_options().model_dump() == {
        "mode": "fast",
        "every": 1,
        "c": 0.0,
        "rescale": 1,
    }


# ---------------------------------------------------------------------------- helpers
def _trajectory(balancer: Balancer, steps: int = 4) -> list[torch.Tensor]:
    """Weights and encoder gradients over a few steps on the toy with T tasks (one SGD step
    on the model and the method's own parameters, and one epoch, after each). In this toy
    the three task gradients conflict pairwise at the first step, so the order of gradient
    surgery matters."""
    model = Toy(TASKS, seed=0)
    record: list[torch.Tensor] = []
    for step in range(steps):
        result = toy_step(balancer, [True] * TASKS, model=model, step=step)
        record += [result.weights.detach().clone(), model.encoder.weight.grad.detach().clone()]
        with torch.no_grad():
            for param in [*model.parameters(), *balancer.parameters()]:
                if param.grad is not None:
                    param -= 0.2 * param.grad
                    param.grad = None
        balancer.end_epoch()
    return record


def _same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def _assert_same(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
