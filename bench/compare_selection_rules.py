"""Compare threshold-selection rules on the exit caches a `beem build` run leaves in its run directory.

    python -m bench.compare_selection_rules runs/default [runs/paper ...]

For each run and rule, every policy's threshold is chosen on the calibration cache and then applied to the test
cache (never used to choose). Prints calibration and test accuracy, layer speed-up, and the paired difference to
full depth on test with its 95% bootstrap interval.
"""

from __future__ import annotations

import sys
from pathlib import Path

from beem.calibration.exit_cache import ExitCache
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies, evaluate_policy
from beem.calibration.threshold_search import SELECTION_RULES
from beem.evaluation import evaluate_policies
from beem.policies.oracle import oracle_exit_layers


def compare(run_dir: Path) -> None:
    calibration = ExitCache.load(run_dir / "exits_calibration.safetensors")
    test = ExitCache.load(run_dir / "exits_test.safetensors")
    num_layers = test.num_layers
    print(f"\n== {run_dir} ==")
    print("exit accuracies, calibration %:", " ".join(f"{a * 100:.1f}" for a in calibration.exit_accuracies()))
    print("exit accuracies, test %:       ", " ".join(f"{a * 100:.1f}" for a in test.exit_accuracies()))
    print(f"oracle layer speed-up on test: {num_layers / oracle_exit_layers(test.exit_labels).mean():.2f}x")
    for rule in SELECTION_RULES:
        calibrated = calibrate_policies(calibration, CalibrationOptions(selection_rule=rule))
        on_test = evaluate_policies(test, {name: entry.policy for name, entry in calibrated.items()})
        print(f"-- rule {rule}")
        print(f"{'policy':9s} {'cal acc':>8s} {'cal x':>6s} {'test acc':>8s} {'test x':>6s} {'vs full (95% CI)':>24s}")
        for name, entry in calibrated.items():
            on_calibration = evaluate_policy(entry.policy, calibration)
            result = on_test["policies"][name]
            paired = result["paired_vs_full"]
            print(
                f"{name:9s} {on_calibration.accuracy * 100:8.2f} {num_layers / on_calibration.mean_exit_layer:6.2f} "
                f"{result['accuracy'] * 100:8.2f} {result['layer_speedup']:6.2f} "
                f"{paired['accuracy_difference'] * 100:+6.2f} [{paired['ci_low'] * 100:+.2f}, "
                f"{paired['ci_high'] * 100:+.2f}]"
            )


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        compare(Path(argument))
