"""``mxfed run``: the whole server, or one part of it (``--service NAME``); with
``--single-process`` every part in one process (:mod:`mxfed.single_process`).

A part run alone reports a fatal start-up error as one line on stderr and
exit status 78 (see :mod:`mxfed.startup`); an unexpected crash is logged
as one JSON record (with its traceback inside) and exits 1.
"""

from __future__ import annotations

import argparse
import logging

from mxfed.config import PART_NAMES, Config
from mxfed.logs import setup_logging
from mxfed.startup import EXIT_FATAL, StartupError, report_fatal

log = logging.getLogger("mxfed.run")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run every part of mxfed, or one with --service")
    parser.add_argument("--service", choices=PART_NAMES, help="run only this part")
    parser.add_argument(
        "--single-process",
        action="store_true",
        help="run every part in this one process (small deployments; no per-part restarts)",
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, config: Config) -> int:
    if args.service is None and args.single_process:
        from mxfed.single_process import run_single_process

        return await run_single_process(config, args.config)
    if args.service is None:
        from mxfed.supervisor import supervise

        return await supervise(config, args.config)
    setup_logging(args.service, config.log_level, config.log_format)
    try:
        await _run_part(args.service, config)
    except StartupError as exc:
        report_fatal(args.service, exc)
        return EXIT_FATAL
    except Exception:
        log.critical("crashed", exc_info=True)
        return 1
    return 0


async def _ensure_certificate(config: Config, part: str) -> None:
    """Issue this part's certificate if it is missing and the CA key is here.

    Without the CA key (compose and Kubernetes give a part only its own
    certificate), a missing certificate is reported when the part binds.
    """
    from mxfed.internal_identity import Caller
    from mxfed.internal_pki import ensure_in_subprocess

    if config.internal_ca_key.exists():
        await ensure_in_subprocess(config, [Caller.part(part)])


async def _run_part(part: str, config: Config) -> None:
    if part == "accounts" and config.accounts_in_keys:
        raise StartupError(
            "accounts_in_keys is on: the keys process serves the accounts service",
            "set accounts_in_keys: false (MXFED_ACCOUNTS_IN_KEYS=false) on every part "
            "to run accounts as its own process",
        )
    if config.internal_tls:
        await _ensure_certificate(config, part)
    if part == "gateway":
        from gateway.server import run_gateway

        await run_gateway(config)
        return
    from mxfed.database import resolve_database_url
    from mxfed.service_runtime import run_service

    # Compose and Kubernetes set DATABASE_URL; alone on a laptop it is found.
    url, embedded = await resolve_database_url(config.database_url, config.data_dir)
    config.database_url = url
    try:
        await run_service(part, config)
    finally:
        if embedded:
            embedded.stop()
