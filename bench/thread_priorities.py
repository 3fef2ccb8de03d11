"""Do threads keep the nice 19 a new version loads at? Per-thread nice and CPU of a server across hot swaps (issue 25).

    python -m bench.thread_priorities [--store model_store] [--settle-s 3] [--out bench/results]

A new model version loads at nice 19 (`service/engine/thread_priority.py`) so it takes what the serving threads
leave. A thread created inside that block (an OpenMP worker, a tokenizer pool) would inherit nice 19 and keep it
while it serves, slowing every request of the new version on a busy machine: a suspect for the soak's latency
drift. This serves a copy of the model store (`bench.soak.prepare_store`), sends light classification traffic,
swaps every model in turn (`bench.hot_swap.swap_once`) and records, before and after each swap, every thread of
the server process: its nice value and the CPU it used since the last record (from `/proc/<pid>/task/*/stat`).
The check: no thread at a nice other than the process's own after the last swap. Linux only. Writes
`<out>/thread_priorities_cpu.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.hot_swap import swap_once
from bench.live_load import RESULTS_DIR
from bench.result_files import write_results
from bench.server_process import ServerProcess
from bench.soak import prepare_store
from service.settings import REPO_ROOT

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_records(pid: int) -> dict[int, dict[str, Any]]:
    """{thread id: {"name", "nice", "cpu_s"}} for every thread of `pid` (cpu_s: user + system since it started)."""
    records = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended between the listing and the read
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the name: field 3 (state) is fields[0]
        records[int(tid)] = {"name": name, "nice": int(fields[16]),
                             "cpu_s": (int(fields[11]) + int(fields[12])) / CLOCK_TICKS}  # fmt: skip
    return records


def snapshot(label: str, pid: int, before: dict[int, dict[str, Any]] | None) -> dict[str, Any]:
    """The threads now, each with the CPU it used since `before` (all of it for a thread `before` lacks)."""
    now = thread_records(pid)
    threads = []
    for tid, record in sorted(now.items()):
        earlier = (before or {}).get(tid)
        threads.append({"tid": tid, **record, "new": before is not None and earlier is None,
                        "cpu_since_s": record["cpu_s"] - (earlier["cpu_s"] if earlier else 0.0)})  # fmt: skip
    return {"label": label, "threads": threads, "_records": now}


async def light_load(url: str, names: list[str], stop: asyncio.Event) -> int:
    """Classification requests to each classifier in turn until `stop`; how many were answered 200."""
    answered = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while not stop.is_set():
            for name in names:
                reply = await http.post("/v1/classify", json={"inputs": "a fine and moving film", "model": name})
                answered += reply.status_code == 200
            await asyncio.sleep(0.01)
    return answered


async def measure(server: ServerProcess, store: Path, models: dict[str, tuple[Path, str]], settle_s: float) -> dict:
    pid = server.process.pid
    classifiers = [name for name, (_, task) in models.items() if task == "classification"]
    stop = asyncio.Event()
    load = asyncio.create_task(light_load(server.url, classifiers, stop))
    await asyncio.sleep(settle_s)
    snapshots = [snapshot(f"after {settle_s:g} s of load", pid, None)]
    swaps = []
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as admin:
        started = time.perf_counter()
        for name, (bundle_dir, _) in models.items():
            swap = await swap_once(admin, store / name, bundle_dir, name, 2, started)
            swaps.append({"model": name, "old_unloaded_s": swap["old_unloaded"]})
            await asyncio.sleep(settle_s)
            snapshots.append(snapshot(f"after swapping {name}, {settle_s:g} s of load", pid,
                                      snapshots[-1]["_records"]))  # fmt: skip
    stop.set()
    answered = await load
    own_nice = os.getpriority(os.PRIO_PROCESS, pid)
    last = snapshots[-1]["threads"]
    for entry in snapshots:
        del entry["_records"]
    off_nice = [t for t in last if t["nice"] != own_nice]
    return {"process_nice": own_nice, "answered": answered, "swaps": swaps, "snapshots": snapshots,
            "threads_at_another_nice_after_last_swap": len(off_nice), "met": not off_nice}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`python -m bench.thread_priorities`, {result['date']}: one `beem serve --model-store` over "
             f"{len(result['swaps'])} models, light classification load ({result['answered']} answered), every model "
             f"swapped once. Process nice {result['process_nice']}; threads at another nice after the last swap: "
             f"**{result['threads_at_another_nice_after_last_swap']}**.", ""]  # fmt: skip
    for entry in result["snapshots"]:
        lines += [f"**{entry['label']}** ({len(entry['threads'])} threads)", "",
                  "| thread | name | nice | CPU s since the last record | new |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {t['tid']} | {t['name']} | {t['nice']} | {t['cpu_since_s']:.2f} | {'yes' if t['new'] else ''} |"
                  for t in entry["threads"]]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--store", default=str(REPO_ROOT / "model_store"))
    arguments.add_argument("--settle-s", type=float, default=3.0, help="load before the first record and after swaps")
    arguments.add_argument("--out", default=str(RESULTS_DIR))
    arguments.add_argument("--stem", default="thread_priorities_cpu")
    args = arguments.parse_args()
    with tempfile.TemporaryDirectory(prefix="beem-threads-") as tmp:
        store = Path(tmp) / "store"
        models = prepare_store(Path(args.store), store)
        command = [sys.executable, "-m", "service.cli", "serve", "--model-store", str(store), "--poll-interval-s", "0"]
        with ServerProcess(command, ready_timeout_s=300) as server:
            result = asyncio.run(measure(server, store, models, args.settle_s))
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    write_results(Path(args.out), args.stem, result, markdown(result))


if __name__ == "__main__":
    main()
