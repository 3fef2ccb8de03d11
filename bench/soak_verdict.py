"""The soak's end checks and per-minute figures (`bench/soak.py`), from every answer the clients got, the minute
samples of the server, and every version's final row ledger.

Checks (issue 25's targets):
- `unanswered` 0: every request but the deliberate hang-ups got an answer (a status line), none timed out.
- `status_5xx` 0, and every bad request got a 4xx.
- the ledger balances: every version (unloaded ones too) admitted exactly the rows that left it by an outcome
  other than `shed`; and the server's rows (all outcomes, shed included) are the rows the clients got an engine
  answer for (200, 429, 5xx), plus at most the hang-ups' rows (a hung-up request may or may not have been read).
- resident memory at the end within 5% of its value after the first `compare_minutes`; open descriptors and
  threads at the end no more than 10% (or 2) above their highest in that first window.
- each route's p95 over the last `compare_minutes` within 1.2x of its p95 over the first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from bench.soak_traffic import ROUTES, SoakAnswer
from bench.soak_watch import totals, unbalanced
from loadtest.load_report import percentile_ms

RSS_GROWTH_LIMIT = 0.05
P95_RATIO_LIMIT = 1.2
COUNT_GROWTH_SHARE, COUNT_GROWTH_MIN = 0.10, 2
ENGINE_STATUSES = (200, 429, 500, 503, 504)  # answers that come from an engine's ledger (a row was counted)


def route_window(answers: Sequence[SoakAnswer], start_s: float, end_s: float) -> dict[str, dict[str, Any]]:
    """Per route: requests sent in [start_s, end_s), their statuses, p50 and p95 of those answered 200."""
    summary = {}
    for route in ROUTES:
        inside = [a for a in answers if a.kind == route and start_s <= a.sent_s < end_s]
        ok = [a.latency_s for a in inside if a.status == 200]
        summary[route] = {"requests": len(inside), "statuses": _statuses(inside), "p50_ms": percentile_ms(ok, 50),
                          "p95_ms": percentile_ms(ok, 95)}  # fmt: skip
    return summary


def _statuses(answers: Sequence[SoakAnswer]) -> dict[str, int]:
    return {str(status): count for status, count in sorted(Counter(a.status or 0 for a in answers).items())}


def _check(value: float | None, target: float, met: bool) -> dict[str, Any]:
    return {"value": value, "target": target, "met": bool(met)}


def _count_bounded(samples: list[dict[str, Any]], base_index: int, key: str) -> dict[str, Any]:
    highest_early = max(s[key] for s in samples[: base_index + 1])
    limit = highest_early + max(COUNT_GROWTH_MIN, COUNT_GROWTH_SHARE * highest_early)
    return {**_check(samples[-1][key], limit, samples[-1][key] <= limit), "highest_in_first_window": highest_early}


def _ledger_checks(ledgers: dict[str, dict[str, Any]], everything: Sequence[SoakAnswer]) -> dict[str, Any]:
    unbalanced_versions = [name for name, ledger in ledgers.items() if unbalanced(ledger)]
    server = totals(ledgers)
    server_rows = sum(count for outcome, count in server.items() if outcome != "admitted")
    valid = [a for a in everything if a.kind not in ("bad", "disconnect")]
    engine_rows = sum(a.rows for a in valid if a.status in ENGINE_STATUSES)
    refused_rows = sum(a.rows for a in valid if a.status == 429)
    hung_up = sum(a.rows for a in everything if a.kind == "disconnect")
    extra_rows, extra_shed = server_rows - engine_rows, server.get("shed", 0) - refused_rows
    return {
        "checks": {
            "ledger_unbalanced_versions": _check(len(unbalanced_versions), 0, not unbalanced_versions),
            "server_rows_minus_client_engine_rows": _check(extra_rows, hung_up, 0 <= extra_rows <= hung_up),
            "shed_rows_minus_client_429_rows": _check(extra_shed, hung_up, 0 <= extra_shed <= hung_up),
        },
        "rows": {
            "server": server,
            "client_engine_answered": engine_rows,
            "client_refused_429": refused_rows,
            "hung_up": hung_up,
            "unbalanced_versions": unbalanced_versions,
        },
    }


def _growth_checks(samples: list[dict[str, Any]], first: dict[str, Any], last: dict[str, Any],
                   compare_s: float) -> dict[str, Any]:  # fmt: skip
    base = next((i for i, s in enumerate(samples) if s["t_s"] >= compare_s - 1), len(samples) - 1)
    rss_growth = samples[-1]["rss_mib"] / samples[base]["rss_mib"] - 1
    checks = {
        "rss_growth_after_first_window": _check(rss_growth, RSS_GROWTH_LIMIT, rss_growth <= RSS_GROWTH_LIMIT),
        "open_fds_bounded": _count_bounded(samples, base, "open_fds"),
        "threads_bounded": _count_bounded(samples, base, "threads"),
    }
    for route in ROUTES:
        before, after = first[route]["p95_ms"], last[route]["p95_ms"]
        ratio = after / before if before and after else None
        checks[f"p95_last_over_first_{route}"] = _check(
            ratio, P95_RATIO_LIMIT, bool(ratio and ratio <= P95_RATIO_LIMIT)
        )
    return checks


def verdict(
    outcome: dict[str, Any], sample_every_s: float, compare_minutes: float, setup: dict[str, Any]
) -> dict[str, Any]:
    shift = outcome["shift_s"]
    soak = [replace(a, sent_s=a.sent_s - shift) for a in outcome["soak_answers"]]  # seconds from the soak's start
    everything = [*outcome["probe_answers"], *soak]
    duration_s, compare_s, samples = outcome["duration_s"], compare_minutes * 60, outcome["samples"]
    unanswered = [a for a in everything if a.status is None and a.kind != "disconnect"]
    status_5xx = sum(1 for a in everything if a.status is not None and a.status >= 500)
    bad_not_4xx = [a for a in everything if a.kind == "bad" and not (a.status and 400 <= a.status < 500)]
    ledger = _ledger_checks(outcome["final_ledgers"], everything)
    first, last = route_window(soak, 0, compare_s), route_window(soak, duration_s - compare_s, duration_s + 1)
    checks = {
        "unanswered": _check(len(unanswered), 0, not unanswered),
        "status_5xx": _check(status_5xx, 0, status_5xx == 0),
        "bad_requests_not_4xx": _check(len(bad_not_4xx), 0, not bad_not_4xx),
        **ledger["checks"],
        **_growth_checks(samples, first, last, compare_s),
    }
    minutes = []
    for k in range(max(1, round(duration_s / sample_every_s))):
        minute: dict[str, Any] = {"from_s": k * sample_every_s}
        if k + 1 < len(samples):
            minute["sample"] = _sample_row(samples[k + 1])  # taken at the window's end
        minute["routes"] = route_window(soak, k * sample_every_s, (k + 1) * sample_every_s)
        minutes.append(minute)
    kinds = sorted({a.kind for a in everything})
    return {
        "duration_minutes": duration_s / 60,
        "status_5xx": status_5xx,
        "unanswered": len(unanswered),
        "met": all(c["met"] for c in checks.values()),
        "checks": checks,
        "capacity_rps": outcome["capacity_rps"],
        "rate_rps": outcome["rate_rps"],
        "max_send_lag_s": outcome["max_send_lag_s"],
        "requests": {kind: {"count": sum(1 for a in everything if a.kind == kind),
                            "statuses": _statuses([a for a in everything if a.kind == kind])} for kind in kinds},
        "rows": ledger["rows"],
        "ledgers": outcome["final_ledgers"],
        "unanswered_examples": [a.detail for a in unanswered[:5]],
        "bad_not_4xx_examples": [f"{a.status}: {a.detail}" for a in bad_not_4xx[:5]],
        "windows": {"first": first, "last": last, "compare_minutes": compare_minutes},
        "samples": [_sample_row(s) for s in samples],
        "minutes": minutes,
        "swaps": [_swap_row(s) for s in outcome["swaps"]],
        "setup": setup,
    }  # fmt: skip


def _swap_row(swap: dict[str, Any]) -> dict[str, Any]:
    unloaded = swap["old_unloaded"]
    return {"model": swap["model"], "version": swap["version"], "at_s": round(swap["reload_post"], 1),
            "reload_status": swap["reload_response"]["status"],
            "swap_s": None if unloaded is None else unloaded - swap["reload_post"]}  # fmt: skip


def _sample_row(sample: dict[str, Any]) -> dict[str, Any]:
    """A minute sample, its ledger summed over versions (rows admitted that had not left: in the engines then)."""
    ledgers = sample["ledgers"]
    return {"t_s": sample["t_s"], "rss_mib": sample["rss_mib"], "open_fds": sample["open_fds"],
            "threads": sample["threads"], "rows": totals(ledgers),
            "rows_in_engines": sum(unbalanced(ledger) for ledger in ledgers.values())}  # fmt: skip
