"""A long mixed run on one server over a model store (issue 25, deliverable 2): does anything leak, slow down or
lose a request when everything happens at once for half an hour?

    python -m bench.soak [--minutes 32] [--load-share 0.7] [--swap-every-s 180] [--store model_store]

The newest version of every model in `--store` (the two committed classifiers and the captioner) is copied into a
temporary model store as version 1 and served by one `beem serve --model-store TMP --poll-interval-s 0` with the
shadow monitor on (`--shadow-fraction`). A closed loop of 16 clients sends the request mix (`bench/soak_traffic.py`:
classify, TEI predict, v2 infer, caption, bad input, clients that hang up mid-request) for `--probe-s` to measure
capacity; then an open loop (Poisson arrivals) sends the same mix at `--load-share` of that rate for `--minutes`.
Every `--swap-every-s` (the first half a sample before, so no sample falls in a swap) the next model in turn gets a
new version (the same bundle copied under the next number) and POST /admin/reload; the old one drains and is
unloaded. Every `--sample-every-s` (a minute) the server's resident memory, open descriptors and threads, and its
row ledger are recorded; latencies per route per minute come from the requests sent in it.

At the end (`bench/soak_verdict.py`): every request but the hang-ups got exactly one answer, no 5xx, every bad
request a 4xx, the ledger balances for every version (unloaded ones from /v1/models), and memory, descriptors,
threads and p95 did not grow from the first `--compare-minutes` to the last. Writes `soak_cpu.json` (with
`duration_minutes`, `status_5xx`, `unanswered` at the top), `soak_cpu.md` and `soak_cpu.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from beem.bundle.version_copy import copy_as_version
from bench.caption_serving import copy_test_split_images
from bench.hot_swap import swap_once
from bench.live_load import RESULTS_DIR, scrape, test_texts
from bench.result_files import write_results
from bench.server_process import ServerProcess
from bench.soak_report import markdown, plot
from bench.soak_traffic import DEFAULT_MIX, ConnectionShelf, SoakAnswer, SoakCorpus, build_request, kinds_in_order
from bench.soak_verdict import verdict
from bench.soak_watch import live_ledgers, process_sample, settled, unloaded_ledgers
from loadtest.workload import image_workload

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTLE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SoakPlan:
    minutes: float
    load_share: float
    probe_s: float
    probe_clients: int
    swap_every_s: float
    sample_every_s: float
    compare_minutes: float
    timeout_s: float
    seed: int


@dataclass
class SoakState:
    """What the run collects while it goes: every answer, the minute samples, the swaps."""

    t0: float
    answers: list[SoakAnswer]
    samples: list[dict[str, Any]]
    swaps: list[dict[str, Any]]
    max_send_lag_s: float = 0.0  # how far the open loop fell behind its schedule (its own CPU starved)


def prepare_store(source: Path, store: Path) -> dict[str, tuple[Path, str]]:
    """The newest version of every model under `source`, as version 1 under `store`: {name: (bundle dir, task)}."""
    models = {}
    for model_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        bundle_dir = resolve_bundle_dir(model_dir)
        manifest = read_manifest(bundle_dir)
        copy_as_version(bundle_dir, store / manifest.name, 1, manifest.name)
        models[manifest.name] = (bundle_dir, manifest.task)
    return models


async def closed_probe(shelf: ConnectionShelf, corpus: SoakCorpus, kinds: list[str], plan: SoakPlan,
                       state: SoakState) -> float:  # fmt: skip
    """Requests per second the server answers with `probe_clients` closed-loop clients sending the mix."""
    stop_at = time.perf_counter() + plan.probe_s
    counter = iter(range(10**9))
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            index = next(counter)
            answer = await shelf.send(build_request(kinds[index % len(kinds)], index, corpus), state.t0, plan.timeout_s)
            state.answers.append(answer)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(plan.probe_clients)))
    return done / (time.perf_counter() - started)


async def open_loop(shelf: ConnectionShelf, corpus: SoakCorpus, kinds: list[str], rate: float, plan: SoakPlan,
                    state: SoakState, start: float) -> None:  # fmt: skip
    """Poisson arrivals at `rate` per second from `start` for the plan's minutes; every request is awaited."""
    rng = random.Random(plan.seed)
    end, next_at, index = start + plan.minutes * 60, start, 0
    in_flight: set[asyncio.Task[None]] = set()

    async def one(request_index: int) -> None:
        request = build_request(kinds[request_index % len(kinds)], 10**6 + request_index, corpus)
        state.answers.append(await shelf.send(request, state.t0, plan.timeout_s))

    while True:
        next_at += rng.expovariate(rate)
        if next_at >= end:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            state.max_send_lag_s = max(state.max_send_lag_s, -delay)
        task = asyncio.create_task(one(index))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        index += 1
    await asyncio.gather(*in_flight)


