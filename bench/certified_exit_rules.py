"""Every exit rule certified by Learn then Test, chosen on calibration, read on test (issue 23).

    python -m bench.certified_exit_rules [--bundle DIR ...] [--epsilons 0.01 0.02 0.04] [--out bench/results]

For each bundle: the calibration split's exits (the bundle's own cache, which must keep margins for the gate:
bundles recalibrated or built since issue 23 do) and the test split's (computed once from the bundle and kept in
`runs/levers/`, see bench/exit_levers.py). For each epsilon, with BEEM's plain vote and its vote above chance,
every policy's threshold is certified on the calibration split by Learn then Test on disagreement with the final
layer (delta 5%); the build's own rule (paired-bound, 0.5-point budget) is the comparison. On test, per policy:
accuracy and its paired difference to full depth, the layer speed-up, and the realized disagreement against
epsilon + 2 standard errors of the test estimate (sqrt(epsilon (1 - epsilon) / n)): the check the issue asks of
every certified policy. Nothing is chosen on test; the fastest at >= full - 0.5 pt is read there for the table.
Writes certified_exit_rules.json and .md under --out.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from beem.bundle.manifest import CALIBRATION_CACHE_FILE, read_manifest, resolve_bundle_dir
from beem.calibration.exit_cache import ExitCache
from beem.calibration.learn_then_test import RISKS, sample_losses
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies, evaluate_policy
from beem.evaluation import evaluate_policies
from bench.exit_levers import DEFAULT_BUNDLES, REPO_ROOT, test_cache
from bench.result_files import write_results

POLICIES = ("gate", "max-prob", "entropy", "beem-a", "beem-c", "patience", "static")
LOSS_ALLOWED_POINTS = 0.5  # the "at >= full depth - 0.5 pt"


def risk_bound(epsilon: float, num_samples: int) -> float:
    """epsilon + 2 standard errors of a rate-epsilon estimate from num_samples: what a test estimate of a risk
    certified at epsilon should stay under (about 97.7% of the time when the true risk is epsilon)."""
    return epsilon + 2.0 * math.sqrt(epsilon * (1.0 - epsilon) / num_samples)


def measure(calibration: ExitCache, test: ExitCache, options: CalibrationOptions, num_labels: int) -> dict[str, Any]:
    calibrated = calibrate_policies(calibration, options, num_labels=num_labels)
    chosen = {name: entry.policy for name, entry in calibrated.items()}
    result = evaluate_policies(test, chosen)
    bound = risk_bound(options.epsilon, test.num_samples)
    policies: dict[str, Any] = {}
    for name, entry in result["policies"].items():
        paired = entry["paired_vs_full"]
        search = calibrated[name].search
        certificate = None if search is None else search.certification
        exit_layers = evaluate_policy(chosen[name], test).exit_layers  # (N,) 1-based
        realized = {risk: float(sample_losses(test, exit_layers, risk).mean()) for risk in RISKS}
        policies[name] = {
            "accuracy": entry["accuracy"],
            "layer_speedup": entry["layer_speedup"],
            "difference_points": paired["accuracy_difference"] * 100,
            "ci_points": [paired["ci_low"] * 100, paired["ci_high"] * 100],
            "test_risk": realized,  # both risks on test, whichever was certified
            "certified": bool(certificate is not None and certificate.certified),
            "calibration_risk": None if certificate is None else certificate.observed_risk,
            "within_bound": None if certificate is None else bool(realized[options.risk] <= bound),
            "params": entry["params"],
        }
    within = [n for n, p in policies.items() if p["difference_points"] >= -LOSS_ALLOWED_POINTS]
    return {
        "options": {
            "selection_rule": options.selection_rule,
            "risk": options.risk,
            "epsilon": options.epsilon,
            "delta": options.delta,
            "vote_above_chance": options.vote_above_chance,
        },
        "full_accuracy": result["policies"]["full"]["accuracy"],
        "oracle_layer_speedup": result["oracle_layer_speedup"],
        "risk_bound": bound if options.selection_rule == "ltt" else None,
        "fastest_within_half_a_point": max(within, key=lambda n: policies[n]["layer_speedup"]) if within else None,
        "policies": policies,
    }


def bundle_rules(bundle_dir: Path, epsilons: tuple[float, ...], risks: tuple[str, ...]) -> dict[str, Any]:
    manifest = read_manifest(bundle_dir)
    calibration = ExitCache.load(bundle_dir / CALIBRATION_CACHE_FILE)
    if calibration.margins is None:
        raise SystemExit(f"{bundle_dir}'s calibration exits keep no margins (built before issue 23): run "
                         f"`beem recalibrate --bundle {bundle_dir}` first")  # fmt: skip
    test = test_cache(bundle_dir, manifest, with_margins=True)
    num_labels = len(manifest.labels)
    built = CalibrationOptions(selection_rule="paired-bound")
    runs: dict[str, Any] = {"paired-bound (0.5 pt budget)": measure(calibration, test, built, num_labels)}
    for risk in risks:
        for epsilon in epsilons:
            for vote in (False, True):
                options = CalibrationOptions(selection_rule="ltt", epsilon=epsilon, vote_above_chance=vote, risk=risk)
                label = f"ltt {risk} eps={epsilon:g}" + (" vote above chance" if vote else "")
                runs[label] = measure(calibration, test, options, num_labels)
    return {"bundle": manifest.model_id, "labels": num_labels, "default_policy": manifest.default_policy,
            "calibration_samples": calibration.num_samples, "test_samples": test.num_samples,
            "runs": runs}  # fmt: skip


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Exit rules certified by Learn then Test (`python -m bench.certified_exit_rules`)", "",
             "Thresholds chosen on calibration (delta 5%), read on test. `test risk`: the rule's certified risk "
             "(disagreement with full depth, or excess error: wrong where full depth is right) realized on test; "
             "`bound`: epsilon + 2 standard errors of the test estimate; `ok`: the realized risk is under it. "
             "BEEM's vote above chance changes only beem-a and beem-c. The gate has no other rule: it is certified by "
             "Learn then Test in every row (at 1% disagreement in the paired-bound rows), on the half of the "
             "calibration split it was not fitted on.",
             ""]  # fmt: skip
    for bundle in results:
        lines += [f"## {bundle['bundle']} ({bundle['labels']} labels; {bundle['calibration_samples']} calibration, "
                  f"{bundle['test_samples']} test samples; default policy {bundle['default_policy']})", "",
                  "| rule | policy | layer speed-up | test accuracy % | vs full, points [95% CI] | test risk % "
                  "| bound % | ok |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, run in bundle["runs"].items():
            bound, risk = run["risk_bound"], run["options"]["risk"]
            for name in POLICIES:
                p = run["policies"].get(name)
                if p is None:
                    continue
                low, high = p["ci_points"]
                ok = "" if p["within_bound"] is None else ("yes" if p["within_bound"] else "**no**")
                lines.append(
                    f"| {label} | {name} | {p['layer_speedup']:.2f}x | {p['accuracy'] * 100:.2f} | "
                    f"{p['difference_points']:+.2f} [{low:+.2f}, {high:+.2f}] | {p['test_risk'][risk] * 100:.2f} | "
                    f"{'' if bound is None else f'{bound * 100:.2f}'} | {ok} |"
                )
            fastest, oracle = run["fastest_within_half_a_point"], run["oracle_layer_speedup"]
            full = run["full_accuracy"]
            lines.append(f"| {label} | fastest at >= full - 0.5 pt: **{fastest}** | oracle {oracle:.2f}x | "
                         f"full {full * 100:.2f} | | | | |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", help="bundle (a version, or a model for its latest); repeatable")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.02, 0.04])
    parser.add_argument("--risks", nargs="+", default=["disagreement"], choices=RISKS)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = parser.parse_args()
    bundles = [resolve_bundle_dir(REPO_ROOT / b) for b in (args.bundle or DEFAULT_BUNDLES)]
    results = [bundle_rules(b, tuple(args.epsilons), tuple(args.risks)) for b in bundles]
    write_results(Path(args.out), "certified_exit_rules", {"bundles": results}, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
