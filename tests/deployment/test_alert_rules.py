"""The alert rules (docker/prometheus/alerts.yml): promtool checks them and the config that loads them, unit-tests
every alert on made-up series (`promtool test rules`: fires when it should, stays quiet within the noise, when idle
and on a healthy pod beside a drifting one), and every metric and label they query is one the server exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deployment.exported_metrics import TARGET_LABELS, exported_series_labels

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "docker" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool: apt-get install prometheus (it ships promtool; .ci/run and make setup do)"
)
METRIC_NAME = re.compile(r"\bbeem_[a-z_]+\b")
GROUPING = re.compile(r"\b(?:on|ignoring|by|without)\s*\(([^)]*)\)")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
TEMPLATE = re.compile(r"\{\{ \$labels\.(\w+) \}\}|\{\{ \$value \| humanizePercentage \}\}")

AGREEMENT = "BeemShadowAgreementBelowCalibration"
BUDGET = "BeemEstimatedAccuracyLossOverBudget"
RELOAD = "BeemModelReloadRefused"
POD_A = {"job": "beem", "instance": "beem-a:8000"}
POD_B = {"job": "beem", "instance": "beem-b:8000"}
VERSION = {"model": "minilm-rt-sentiment", "version": "2"}


def rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def _promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *arguments], capture_output=True, text=True, timeout=60, check=False)


# --- what the rules say ---------------------------------------------------------------------------------------------


def test_the_group_holds_the_three_alerts() -> None:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    assert group["name"] == "beem-early-exit"
    found = rules()
    assert set(found) == {AGREEMENT, BUDGET, RELOAD}
    assert (found[AGREEMENT]["for"], found[BUDGET]["for"], found[RELOAD].get("for")) == ("10m", "15m", None)
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= rule["annotations"].keys(), name


def test_every_metric_and_label_the_rules_query_is_one_the_server_exports() -> None:
    exported = exported_series_labels()
    assert "beem_shadow_agreements" not in exported and "beem_model_reload_total" not in exported
    for name, rule in rules().items():
        expression = rule["expr"]
        metrics = set(METRIC_NAME.findall(expression))
        assert metrics, f"{name}: queries no beem metric"
        assert metrics <= exported.keys(), f"{name}: {sorted(metrics - exported.keys())} are not exported"
        labels = TARGET_LABELS.union(*(exported[metric] for metric in metrics))
        used = {label.strip() for group in GROUPING.findall(expression) for label in group.split(",")} - {""}
        used |= {
            label for selector in re.findall(r"\{([^}]*)\}", expression) for label in MATCHER_LABEL.findall(selector)
        }
        assert used <= labels, f"{name}: labels {sorted(used - labels)} are on none of {sorted(metrics)}"


def test_prometheus_loads_the_rules_compose_mounts_next_to_its_config() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]  # relative to the config file, in the repo and in the container
    compose = yaml.safe_load((PROMETHEUS_DIR.parent / "compose.yaml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


# --- promtool -------------------------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    checked = _promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 rules found" in checked.stdout


@needs_promtool
def test_promtool_checks_the_config_and_the_rule_files_it_names() -> None:
    checked = _promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout and "3 rules found" in checked.stdout


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def _shadow(
    pod: dict[str, str],
    agreement: str,
    agree: str | None = "0+10x60",
    disagree: str | None = "0+1x60",
    policy: str = "beem-a",
) -> list[dict[str, str]]:
    """One pod's shadow monitor for one policy: calibrated 97 %, noise margin 3 points (alert line 94 %), and by
    default 10 agreeing and 1 disagreeing comparison a minute (None: that counter has no series)."""
    labels = {**pod, **VERSION, "policy": policy}
    found = [
        _series("beem_shadow_agreement", agreement, **labels),
        _series("beem_shadow_agreement_calibrated", "0.97x60", **labels),
        _series("beem_shadow_agreement_noise", "0.03x60", **labels),
    ]
    for result, values in (("agree", agree), ("disagree", disagree)):
        if values is not None:
            found.append(_series("beem_shadow_samples_total", values, **labels, result=result))
    return found


def _expected(alert: str, labels: dict[str, str], value: str = "") -> dict[str, Any]:
    """The alert promtool must report: its labels, and its annotations rendered from alerts.yml's templates."""

    def fill(match: re.Match[str]) -> str:
        return labels[match.group(1)] if match.group(1) else value

    rule = rules()[alert]
    annotations = {key: TEMPLATE.sub(fill, text) for key, text in rule["annotations"].items()}
    assert not any("{{" in text for text in annotations.values()), "a template _expected cannot render: teach it"
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


def _checks(alert: str, *at: tuple[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"eval_time": time, "alertname": alert, "exp_alerts": expected} for time, expected in at]


