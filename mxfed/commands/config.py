"""``mxfed config check`` and ``mxfed config sample``.

``check`` loads the configuration exactly as every part does (file, then
environment) and says whether it is usable: exit 0 and a summary, or the
``configuration error:`` line and exit 78. ``sample`` prints every option
with its documentation and default, generated from the one definition of
the options (:class:`mxfed.config.Config`).
"""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from mxfed.config import ConfigError, load_config, sample_yaml, unknown_environment_variables
from mxfed.startup import EXIT_FATAL


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="check the configuration, or print a sample")
    actions = parser.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="load the configuration and report problems")
    check.add_argument("--json", action="store_true", help="print the loaded options as JSON")
    check.set_defaults(handler=check_config, without_config=True)
    sample = actions.add_parser("sample", help="print an annotated config file with defaults")
    sample.set_defaults(handler=print_sample, without_config=True)


async def check_config(args: argparse.Namespace) -> int:
    source = args.config or os.environ.get("MXFED_CONFIG")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if args.json:
            print(orjson.dumps({"ok": False, "error": str(exc)}).decode())
        print(f"mxfed: configuration error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    ignored = unknown_environment_variables(os.environ)
    if args.json:
        value = {
            "ok": True,
            "file": source,
            "ignored_environment": ignored,
            "options": config.model_dump(mode="json"),
        }
        print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"configuration ok: {source or 'no file, defaults and environment'}")
    parts = " ".join(config.run)
    print(f"  server_name {config.server_name}, data_dir {config.data_dir}, parts {parts}")
    for name in ignored:
        print(f"  ignored: {name} is not an option")
    return 0


async def print_sample(args: argparse.Namespace) -> int:
    sys.stdout.write(sample_yaml())
    return 0
