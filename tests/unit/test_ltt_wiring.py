"""Where the "ltt" rule's guarantee travels: `beem build` flags into the calibration options, the manifest's policy
records, the bundle report, and online control's agreement target."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from beem import cli
from beem.bundle.manifest import BundleError, Manifest, PolicyRecord
from beem.bundle.report import write_report
from beem.calibration.agreement_levels import AgreementLevels
from beem.calibration.learn_then_test import Certification
from beem.calibration.policy_calibration import CalibrationOptions
from beem.policies.exit_policies import BeemPolicy, beem_a_weights
from beem.presets import BuildPreset
from service.model_versions.served_version import controlled_policy
from service.monitoring.live_policies import LivePolicies
from service.settings import ServerSettings

# --- beem build flags ----------------------------------------------------------------------------------------------


def built_preset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *flags: str) -> BuildPreset:
    """The preset `beem build` would build with these flags (the build itself replaced by a recorder)."""
    built: list[BuildPreset] = []

    def record(preset: BuildPreset, store_dir: Path, run_dir: Path) -> Path:
        built.append(preset)
        return store_dir

    monkeypatch.setattr(cli, "build", record)
    code = cli.run(cli.parser(), ["build", "--store", str(tmp_path), "--run-dir", str(tmp_path), *flags])
    assert code == 0
    (preset,) = built
    return preset


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), CalibrationOptions()),
        (("--selection-rule", "ltt"), CalibrationOptions(selection_rule="ltt")),
        (
            ("--selection-rule", "ltt", "--epsilon", "0.02", "--delta", "0.1", "--risk", "excess-error"),
            CalibrationOptions(selection_rule="ltt", epsilon=0.02, delta=0.1, risk="excess-error"),
        ),
        (("--selection-rule", "paired"), CalibrationOptions(selection_rule="paired")),
    ],
)
def test_build_flags_reach_the_calibration_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: tuple[str, ...], expected: CalibrationOptions
) -> None:
    preset = built_preset(monkeypatch, tmp_path, *flags)
    assert preset.calibration == expected
    assert preset.training == cli.get_preset("default").training  # the other fields are the preset's


def test_the_default_rule_stays_paired_bound() -> None:
    assert CalibrationOptions().selection_rule == "paired-bound"
    assert all(preset.calibration.selection_rule == "paired-bound" for preset in cli.PRESETS.values())


@pytest.mark.parametrize(
    ("flags", "says"), [(("--epsilon", "0"), "epsilon must be in (0, 1)"), (("--delta", "2"), "delta must be in")]
)
def test_an_impossible_promise_stops_the_build_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...],
    says: str,
) -> None:  # fmt: skip
    monkeypatch.setattr(cli, "build", lambda *args: pytest.fail("built"))
    assert cli.run(cli.parser(), ["build", "--store", str(tmp_path), *flags]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("flags", [("--selection-rule", "best"), ("--risk", "accuracy")])
def test_unknown_rules_and_risks_are_usage_errors(flags: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.parser().parse_args(["build", *flags])
    assert raised.value.code == 2


# --- the manifest and the report -----------------------------------------------------------------------------------

GUARANTEE = Certification("disagreement", 0.02, 0.05, 400, 1.25, 3, 0.0135, True, 17).to_json()


def manifest_with(policy_entry: dict[str, Any]) -> Manifest:
    raw = {
        "name": "m", "version": "1", "task": "classification", "backbone": {}, "num_layers": 3, "max_length": 8,
        "weights": {}, "labels": ["a", "b"], "default_policy": "beem-a", "policies": {"beem-a": policy_entry},
    }  # fmt: skip
    return Manifest.from_json(Path("manifest.json"), raw)


def test_the_manifest_reads_a_policys_guarantee() -> None:
    params = {"alpha": 1.25}
    assert manifest_with({"params": params, "guarantee": GUARANTEE}).policies["beem-a"].guarantee == GUARANTEE
    assert manifest_with({"params": params}).policies["beem-a"].guarantee is None
    with pytest.raises(BundleError, match="'guarantee' must be an object"):
        manifest_with({"params": params, "guarantee": "certified"})


def calibration_result(guarantee: dict[str, Any] | None) -> dict[str, Any]:
    entry = {"params": {"alpha": 1.25}, "accuracy": 0.8, "mean_exit_layer": 2.0}
    return {
        "selection_rule": "ltt", "epsilon": 0.02, "delta": 0.05, "risk": "disagreement", "min_count": 5,
        "num_samples": 400, "num_layers": 3, "exit_accuracies": [0.7, 0.75, 0.8],
        "oracle": {"mean_exit_layer": 1.5, "layer_speedup": 2.0},
        "policies": {"beem-a": {**entry, **({"guarantee": guarantee} if guarantee else {})},
                     "full": {"params": {}, "accuracy": 0.8, "mean_exit_layer": 3.0}},
    }  # fmt: skip


def test_the_report_states_each_guarantee(tmp_path: Path) -> None:
    write_report(tmp_path, "tiny", calibration_result(GUARANTEE), None, "report.md", "report.png")
    report = (tmp_path / "report.md").read_text()
    assert "by the `ltt` rule (disagreement at most 2% with probability at least 95%" in report
    assert f"- beem-a: {GUARANTEE['statement']} (3 of 400 samples with a loss, p = 0.0135)" in report
    write_report(tmp_path, "tiny", calibration_result(None), None, "report.md", "report.png")
    assert "Certified risk" not in (tmp_path / "report.md").read_text()


# --- online control's target ---------------------------------------------------------------------------------------


def excess_error(guarantee: dict[str, Any]) -> dict[str, Any]:
    return {**guarantee, "risk": "excess-error"}


@pytest.mark.parametrize(
    ("guarantee", "settings_target", "target"),
    [
        (GUARANTEE, None, 0.98),  # certified on disagreement: 1 - epsilon
        (GUARANTEE, 0.95, 0.95),  # the settings' target still wins
        (excess_error(GUARANTEE), None, 0.9),  # another risk: the calibration split's agreement
        ({**GUARANTEE, "certified": False}, None, 0.9),
        (None, None, 0.9),
    ],
)
def test_the_controller_holds_a_certified_policy_at_one_minus_epsilon(
    tmp_path: Path, guarantee: dict[str, Any] | None, settings_target: float | None, target: float
) -> None:
    policy = BeemPolicy("beem-a", beem_a_weights((0.7, 0.75, 0.8)), 1.25)
    version = SimpleNamespace(
        name="m",
        manifest=SimpleNamespace(default_policy="beem-a", policies={"beem-a": PolicyRecord({}, {}, {}, guarantee)}),
        live_policies=LivePolicies({"beem-a": policy}),
    )
    levels = {"beem-a": AgreementLevels(0.9, 0.85, 0.5, 0.3, 400)}
    settings = ServerSettings(bundle=tmp_path, alpha_control_target=settings_target)
    control = controlled_policy(version, levels, 0.005, settings)  # type: ignore[arg-type]
    assert control is not None and control.name == "beem-a"
    assert control.settings.target_agreement == pytest.approx(target)
    assert math.isclose(control.settings.headroom, min(0.01, (1 - target) / 2))