DRIFTED = {**POD_A, **VERSION, "policy": "beem-a"}
REFUSED = {**POD_A, "model": "minilm-rt-sentiment", "outcome": "refused"}
# Agreement 96 % for 10 min, then 90 %: below the alert line (97 % - 3) from minute 10, firing from minute 20.
DROP = "0.96x9 0.90x50"
SCENARIOS: dict[str, tuple[list[Any], list[dict[str, Any]]]] = {
    "agreement below calibrated - noise with samples fires after 10m": (
        _shadow(POD_A, DROP),
        _checks(AGREEMENT, ("9m", []), ("15m", []), ("21m", [_expected(AGREEMENT, DRIFTED, "90%")])),
    ),
    "agreement lower but within the noise does not fire": (
        _shadow(POD_A, "0.96x9 0.95x50"),
        _checks(AGREEMENT, ("21m", []), ("45m", [])),
    ),
    "agreement below the line without any comparison does not fire": (
        _shadow(POD_A, DROP, agree=None, disagree=None),
        _checks(AGREEMENT, ("21m", []), ("45m", [])),
    ),
    "agreement below the line on an idle model does not fire": (
        _shadow(POD_A, DROP, agree="500x60", disagree="20x60"),
        _checks(AGREEMENT, ("21m", []), ("45m", [])),
    ),
    "agreement below the line on too few comparisons (about 15 in 15m) does not fire": (
        _shadow(POD_A, DROP, agree="0+1x60", disagree=None),
        _checks(AGREEMENT, ("21m", []), ("45m", [])),
    ),
    "the agreement alert resolves 15m after the comparisons stop": (
        _shadow(POD_A, DROP, agree="0+10x25 250x34", disagree=None),
        _checks(AGREEMENT, ("30m", [_expected(AGREEMENT, DRIFTED, "90%")]), ("45m", [])),
    ),
    "two pods: only the drifting one's agreement fires": (
        _shadow(POD_A, DROP) + _shadow(POD_B, "0.96x60"),
        _checks(AGREEMENT, ("21m", [_expected(AGREEMENT, DRIFTED, "90%")])),
    ),
    "accuracy loss over budget fires after 15m, per pod and policy": (
        [
            _series("beem_accuracy_budget", "0.01x30", **POD_A, **VERSION),
            _series("beem_accuracy_budget", "0.01x30", **POD_B, **VERSION),
            _series("beem_shadow_estimated_accuracy_loss", "0.02x30", **DRIFTED),
            _series("beem_shadow_estimated_accuracy_loss", "0.005x30", **POD_A, **VERSION, policy="beem-b"),
            _series("beem_shadow_estimated_accuracy_loss", "0.005x30", **POD_B, **VERSION, policy="beem-a"),
        ],
        _checks(BUDGET, ("10m", []), ("16m", [_expected(BUDGET, DRIFTED, "2%")])),
    ),
    "accuracy loss within budget does not fire": (
        [
            _series("beem_accuracy_budget", "0.01x30", **POD_A, **VERSION),
            _series("beem_shadow_estimated_accuracy_loss", "0.005x30", **DRIFTED),
        ],
        _checks(BUDGET, ("16m", []), ("29m", [])),
    ),
    "a refused reload fires at once, also on the counter's first sample (born at 1), for 10m": (
        [_series("beem_model_reloads_total", "_x5 1x30", **REFUSED)],
        _checks(RELOAD, ("4m", []), ("6m", [_expected(RELOAD, REFUSED)]), ("20m", [])),
    ),
    "a refused reload on a counter kept at zero fires": (
        [_series("beem_model_reloads_total", "0x5 1x30", **REFUSED)],
        _checks(RELOAD, ("4m", []), ("6m", [_expected(RELOAD, REFUSED)]), ("20m", [])),
    ),
    "a second refusal inside the window is still one alert": (
        [_series("beem_model_reloads_total", "_x5 1x3 2x30", **REFUSED)],
        _checks(RELOAD, ("10m", [_expected(RELOAD, REFUSED)])),
    ),
    "loaded reloads do not fire": (
        [
            _series("beem_model_reloads_total", "0+1x30", **POD_A, model="m", outcome="loaded"),
            _series("beem_model_reloads_total", "0x30", **REFUSED),
        ],
        _checks(RELOAD, ("6m", []), ("20m", [])),
    ),
}


@needs_promtool
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_promtool_unit_tests_the_alerts(scenario: str, tmp_path: Path) -> None:
    input_series, checks = SCENARIOS[scenario]
    unit_test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{"name": scenario, "interval": "1m", "input_series": input_series, "alert_rule_test": checks}],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(unit_test, sort_keys=False))
    tested = _promtool("test", "rules", str(test_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr
