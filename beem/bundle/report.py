"""The bundle's human-readable report: a markdown table and a PNG of accuracy against mean exit layer.

Calibration-split numbers choose the thresholds; test-split numbers (when given) are what the bundle is expected
to do on unseen data. Both appear, labelled, never mixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def _param_text(key: str, value: Any) -> str:
    """One parameter as the table shows it: numbers shortened; the exit gate's weights (a JSON object of some 150
    numbers, in the manifest) as its shape and checksum."""
    if isinstance(value, float):
        return f"{key}={value:.4g}"
    if isinstance(value, dict) and "sha256" in value:
        shape = f"{len(value.get('features', ()))}-{value.get('hidden_units')}-1 MLP"
        return f"{key}={shape}, sha256 {str(value['sha256'])[:12]}"
    return f"{key}={value}"


def _policy_rows(policies: dict[str, Any], num_layers: int) -> list[str]:
    rows = []
    for name, entry in policies.items():
        params = ", ".join(_param_text(key, value) for key, value in entry["params"].items() if key != "weights")
        rows.append(
            f"| {name} | {entry['accuracy'] * 100:.2f} | {entry['mean_exit_layer']:.3f} | "
            f"{num_layers / entry['mean_exit_layer']:.2f}x | {params or '-'} |"
        )
    return rows


def _table(title: str, result: dict[str, Any]) -> list[str]:
    num_layers = int(result["num_layers"])
    lines = [
        f"## {title} ({result['num_samples']} samples)",
        "",
        "| policy | accuracy % | mean exit layer | layer speed-up | parameters |",
        "|---|---|---|---|---|",
        *_policy_rows(result["policies"], num_layers),
        f"| oracle (bound) | - | {result['oracle']['mean_exit_layer']:.3f} | "
        f"{result['oracle']['layer_speedup']:.2f}x | - |",
        "",
        "Exit accuracies %: " + ", ".join(f"{a * 100:.1f}" for a in result["exit_accuracies"]),
        "",
    ]
    return lines


def _theorem_table(calibration: dict[str, Any]) -> list[str]:
    lines = ["## Theorem 3.1 terms (calibration split, at the chosen alpha)", ""]
    for name in ("beem-a", "beem-c"):
        terms = calibration["policies"].get(name, {}).get("theorem_3_1")
        if not terms:
            continue
        lines += [f"{name}:", "", "| exit | q_i | a_i | b_i | bound | q_i < bound |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {t['layer']} | {t['q']:.3f} | {t['a']:.3f} | {t['b']:.3f} | {t['bound']:.3f} | {t['holds']} |"
            for t in terms
        ]
        lines.append("")
    return lines


def _guarantee_lines(calibration: dict[str, Any]) -> list[str]:
    """Each policy's Learn-then-Test guarantee, in its own words (only policies calibrated by the "ltt" rule)."""
    guarantees = {name: e["guarantee"] for name, e in calibration["policies"].items() if e.get("guarantee")}
    if not guarantees:
        return []
    lines = ["## Certified risk (Learn then Test, calibration split)", ""]
    for name, guarantee in guarantees.items():
        p_value = guarantee["p_value"]
        evidence = (
            f"{guarantee['losses']} of {guarantee['n']} samples with a loss, p = {p_value:.3g}"
            if p_value is not None
            else "nothing certified"
        )
        lines.append(f"- {name}: {guarantee['statement']} ({evidence})")
    return [*lines, ""]


def write_report(
    directory: Path,
    title: str,
    calibration: dict[str, Any],
    test_result: dict[str, Any] | None,
    markdown_name: str,
    plot_name: str,
) -> None:
    rule = calibration["selection_rule"]
    detail = (
        f"accuracy budget {calibration['accuracy_budget'] * 100:.2f} points vs full depth, paired bound "
        f"z = {calibration['confidence_z']}"
        if rule == "paired-bound"
        else f"{calibration['risk']} at most {calibration['epsilon'] * 100:g}% with probability at least "
        f"{(1 - calibration['delta']) * 100:g}%, fixed-sequence test from no early exit down"
        if rule == "ltt"
        else f"minimum {calibration['min_count']} samples per exit"
    )
    lines = [f"# {title}", "", f"Thresholds chosen on the calibration split by the `{rule}` rule ({detail}).", ""]
    lines += _table("Calibration split", calibration)
    lines += _guarantee_lines(calibration)
    if test_result is not None:
        lines += _table("Test split (never used to choose anything)", test_result)
        paired = {name: e["paired_vs_full"] for name, e in test_result["policies"].items() if "paired_vs_full" in e}
        if paired:
            lines += [
                "Paired comparison with full depth on the test split (95% bootstrap interval, exact McNemar):",
                "",
                "| policy | accuracy difference (points) | 95% interval | McNemar p |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {name} | {p['accuracy_difference'] * 100:+.2f} | "
                f"[{p['ci_low'] * 100:+.2f}, {p['ci_high'] * 100:+.2f}] | {p['mcnemar_p_value']:.3f} |"
                for name, p in paired.items()
            ]
            lines.append("")
    lines += _theorem_table(calibration)
    lines += [f"![accuracy against mean exit layer]({plot_name})", ""]
    (directory / markdown_name).write_text("\n".join(lines))
    _plot(directory / plot_name, title, calibration, test_result)


def _plot(path: Path, title: str, calibration: dict[str, Any], test_result: dict[str, Any] | None) -> None:
    figure, axis = plt.subplots(figsize=(8, 5.5), dpi=110)
    for name, entry in calibration["policies"].items():
        curve = entry.get("curve")
        if curve:
            points = sorted(curve, key=lambda p: p["mean_exit_layer"])
            line = axis.plot(
                [p["mean_exit_layer"] for p in points],
                [p["accuracy"] * 100 for p in points],
                label=f"{name} (calibration curve)",
                linewidth=1.2,
                alpha=0.8,
            )[0]
            colour = line.get_color()
        else:
            colour = "black"
        axis.scatter([entry["mean_exit_layer"]], [entry["accuracy"] * 100], color=colour, marker="o", zorder=3)
        if test_result is not None and name in test_result["policies"]:
            chosen = test_result["policies"][name]
            axis.scatter(
                [chosen["mean_exit_layer"]],
                [chosen["accuracy"] * 100],
                color=colour,
                marker="*",
                s=120,
                zorder=4,
                edgecolors="black",
                linewidths=0.5,
            )
    oracle = (test_result or calibration)["oracle"]
    axis.axvline(
        oracle["mean_exit_layer"],
        color="grey",
        linestyle=":",
        label=f"oracle mean exit layer ({oracle['layer_speedup']:.2f}x)",
    )
    axis.set_xlabel("mean exit layer")
    axis.set_ylabel("accuracy %")
    axis.set_title(f"{title}\n(o chosen threshold on calibration, * same threshold on test)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
