"""The Census-Income group-1 study (examples/census_sweep.yaml): every combination of 6 sharing
architectures and 4 balancing methods, two objectives (validation AUC of income and of never
married), through ``polytask sweep``; then its report and the report's screenshot.

The sweep file's base (examples/census_income.yaml) is inlined with the data folder and the
epoch budget replaced, so the study runs wherever the data is:

    python benchmarks/census_study.py --data ../shared/datasets/census_income_kdd --epochs 10 \\
        --study /tmp/census_study --json docs/results/census_study.json \\
        --report /tmp/census_study.html --screenshot docs/census_study_report.png \\
        --screenshot-height 4200

The study folder is resumable: run the same command again after a kill (or, once finished,
to rewrite the JSON, the report and the screenshot without training again).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import yaml
from _machine import machine_info

from polytask.artifacts import run_dir as rd
from polytask.report import write_report
from polytask.sweep import run_sweep
from polytask.sweep.spec import parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def sweep_raw(data: Path, epochs: int, parallel: int) -> dict:
    raw = yaml.safe_load((ROOT / "examples" / "census_sweep.yaml").read_text())
    base = yaml.safe_load((ROOT / "examples" / raw["base"]).read_text())
    base["data"]["dataset_options"]["path"] = str(data.resolve())
    base["train"]["epochs"] = epochs
    raw["base"] = base
    raw["parallel"] = parallel
    return raw


def study_wall(summary: dict) -> float | None:
    """From the first trial's start to the last one's end (across resumed invocations)."""
    starts = [t["started"] for t in summary["trials"] if t.get("started")]
    ends = [t["finished"] for t in summary["trials"] if t.get("finished")]
    if not starts or not ends:
        return None
    first, last = datetime.fromisoformat(min(starts)), datetime.fromisoformat(max(ends))
    return (last - first).total_seconds()


def test_metrics(study: Path, summary: dict) -> dict[int, dict]:
    """Each completed trial's test AUC (the objectives are validation AUC)."""
    out = {}
    for trial in summary["trials"]:
        if trial["state"] == "COMPLETE":
            final = rd.load_json(study / trial["run"], rd.FINAL_METRICS)["test"]
            run_summary = rd.load_json(study / trial["run"], rd.SUMMARY)
            out[trial["number"]] = {
                "test_auc": {task: final[task]["auc"] for task in final},
                "best_epoch": run_summary["best_epoch"],
                "epochs_run": run_summary["epochs_run"],
                "train_seconds": run_summary["train_seconds"],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/datasets/census_income_kdd"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--screenshot-height", type=int, help="the top of the page only")
    args = parser.parse_args()
    info = machine_info("optuna", "mlflow-skinny", "plotly")
    started = time.perf_counter()
    sweep = parse_sweep(sweep_raw(args.data, args.epochs, args.parallel), ROOT / "examples")
    summary = run_sweep(sweep, args.study)
    wall = time.perf_counter() - started
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "command": "benchmarks/census_study.py",
            "epochs": args.epochs,
            "parallel": args.parallel,
            "machine": info,
            "wall_seconds_this_invocation": wall,
            "study_wall_seconds": study_wall(summary),
            "study": summary,
            "test": test_metrics(args.study, summary),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.report:
        write_report(
            [args.study], args.report, title="Census-Income group 1: 6 archs x 4 balancing"
        )
        if args.screenshot:
            from polytask.report.browser import screenshot

            log = screenshot(args.report, args.screenshot, height=args.screenshot_height)
            print("page problems:", log.problems or "none")


if __name__ == "__main__":
    main()
