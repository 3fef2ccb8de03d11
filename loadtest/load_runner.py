"""Send load to a server and record every request: closed loop (N clients, each waits for its answer) or open
loop (Poisson arrivals at a set rate, whether or not earlier requests were answered).

Policies are compared in rounds: each round gives every policy an equal slice, in alternating order, so drift
on a noisy machine hits all of them alike. Every loop is bounded in time and count and stops by itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from loadtest.http_connection import ConnectionPool, HttpError
from loadtest.workload import Workload

ROUND_STRIDE = 997  # where each round starts in the workload (a prime, so rounds see different texts)


@dataclass(frozen=True)
class RequestRecord:
    policy: str
    latency_s: float
    status: int  # HTTP status, or 0 when the request never got one (connection error, client timeout)
    exit_layer: float | None = None  # classification: the exit layer; captioning: the caption's mean
    correct: bool | None = None
    sent_at: float = 0.0  # time.perf_counter() when it was sent


@dataclass(frozen=True)
class LoadPlan:
    policies: tuple[str, ...]
    mode: str  # "closed" or "open"
    concurrency: int = 16  # closed loop: clients
    rate: float = 50.0  # open loop: arrivals per second
    duration_s: float | None = None  # per policy, over all rounds; or
    requests: int | None = None  # per policy, over all rounds
    rounds: int = 3
    timeout_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode must be 'closed' or 'open', got {self.mode!r}")
        if (self.duration_s is None) == (self.requests is None):
            raise ValueError("give exactly one of a duration or a request count")
        if not self.policies or self.rounds < 1 or self.concurrency < 1 or self.rate <= 0:
            raise ValueError("need at least one policy, one round, one client and a positive rate")


@dataclass
class PhaseResult:
    records: list[RequestRecord] = field(default_factory=list)
    elapsed_s: float = 0.0


async def _send(client: ConnectionPool, workload: Workload, index: int, policy: str, timeout_s: float) -> RequestRecord:
    body, label = workload.request(index, policy)
    started = time.perf_counter()
    try:
        response = await client.post_json(workload.route, body, timeout_s)
    except (HttpError, OSError, TimeoutError, ValueError):
        return RequestRecord(policy, time.perf_counter() - started, 0, sent_at=started)
    latency = time.perf_counter() - started
    if response.status != 200:
        return RequestRecord(policy, latency, response.status, sent_at=started)
    payload = response.json()
    if workload.images:
        return RequestRecord(policy, latency, 200, float(payload["mean_exit_layer"]), sent_at=started)
    result = payload["results"][0]
    correct = None if label is None else result["label"] == label
    return RequestRecord(policy, latency, 200, int(result["exit_layer"]), correct, sent_at=started)


def _budget(plan: LoadPlan, round_number: int) -> tuple[float, int]:
    """Per phase (one policy, one round): a time limit and a request limit; one of them is unbounded. A request
    count is spread over the rounds exactly (10 over 3 rounds: 4, 3, 3)."""
    if plan.duration_s is not None:
        return plan.duration_s / plan.rounds, 1 << 62
    assert plan.requests is not None
    return float("inf"), plan.requests // plan.rounds + (1 if round_number < plan.requests % plan.rounds else 0)


async def _closed_phase(
    client: ConnectionPool, workload: Workload, policy: str, plan: LoadPlan, round_number: int, bar: tqdm
) -> PhaseResult:
    seconds, count = _budget(plan, round_number)
    first_index = round_number * ROUND_STRIDE
    result = PhaseResult()
    started = time.perf_counter()
    stop_at = started + seconds
    issued = 0

    async def client_loop() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < stop_at:
            index = first_index + issued
            issued += 1
            result.records.append(await _send(client, workload, index, policy, plan.timeout_s))
            bar.update(1)

    await asyncio.gather(*(client_loop() for _ in range(plan.concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def _open_phase(
    client: ConnectionPool,
    workload: Workload,
    policy: str,
    plan: LoadPlan,
    round_number: int,
    bar: tqdm,
    rng: random.Random,
) -> PhaseResult:
    seconds, count = _budget(plan, round_number)
    first_index = round_number * ROUND_STRIDE
    result = PhaseResult()
    started = time.perf_counter()
    next_arrival = started
    in_flight: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        result.records.append(await _send(client, workload, index, policy, plan.timeout_s))
        bar.update(1)

    issued = 0
    while issued < count:
        next_arrival += rng.expovariate(plan.rate)
        if next_arrival - started >= seconds:
            break
        await asyncio.sleep(max(0.0, next_arrival - time.perf_counter()))
        in_flight.append(asyncio.create_task(one(first_index + issued)))
        issued += 1
    arrivals_ended = time.perf_counter()
    await asyncio.gather(*in_flight)  # each is bounded by the request timeout
    # Throughput is answers over the arrival window: an open loop offers load for that long.
    result.elapsed_s = max(arrivals_ended - started, 1e-9)
    return result


async def run_plan(
    url: str,
    workload: Workload,
    plan: LoadPlan,
    show_progress: bool = True,
    headers: dict[str, str] | None = None,
) -> dict[str, PhaseResult]:
    """Run every policy's phases, interleaved by round; returns the merged records per policy."""
    merged = {policy: PhaseResult() for policy in plan.policies}
    rng = random.Random(plan.seed)
    description = f"{plan.mode} loop " + (f"c={plan.concurrency}" if plan.mode == "closed" else f"{plan.rate:g}/s")
    with tqdm(desc=description, unit="req", disable=not show_progress, leave=False) as bar:
        async with ConnectionPool(url, headers) as client:
            for round_number in range(plan.rounds):
                order = plan.policies if round_number % 2 == 0 else tuple(reversed(plan.policies))
                # Within a round every policy starts at the same text: they are compared on the same inputs.
                for policy in order:
                    bar.set_postfix(policy=policy, round=round_number + 1)
                    if plan.mode == "closed":
                        phase = await _closed_phase(client, workload, policy, plan, round_number, bar)
                    else:
                        phase = await _open_phase(client, workload, policy, plan, round_number, bar, rng)
                    merged[policy].records.extend(phase.records)
                    merged[policy].elapsed_s += phase.elapsed_s
    return merged
