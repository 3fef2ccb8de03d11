"""Server settings: BEEM_ environment variables, explicit values (CLI flags) win, bad values stop start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import DEFAULT_BUNDLE, ServerSettings


def test_environment_then_explicit_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEEM_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("BEEM_PORT", "9001")
    monkeypatch.setenv("BEEM_API_KEY", "hunter2-secret")
    settings = ServerSettings(port=9100)  # as `beem serve --port 9100` builds it
    assert settings.max_batch_size == 8
    assert settings.port == 9100
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "hunter2-secret"
    assert "hunter2" not in repr(settings)
    assert settings.bundle == DEFAULT_BUNDLE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 0),
        ("port", 70000),
        ("device", "tpu"),
        ("dtype", "int8"),
        ("request_timeout_s", 0),
        ("bundle", "/no/such/bundle"),
        ("unknown_setting", 1),
        ("max_queue_wait_ms", 0),
        ("group_selection", "random"),
        ("max_queue", 8),  # below max_inputs_per_request (64): a full-size request could never be admitted
    ],
)
def test_invalid_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field if field != "bundle" else "does not exist"):
        ServerSettings(**{field: value})
