"""An adapter run at the command line and behind the server: train, predict, serve, fold,
merge; each refusal one line with exit code 2."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import yaml

import polytask
from polytask.config import parse_spec
from polytask.errors import ConfigError
from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory):
    """The session's MMoE run as the backbone of a LoRA-MoE run (per-task router)."""
    folder = tmp_path_factory.mktemp("adapter_cli")
    spec = copy.deepcopy(trained_run["spec"])
    spec["model"] = {
        "adapters": {
            "method": "lora_moe",
            "backbone": str(trained_run["run"]),
            "options": {"experts": 3},
        }
    }
    spec["train"]["epochs"] = 2
    config = folder / "adapters.yaml"
    config.write_text(yaml.safe_dump(spec))
    result = invoke("train", config, "--out", folder / "run")
    assert result.exit_code == 0, result.output
    return {"run": folder / "run", "folder": folder, "frames": trained_run["frames"]}


def test_predict_fold_and_merge_at_the_command_line(runs):
    run, folder = runs["run"], runs["folder"]
    rows = runs["frames"]["test"].head(15)
    rows.to_csv(folder / "rows.csv", index=False)
    result = invoke("predict", run, folder / "rows.csv", "-o", folder / "out.csv")
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(folder / "out.csv")
    expected = polytask.load(run).predict(rows)
    assert predicted["click"].to_numpy() == pytest.approx(expected["click"].to_numpy(), abs=1e-6)
    result = invoke("fold-adapters", run, "--task", "spend", "-o", folder / "spend")
    assert result.exit_code == 0, result.output
    folded = polytask.load(folder / "spend").predict(rows)
    assert folded["spend"].to_numpy() == pytest.approx(expected["spend"].to_numpy(), abs=1e-4)
    result = invoke("slim", folder / "spend", "--tasks", "spend", "-o", folder / "slim")
    assert result.exit_code == 0, result.output
    result = invoke("merge-adapters", run, "--method", "task_arithmetic", "-o", folder / "merged")
    assert result.exit_code == 0, result.output
    assert polytask.load(folder / "merged").task_names == ["click", "segment", "spend", "tags"]


def test_refusals_are_one_line(runs, trained_run):
    run, folder = runs["run"], runs["folder"]
    assert_user_error(invoke("slim", run, "--tasks", "click", "-o", folder / "x"), "fold one task")
    assert_user_error(
        invoke("fold-adapters", run, "--task", "clik", "-o", folder / "x"), "did you mean 'click'"
    )
    assert_user_error(
        invoke("fold-adapters", trained_run["run"], "--task", "click", "-o", folder / "x"),
        "has no adapters",
    )
    assert_user_error(
        invoke("merge-adapters", run, "--method", "fisher", "-o", folder / "x"), "reads rows"
    )
    assert not (folder / "x").exists()


def test_archs_lists_the_adapter_methods():
    result = invoke("archs")
    assert result.exit_code == 0
    for name in ("lora", "lora_moe", "mtl_lora", "hyper", "bottleneck"):
        assert name in result.output


@pytest.mark.parametrize(
    ("adapters", "fragment"),
    [
        ({"method": "lorra"}, "unknown adapter method 'lorra' (did you mean 'lora'?)"),
        ({"method": "lora", "options": {"rank": 0}}, "model.adapters: options.rank"),
        ({"method": "lora", "options": {"rnk": 4}}, "options.rnk: unknown key"),
        ({"method": "lora", "heads": "maybe"}, "model.adapters.heads"),
    ],
)
def test_bad_adapter_specs_name_the_field(adapters, fragment):
    with pytest.raises(ConfigError) as error:
        parse_spec(base_spec("unused.csv", model={"adapters": adapters}))
    assert fragment in str(error.value)


def test_the_server_answers_an_adapter_run_as_its_predictor(runs):
    from fastapi.testclient import TestClient

    from polytask.serve import ServeConfig, create_app

    predictor = polytask.load(runs["run"])
    frame = runs["frames"]["test"].head(8)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    with TestClient(create_app(predictor, ServeConfig(max_rows=50))) as client:
        full = client.post("/v1/predict", json={"rows": rows})
        part = client.post("/v1/predict", json={"rows": rows, "tasks": ["spend"]})
    assert full.status_code == 200 and part.status_code == 200, full.text
    expected = predictor.predict(frame)
    for answer, value in zip(full.json()["predictions"], expected["click"], strict=True):
        assert answer["click"] == pytest.approx(value, abs=1e-6)
    for answer, whole in zip(part.json()["predictions"], full.json()["predictions"], strict=True):
        assert answer["spend"] == pytest.approx(whole["spend"], abs=1e-4)


class Pretrained(torch.nn.Module):
    """A user's pretrained module: two linear layers over the numeric inputs (fixed seed)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.first = torch.nn.Linear(6, 8)
        self.second = torch.nn.Linear(8, 5)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        self.out_dim = 5

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        return torch.relu(self.second(torch.relu(self.first(numeric))))


def test_a_users_module_is_the_frozen_backbone(tmp_path):
    from tests.conftest import make_table

    path = tmp_path / "table.csv"
    make_table(n=120).to_csv(path, index=False)
    adapters = {"method": "lora", "targets": ["encoders.0.*"], "heads": "train"}
    spec = base_spec(
        path, model={"arch": "shared_bottom", "adapters": adapters}, train={"epochs": 2}
    )
    trained = polytask.train(spec, out=tmp_path / "run", encoder_factory=Pretrained)
    model = trained.model
    assert [site.name for site in model.sites] == ["encoders.0.first", "encoders.0.second"]
    fresh = Pretrained()
    for name, value in fresh.state_dict().items():
        assert torch.equal(model.encoders[0].state_dict()[name], value)  # fixed
    assert any(
        torch.count_nonzero(p) for n, p in model.adapters.named_parameters() if n.endswith("up")
    )
    fixed = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["freeze"]
    assert "encoders.0.first.weight" in fixed and "arch.levels.0.experts.weights.0" in fixed
    loaded = polytask.load(tmp_path / "run", encoder_factory=Pretrained)
    rows = make_table(n=10, seed=3)
    pd.testing.assert_frame_equal(loaded.predict(rows), trained.predict(rows))


def test_a_relative_backbone_resolves_against_the_spec_file(tmp_path):
    from polytask.config import load_spec

    folder = tmp_path / "specs"
    folder.mkdir()
    spec = base_spec("rows.csv", model={"adapters": {"method": "lora", "backbone": "../runs/base"}})
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(folder / "spec.yaml")
    assert loaded.model.adapters.backbone == (tmp_path / "runs" / "base").resolve()
