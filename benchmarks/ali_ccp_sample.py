"""The Ali-CCP sample (click -> purchase): networks beside a gradient-boosted model per task.

torch-rechub's tiny preprocessed Ali-CCP sample in ``../shared/datasets/rechub_samples``
(100 training, 50 validation and 50 test rows; 7, 3 and 2 clicks; one purchase in each
split), read by ``examples/ali_ccp_esmm.yaml``'s data section and training settings (5
epochs, batch 32, Adam lr 0.003, embedding 4, early stopping on the validation loss). The
architectures: ``esmm`` (the example: the purchase tower predicts the joint click-and-buy
event), ``mmoe`` (4 experts x [32]), ``shared_bottom`` ([32]) and ``single`` (one [32]
network per task); then ``polytask baseline``'s fit (:func:`polytask.baselines.gbdt.
fit_tasks`, the same split, preprocessing and metrics). Each for every seed (``train.seed``);
test metrics per run, and each task's best and mean test AUC per method over the seeds.

With one purchasing row per split, the purchase AUC is a statement about one row; this is a
check that every method runs on the funnel data and what each does with it, not evidence
about Ali-CCP.

Run: ``python benchmarks/ali_ccp_sample.py --seeds 3 --json docs/results/ali_ccp_sample.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARCHS: dict[str, dict[str, Any]] = {
    "esmm": {"options": {"chain": [0, 1]}},
    "mmoe": {"num_experts": 4, "options": {}},
    "shared_bottom": {"options": {}},
    "single": {"options": {}},
}


def spec_for(data: Path | None, arch: str | None, seed: int) -> Any:
    """The example's spec with another architecture and seed (``arch`` None: as it is)."""
    from polytask.config import load_spec, with_overrides

    spec = load_spec(ROOT / "examples" / "ali_ccp_esmm.yaml")
    if data is not None:
        files = {
            name: data / Path(str(getattr(spec.data, name))).name
            for name in ("train", "valid", "test")
        }
        spec = with_overrides(spec, data=files)
    overrides: dict[str, dict[str, Any]] = {"train": {"seed": seed}}
    if arch is not None:
        overrides["model"] = {"arch": arch, **ARCHS[arch]}
    return with_overrides(spec, **overrides)


def network_run(data: Path | None, arch: str, seed: int) -> dict[str, Any]:
    from polytask.artifacts import run_dir as rd
    from polytask.train.trainer import fit

    with tempfile.TemporaryDirectory() as folder:
        run = fit(spec_for(data, arch, seed), Path(folder) / "run", progress=False)
        return rd.load_json(run, rd.FINAL_METRICS)["test"]


def gbdt_run(data: Path | None, seed: int, library: str) -> dict[str, Any]:
    from polytask.baselines.gbdt import fit_tasks

    final, _ = fit_tasks(spec_for(data, None, seed), library)
    return final["test"]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and task: the best and mean test AUC over the seeds."""
    summary: dict[str, Any] = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]
        summary[method] = {
            task: {
                "best": max(run["test"][task]["auc"] for run in mine),
                "mean": statistics.mean(run["test"][task]["auc"] for run in mine),
            }
            for task in mine[0]["test"]
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", type=Path, help="the rechub_samples folder")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine_info

    from polytask.baselines.gbdt import resolve_library

    machine = machine_info("scikit-learn", "lightgbm")
    library = resolve_library("auto")
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        for arch in ARCHS:
            runs.append({"method": arch, "seed": seed, "test": network_run(args.data, arch, seed)})
        runs.append({"method": "gbdt", "seed": seed, "test": gbdt_run(args.data, seed, library)})
        for run in runs[-len(ARCHS) - 1 :]:
            aucs = {task: round(metrics["auc"], 4) for task, metrics in run["test"].items()}
            print(f"seed {seed} {run['method']:14s} {aucs}", flush=True)
    if args.json:
        payload = {
            "command": "python benchmarks/ali_ccp_sample.py " + " ".join(sys.argv[1:]),
            "machine": machine,
            "library": library,
            "rows": {"train": 100, "valid": 50, "test": 50},
            "seeds_run": args.seeds,
            "runs": runs,
            "test_auc": summarise(runs),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
