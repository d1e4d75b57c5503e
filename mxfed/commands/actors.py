"""``mxfed actors add NAME``: a certificate for a local actor (a bot or a bridge).

A local actor reaches mxfed's gRPC API over the internal plane's mutual TLS
with a certificate from the deployment's CA naming it (``mxfed:actor/NAME``);
it may call the Perform*/Query*/Stream* surface a bot needs (see
``mxfed/internal_access.py``), never signing or federation input. ``add``
issues one into ``<internal_tls_dir>/actor-NAME/`` (``tls.crt``, ``tls.key``,
``ca.crt``): the files an operator hands to the bot. ``list`` shows them.
"""

from __future__ import annotations

import argparse
import sys

from mxfed.commands.common import add_json_flag, emit
from mxfed.config import Config
from mxfed.internal_identity import (
    CERTIFICATE_FILE,
    Caller,
    CallerKind,
    identity_directory,
    server_name_of,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("actors", help="certificates of local actors (bots, bridges)")
    actions = parser.add_subparsers(dest="actors_action", required=True)
    add = actions.add_parser("add", help="issue a certificate for a new actor")
    add.add_argument("name", help="the actor's name (a-z 0-9 . _ -)")
    add_json_flag(add)
    add.set_defaults(handler=add_actor)
    listing = actions.add_parser("list", help="the actors with a certificate here")
    add_json_flag(listing)
    listing.set_defaults(handler=list_actors)


async def add_actor(args: argparse.Namespace, config: Config) -> int:
    from mxfed.internal_pki import issue

    try:
        caller = Caller.actor(args.name)
    except ValueError as exc:
        print(f"mxfed actors add: {exc}", file=sys.stderr)
        return 2
    directory = identity_directory(config.internal_tls_directory, caller)
    if (directory / CERTIFICATE_FILE).exists():
        print(
            f"mxfed actors add: {caller} already has a certificate in {directory}",
            file=sys.stderr,
        )
        return 1
    issue(directory, caller, config.internal_ca_certificate, config.internal_ca_key)
    if args.json:
        emit(args, {"actor": str(caller), "directory": str(directory)}, "")
        return 0
    print(f"issued {caller}: {directory}/")
    print("  tls.crt, tls.key (keep secret) and ca.crt: hand this directory to the bot.")
    print(
        "  It connects with mutual TLS to the services' addresses and checks the server name "
        f"<service>.mxfed.internal (e.g. {server_name_of('events')}) whatever address it dials;"
    )
    print(
        "  with mxfed's own client code: internal_tls_dir pointing at the directory that holds "
        f"actor-{caller.name}/, and Caller.actor({caller.name!r})."
    )
    return 0


async def list_actors(args: argparse.Namespace, config: Config) -> int:
    directory = config.internal_tls_directory
    prefix = f"{CallerKind.ACTOR.value}-"
    names = sorted(
        path.name.removeprefix(prefix)
        for path in directory.glob(f"{prefix}*")
        if (path / CERTIFICATE_FILE).exists()
    )
    for name in names:
        emit(
            args,
            {"actor": str(Caller.actor(name)), "directory": str(directory / (prefix + name))},
            f"{Caller.actor(name)}  {directory / (prefix + name)}/",
        )
    if not names and not args.json:
        print(f"no actor certificates in {directory}")
    return 0
