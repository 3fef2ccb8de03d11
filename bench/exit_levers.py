"""Exit-quality levers measured one at a time on cached exits, against each bundle's own build (issue 12).

    python -m bench.exit_levers [--bundle DIR ...] [--out bench/results]

For each bundle: the calibration split's exits (in the bundle) and the test split's (the build's run directory,
`runs/<preset>/exits_test.safetensors`, or computed from the bundle once and kept in `runs/levers/`). Each lever
changes one thing, thresholds are chosen on the calibration split with it, and the test split reports:
- `build`: the bundle as built (paired-bound rule, 0.5-point budget);
- `rule=per-exit`, `rule=paired`: the other threshold-selection rules;
- `vote=above-chance`: BEEM counts each exit's confidence above chance, (C - 1/K) / (1 - 1/K), in place of C
  (DESIGN 3.1's variant; for max-prob and entropy it changes nothing, the transform being monotone);
- `budget=0.25`, `budget=1.0`: a tighter and a looser accuracy budget.
Per policy: test accuracy and its paired difference to full depth with the 95% bootstrap interval, the layer
speed-up, and which policy is fastest at accuracy matched to full depth (the paired interval reaching 0 or above).
Levers that need retraining (longer training, head design, distillation, per-exit learning rates, a larger
calibration split) are in bench/training_levers.py. Writes exit_levers.json and .md under --out.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import Manifest, read_manifest, resolve_bundle_dir
from beem.calibration.exit_cache import ExitCache, compute_exit_cache
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies
from beem.data.examples import read_dataset
from beem.data.splits import split_dataset
from beem.evaluation import evaluate_policies
from bench.result_files import write_results

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = ("model_store/minilm-rt-sentiment", "model_store/minilm-rt-fine-sentiment")
CALIBRATION_FILE = "calibration_exits.safetensors"


def above_chance(cache: ExitCache, num_labels: int) -> ExitCache:
    """Every exit's confidence as its share above chance: C = 1/K -> 0, C = 1 -> 1."""
    chance = 1.0 / num_labels
    return replace(cache, confidences=(cache.confidences - chance) / (1.0 - chance))


def test_cache(bundle_dir: Path, manifest: Manifest, with_margins: bool = False) -> ExitCache:
    """The test split's exits: the build's own cache when its run directory is here, else computed once (a cache
    kept from before exits had margins is computed again when `with_margins`: the gate reads them)."""
    built = REPO_ROOT / "runs" / str(manifest.training["preset"]) / "exits_test.safetensors"
    kept = REPO_ROOT / "runs" / "levers" / f"{manifest.name}-{manifest.version}-test.safetensors"
    for path in (built, kept):
        if path.is_file():
            cache = ExitCache.load(path)
            if cache.margins is not None or not with_margins:
                return cache
    provenance = manifest.data
    data_file = REPO_ROOT / provenance.get("repo_path", "data/rotten_tomatoes/snippets.jsonl")
    splits = split_dataset(read_dataset(data_file, list(manifest.labels)), tuple(provenance["split_fractions"]),
                           int(provenance["split_seed"]))  # fmt: skip
    bundle = load_bundle(bundle_dir)
    cache = compute_exit_cache(bundle.model, bundle.tokenizer, splits.test, bundle.max_length)
    kept.parent.mkdir(parents=True, exist_ok=True)
    cache.save(kept)
    return cache


def measure(calibration: ExitCache, test: ExitCache, options: CalibrationOptions) -> dict[str, Any]:
    calibrated = calibrate_policies(calibration, options)
    result = evaluate_policies(test, {name: entry.policy for name, entry in calibrated.items()})
    policies = {}
    for name, entry in result["policies"].items():
        paired = entry["paired_vs_full"]
        policies[name] = {
            "accuracy": entry["accuracy"],
            "layer_speedup": entry["layer_speedup"],
            "difference_points": paired["accuracy_difference"] * 100,
            "ci_points": [paired["ci_low"] * 100, paired["ci_high"] * 100],
            "params": entry["params"],
        }
    matched = [name for name, p in policies.items() if p["ci_points"][1] >= 0.0]
    return {
        "full_accuracy": result["policies"]["full"]["accuracy"],
        "oracle_layer_speedup": result["oracle_layer_speedup"],
        "fastest_at_matched_accuracy": max(matched, key=lambda n: policies[n]["layer_speedup"]) if matched else None,
        "policies": policies,
    }


def bundle_levers(bundle_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(bundle_dir)
    calibration = ExitCache.load(bundle_dir / CALIBRATION_FILE)
    test = test_cache(bundle_dir, manifest)
    build = CalibrationOptions(**manifest.calibration)
    num_labels = len(manifest.labels)
    levers = {
        "build": measure(calibration, test, build),
        "rule=per-exit": measure(calibration, test, replace(build, selection_rule="per-exit")),
        "rule=paired": measure(calibration, test, replace(build, selection_rule="paired")),
        "vote=above-chance": measure(above_chance(calibration, num_labels), above_chance(test, num_labels), build),
        "budget=0.25": measure(calibration, test, replace(build, accuracy_budget=0.0025)),
        "budget=1.0": measure(calibration, test, replace(build, accuracy_budget=0.01)),
    }
    return {"bundle": manifest.model_id, "labels": num_labels,
            "test_samples": test.num_samples, "levers": levers}  # fmt: skip


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Exit-quality levers on cached exits (`python -m bench.exit_levers`)", ""]
    for bundle in results:
        lines += [f"## {bundle['bundle']} ({bundle['labels']} labels, {bundle['test_samples']} test samples)", "",
                  "| lever | policy | layer speed-up | test accuracy % | vs full, points [95% CI] |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for lever, outcome in bundle["levers"].items():
            for name in ("beem-a", "beem-c", "max-prob", "entropy", "patience", "static"):
                p = outcome["policies"].get(name)
                if p is None:
                    continue
                low, high = p["ci_points"]
                lines.append(f"| {lever} | {name} | {p['layer_speedup']:.2f}x | {p['accuracy'] * 100:.2f} | "
                             f"{p['difference_points']:+.2f} [{low:+.2f}, {high:+.2f}] |")  # fmt: skip
            lines.append(f"| {lever} | fastest at matched accuracy: **{outcome['fastest_at_matched_accuracy']}** | "
                         f"oracle {outcome['oracle_layer_speedup']:.2f}x | full {outcome['full_accuracy'] * 100:.2f}"
                         " | |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", action="append", help="a bundle directory (repeat); default: both committed")
    arguments.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = arguments.parse_args()
    bundles = [resolve_bundle_dir(REPO_ROOT / b if not Path(b).is_absolute() else Path(b))
               for b in (args.bundle or DEFAULT_BUNDLES)]  # fmt: skip
    results = [bundle_levers(bundle) for bundle in bundles]
    write_results(Path(args.out), "exit_levers", results, markdown(results))


if __name__ == "__main__":
    main()