async def sample_every(admin: httpx.AsyncClient, server: ServerProcess, plan: SoakPlan, state: SoakState,
                       start: float) -> None:  # fmt: skip
    """One sample at the start and one every `sample_every_s` until the run's end."""
    for k in range(int(plan.minutes * 60 / plan.sample_every_s) + 1):
        await asyncio.sleep(max(0.0, start + k * plan.sample_every_s - time.perf_counter()))
        samples = await asyncio.to_thread(scrape, server.url)
        models = (await admin.get("/v1/models")).json()
        state.samples.append({
            "t_s": round(time.perf_counter() - start, 1),
            **process_sample(server.process.pid),
            "ledgers": {**unloaded_ledgers(models), **live_ledgers(samples)},
            "answers_so_far": len(state.answers),
        })  # fmt: skip


async def swap_in_turn(admin: httpx.AsyncClient, store: Path, models: dict[str, tuple[Path, str]], plan: SoakPlan,
                       state: SoakState, start: float) -> None:  # fmt: skip
    """A new version of the next model every `swap_every_s`, the first half a sample before its slot."""
    names, next_version = sorted(models), dict.fromkeys(models, 2)
    first = plan.swap_every_s - plan.sample_every_s / 2
    for k in range(int((plan.minutes * 60 - first) // plan.swap_every_s) + 1):
        await asyncio.sleep(max(0.0, start + first + k * plan.swap_every_s - time.perf_counter()))
        name = names[k % len(names)]
        swap = await swap_once(admin, store / name, models[name][0], name, next_version[name], start)
        state.swaps.append({"model": name, **swap})
        next_version[name] += 1


async def wait_settled(admin: httpx.AsyncClient, server: ServerProcess) -> dict[str, dict[str, Any]]:
    """Every version's ledger once nothing is queued or in flight and no version is draining."""
    deadline = time.perf_counter() + SETTLE_TIMEOUT_S
    while True:
        models = (await admin.get("/v1/models")).json()
        live = live_ledgers(await asyncio.to_thread(scrape, server.url))
        draining = any(v["status"] in ("draining", "loading") for m in models["data"] for v in m["versions"])
        if (settled(live) and not draining) or time.perf_counter() > deadline:
            return {**unloaded_ledgers(models), **live}
        await asyncio.sleep(0.5)


async def soak(server: ServerProcess, store: Path, models: dict[str, tuple[Path, str]], corpus: SoakCorpus,
               plan: SoakPlan) -> dict[str, Any]:  # fmt: skip
    kinds = kinds_in_order(DEFAULT_MIX, plan.seed)
    state = SoakState(time.perf_counter(), [], [], [])
    shelf = ConnectionShelf("127.0.0.1", server.port)
    async with httpx.AsyncClient(base_url=server.url, timeout=SETTLE_TIMEOUT_S) as admin:
        for index in range(2 * len(kinds)):  # warm every route and model, one at a time
            request = build_request(kinds[index % len(kinds)], index, corpus)
            state.answers.append(await shelf.send(request, state.t0, plan.timeout_s))
        capacity = await closed_probe(shelf, corpus, kinds, plan, state)
        probe_answers = len(state.answers)
        start = time.perf_counter()
        rate = plan.load_share * capacity
        await asyncio.gather(
            open_loop(shelf, corpus, kinds, rate, plan, state, start),
            sample_every(admin, server, plan, state, start),
            swap_in_turn(admin, store, models, plan, state, start),
        )
        ended = time.perf_counter()
        final_ledgers = await wait_settled(admin, server)
    shelf.close()
    shift = start - state.t0  # answers' send times count from t0: the soak's minutes from `start`
    return {"capacity_rps": capacity, "rate_rps": rate, "probe_answers": state.answers[:probe_answers],
            "soak_answers": state.answers[probe_answers:], "shift_s": shift,
            "samples": state.samples, "swaps": state.swaps, "final_ledgers": final_ledgers,
            "duration_s": ended - start, "max_send_lag_s": state.max_send_lag_s}  # fmt: skip


def corpus_for(models: dict[str, tuple[Path, str]], images: Path | None, work_dir: Path) -> SoakCorpus:
    classifiers = [name for name, (_, task) in models.items() if task == "classification"]
    captioners = [name for name, (_, task) in models.items() if task == "caption"]
    if not classifiers or not captioners:
        raise SystemExit("the soak needs a store with at least one classifier and one captioner")
    folder = images if images is not None else copy_test_split_images(models[captioners[0]][0], work_dir, 50)
    return SoakCorpus(test_texts(), image_workload(folder).images, classifiers, captioners[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = SoakPlan(args.minutes, args.load_share, args.probe_s, args.probe_clients, args.swap_every_s,
                    args.sample_every_s, args.compare_minutes, args.timeout_s, args.seed)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="beem-soak-") as tmp:
        store = Path(tmp) / "store"
        models = prepare_store(Path(args.store), store)
        corpus = corpus_for(models, Path(args.images) if args.images else None, Path(args.work_dir))
        command = [sys.executable, "-m", "service.cli", "serve", "--model-store", str(store), "--poll-interval-s",
                   "0", "--shadow-fraction", str(args.shadow_fraction)]  # fmt: skip
        with ServerProcess(command, ready_timeout_s=300) as server:
            outcome = asyncio.run(soak(server, store, models, corpus, plan))
    setup = {"models": {name: task for name, (_, task) in models.items()}, "mix": DEFAULT_MIX,
             "shadow_fraction": args.shadow_fraction, "plan": plan.__dict__, "images": len(corpus.images),
             "machine": f"{platform.machine()}, {torch.get_num_threads()} cores for torch, no GPU",
             "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    return verdict(outcome, plan.sample_every_s, plan.compare_minutes, setup)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--minutes", type=float, default=32.0)
    arguments.add_argument("--load-share", type=float, default=0.7, help="of the capacity the probe measured")
    arguments.add_argument("--probe-s", type=float, default=30.0)
    arguments.add_argument("--probe-clients", type=int, default=16)
    arguments.add_argument("--swap-every-s", type=float, default=180.0)
    arguments.add_argument("--sample-every-s", type=float, default=60.0)
    arguments.add_argument("--compare-minutes", type=float, default=5.0, help="first and last windows compared")
    arguments.add_argument("--shadow-fraction", type=float, default=0.05)
    arguments.add_argument("--timeout-s", type=float, default=60.0, help="a client gives up on its answer after")
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--store", default=str(REPO_ROOT / "model_store"))
    arguments.add_argument("--images", help="a folder of PNG/JPEG images (default: the captioner's test split)")
    arguments.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "caption-evaluation"))
    arguments.add_argument("--out", default=str(RESULTS_DIR))
    arguments.add_argument("--stem", default="soak_cpu")
    args = arguments.parse_args()
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / f"{args.stem}.png")
    write_results(out, args.stem, results, markdown(results))


if __name__ == "__main__":
    main()
