"""The `beem` console script: the offline commands of `beem.cli` plus `beem serve`.

It lives in `service` because serving depends on the offline package, never the other way round (DESIGN 4).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from beem import cli as offline_cli
from beem.bundle.manifest import BundleError
from loadtest import cli as loadtest_cli
from service.engine.classify.group_selection import GROUP_SELECTION_RULES

SERVE_FLAGS = (
    ("--model-store", str, "serve every model directory under this folder"),
    ("--default-model", str, "the model answering requests that name none"),
    ("--poll-interval-s", float, "look for new model versions this often (0: only on reload or SIGHUP)"),
    ("--shadow-fraction", float, "share of early-exited rows re-run at full depth for the agreement monitor"),
    ("--alpha-control-target", float, "online control: agreement to hold (default: 1 - ltt epsilon, or calibration's)"),
    ("--latency-slo-ms", float, "online control: loosen the threshold while p95 is over this, within the budget"),
    ("--host", str, "interface to listen on (default 127.0.0.1)"),
    ("--port", int, "port (default 8000; 0 picks a free one)"),
    ("--device", str, "auto | cpu | cuda"),
    ("--dtype", str, "auto | float32 | float16 | bfloat16"),
    ("--max-batch-size", int, "rows in the engine at once, at any depth"),
    ("--max-batch-wait-ms", float, "how long an idle engine's first row waits for others"),
    ("--max-batch-tokens", int, "padded tokens in the engine at once"),
    ("--max-queue", int, "rows waiting to join the engine before 429"),
    ("--max-queue-wait-ms", float, "expected queue wait before 429"),
    ("--refusal-pace-ms", float, "a 429 for load is answered after this long (0: at once)"),
    ("--group-selection", str, f"{' | '.join(GROUP_SELECTION_RULES)}: which group of rows runs next"),
    ("--request-timeout-s", float, "seconds before a request gets 504"),
    ("--max-input-tokens", int, "tokens per input (default: the bundle's max_length)"),
    ("--max-inputs-per-request", int, "inputs in one request before 413"),
    ("--torch-threads", int, "CPU threads for torch"),
    (
        "--engine-path",
        str,
        "auto | host | device | compiled: device keeps decisions on the GPU, compiled "
        "torch.compiles the host path's layers (auto: device on CUDA, host otherwise)",
    ),
    ("--header-timeout-s", float, "seconds for a request's line and headers to arrive before 408"),
    ("--body-timeout-s", float, "seconds for a request's body to arrive before 408"),
    ("--max-header-bytes", int, "request line and headers before 431"),
    ("--keep-alive-timeout-s", int, "seconds an idle keep-alive connection stays open"),
    ("--max-connections", int, "connections or requests at once before 503"),
    ("--shutdown-drain-s", float, "after SIGTERM, keep answering open connections this long"),
    ("--step-row-buckets", str, "device path: row buckets, e.g. 1,2,4,8,16,32,64,128"),
    ("--step-token-buckets", str, "device path: token buckets, e.g. 16,32,64,128,256"),
)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.http_protocol import ConnectionLimits, guarded_protocol
    from service.settings import ServerSettings

    overrides = {
        flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, _, _ in SERVE_FLAGS
    }
    bundles = args.bundle or []
    if bundles:
        overrides["bundle"], overrides["more_bundles"] = bundles[0], bundles[1:]
    if args.alpha_control:
        overrides["alpha_control"] = args.alpha_control
    try:
        settings = ServerSettings(**{key: value for key, value in overrides.items() if value is not None})
        app = create_app(settings)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        print(f"beem serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    except BundleError as error:
        print(f"beem serve: cannot serve this bundle: {error}", file=sys.stderr)
        return 2

    def draining() -> None:  # readiness says no from the signal on: a load balancer stops sending
        app.state.shutting_down = True

    limits = ConnectionLimits(header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
                              max_header_bytes=settings.max_header_bytes, drain_s=settings.shutdown_drain_s,
                              on_drain=draining)  # fmt: skip
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="info", access_log=settings.access_log,
        timeout_graceful_shutdown=60, http=guarded_protocol(limits),  # type: ignore[arg-type]
        timeout_keep_alive=settings.keep_alive_timeout_s, limit_concurrency=settings.max_connections,
    )  # fmt: skip
    return 0


def parser() -> argparse.ArgumentParser:
    root = offline_cli.parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.add_parser("serve", help="serve a bundle over HTTP (FastAPI + uvicorn)")
    serve.add_argument("--bundle", action="append", help="a bundle directory to serve (a model directory: its "
                       "latest version, swapped as new ones appear; repeat for several models; default: the committed "
                       "default bundle)")  # fmt: skip
    serve.add_argument(
        "--alpha-control",
        action="append",
        metavar="MODEL",
        help="control this model's default-policy threshold online ('all': every model; repeatable)",
    )
    for flag, kind, help_text in SERVE_FLAGS:
        serve.add_argument(flag, type=kind, help=help_text)
    serve.set_defaults(handler=_serve)
    loadtest_cli.add_command(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return offline_cli.run(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
