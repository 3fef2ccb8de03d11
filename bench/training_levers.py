"""Exit-quality levers that need retraining, measured one at a time on the five-class task (issue 12).

    python -m bench.training_levers [--build] [--out bench/results]

Each lever is one `beem build --preset fine` with one change (LEVERS below), in its own run directory
`runs/lever-<name>`; the baseline is the committed bundle's own run (`runs/fine`), and the single-exit reference
(`runs/fine-single-exit`, `beem build --preset fine-single-exit`) is the best final layer training gave. `--build`
runs the builds that have no exit caches yet, one after another (about 12 minutes each on 2 cores), into a store
under runs/ (these bundles are not for committing); without it, levers whose run is missing are listed as such.

For each lever, from the run's cached exits: every exit's test accuracy; thresholds chosen on the run's own
calibration split (the build's rule and budget); per policy the test accuracy, layer speed-up and paired difference
to the run's own full depth and to the single-exit reference, each with its 95% bootstrap interval. Writes
training_levers.json and .md under --out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from beem.calibration.exit_cache import ExitCache
from beem.calibration.paired_comparison import compare_paired
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies, evaluate_policy
from bench.result_files import write_results

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = REPO_ROOT / "runs"
REFERENCE_RUN = "fine-single-exit"
POLICY_ORDER = ("beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full")

# lever name -> (run directory under runs/, the `beem build --preset fine` flags that make it, what it changes)
LEVERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "baseline": ("fine", (), "the committed bundle: 3 epochs, pooler heads, distillation weight 1 at T=2"),
    "epochs=5": ("fine-5ep", ("--epochs", "5"), "longer training"),
    "head=linear": ("lever-head-linear", ("--head-design", "linear"), "linear exit heads (no pooler MLP)"),
    "distillation=0": ("lever-no-distillation", ("--distillation-weight", "0"), "no distillation"),
    "temperature=4": ("lever-temperature-4", ("--distillation-temperature", "4"), "distillation at T=4"),
    "head-lr=5x": ("lever-head-lr-5", ("--head-learning-rate-scale", "5"), "exit heads at 5x the backbone's rate"),
    "calibration=35%": (
        "lever-calibration-35",
        ("--calibration-share", "0.35"),
        "calibration 35% of the non-test rows (was 17.6%); test untouched",
    ),
}


def _caches(run_dir: Path) -> tuple[ExitCache, ExitCache] | None:
    calibration, test = run_dir / "exits_calibration.safetensors", run_dir / "exits_test.safetensors"
    if not (calibration.is_file() and test.is_file()):
        return None
    return ExitCache.load(calibration), ExitCache.load(test)


def _build(run: str, flags: tuple[str, ...]) -> None:
    command = [sys.executable, "-m", "beem.cli", "build", "--preset", "fine", "--run-dir", str(RUNS / run),
               "--store", str(RUNS / "lever-store"), "--name", f"lever-{run}", *flags]  # fmt: skip
    log = RUNS / f"{run}.log"
    print("building:", " ".join(command[2:]), f"(log {log})", flush=True)
    with log.open("w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def _paired_points(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    paired = compare_paired(candidate, reference)
    return {"points": paired.accuracy_difference * 100, "ci_low": paired.ci_low * 100,
            "ci_high": paired.ci_high * 100, "p": paired.mcnemar_p_value}  # fmt: skip


def measure_lever(calibration: ExitCache, test: ExitCache, reference: ExitCache) -> dict[str, Any]:
    if not np.array_equal(test.targets, reference.targets):
        raise ValueError("the lever's test split is not the reference's: levers must leave test untouched")
    correct = test.correct()  # (N, L)
    reference_right = reference.correct()[:, -1]  # (N,)
    policies: dict[str, dict[str, Any]] = {}
    for name, entry in calibrate_policies(calibration, CalibrationOptions()).items():
        outcome = evaluate_policy(entry.policy, test)
        right = correct[np.arange(test.num_samples), outcome.exit_layers - 1]  # (N,)
        policies[name] = {
            "accuracy": outcome.accuracy,
            "layer_speedup": test.num_layers / outcome.mean_exit_layer,
            "vs_own_full": _paired_points(right, correct[:, -1]),
            "vs_single_exit": _paired_points(right, reference_right),
        }
    matched = [n for n, p in policies.items() if p["vs_own_full"]["ci_high"] >= 0.0]
    return {
        "calibration_samples": calibration.num_samples,
        "exit_accuracies": (test.exit_accuracies() * 100).round(2).tolist(),
        "fastest_at_matched_accuracy": max(matched, key=lambda n: policies[n]["layer_speedup"]),
        "policies": policies,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Retraining levers on the five-class task (`python -m bench.training_levers`)", "",
             f"Single-exit reference (`{REFERENCE_RUN}`) final layer: {results['reference_accuracy']:.2f}% on "
             f"test. Each row: thresholds from the run's own calibration split (paired-bound, 0.5-point budget).",
             "", "| lever | exit accuracies, test % | policy | speed-up | accuracy % | vs own full, points [95% CI] "
             "| vs single-exit, points [95% CI] |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for lever, outcome in results["levers"].items():
        if outcome is None:
            lines.append(f"| {lever} | not built | | | | | |")
            continue
        exits = " ".join(f"{a:.1f}" for a in outcome["exit_accuracies"])
        for index, name in enumerate(POLICY_ORDER):
            p = outcome["policies"][name]
            own, single = p["vs_own_full"], p["vs_single_exit"]
            lines.append(
                f"| {lever if index == 0 else ''} | {exits if index == 0 else ''} | {name} | "
                f"{p['layer_speedup']:.2f}x | {p['accuracy'] * 100:.2f} | {own['points']:+.2f} "
                f"[{own['ci_low']:+.2f}, {own['ci_high']:+.2f}] | {single['points']:+.2f} "
                f"[{single['ci_low']:+.2f}, {single['ci_high']:+.2f}] |"
            )
        lines.append(f"| | | fastest at matched accuracy | **{outcome['fastest_at_matched_accuracy']}** | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--build", action="store_true", help="build the levers whose runs are missing")
    arguments.add_argument("--only", action="append", help="a lever name (repeat); default: every lever")
    arguments.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = arguments.parse_args()
    chosen = {name: LEVERS[name] for name in (args.only or LEVERS)}
    reference = _caches(RUNS / REFERENCE_RUN)
    if reference is None:
        raise SystemExit(f"no single-exit reference in runs/{REFERENCE_RUN}: beem build --preset fine-single-exit")
    results: dict[str, Any] = {"reference_accuracy": float(reference[1].correct()[:, -1].mean() * 100),
                               "changes": {name: lever[2] for name, lever in chosen.items()}, "levers": {}}  # fmt: skip
    for name, (run, flags, _) in chosen.items():
        if _caches(RUNS / run) is None and args.build:
            _build(run, flags)
        caches = _caches(RUNS / run)
        results["levers"][name] = None if caches is None else measure_lever(*caches, reference[1])
    write_results(Path(args.out), "training_levers", results, markdown(results))


if __name__ == "__main__":
    main()
