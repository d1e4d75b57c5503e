"""``mxfed init``: make this server's identity files once, before any part starts.

The signing key, the TLS pair of the federation API, the internal CA and
the certificates of every part and of the operator, each only when absent.
``mxfed run`` does the same on a first start; a deployment that runs its
parts as separate containers (compose, Kubernetes) runs ``mxfed init`` once
(an init container or a job) and hands each part only its own files.
"""

from __future__ import annotations

import argparse

from mxfed.commands.common import add_json_flag, emit
from mxfed.config import PART_NAMES, Config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init", help="make the signing key, the TLS pair and the internal certificates"
    )
    add_json_flag(parser)
    parser.set_defaults(handler=initialise)


async def initialise(args: argparse.Namespace, config: Config) -> int:
    from mxfed.identity_files import ensure_signing_key, ensure_tls_pair
    from mxfed.internal_identity import OPERATOR, Caller
    from mxfed.internal_pki import ca_name, ensure

    config.data_dir.mkdir(parents=True, exist_ok=True)
    key_id = ensure_signing_key(config.signing_key)
    made = ensure_tls_pair(config.tls_certificate, config.tls_private_key, config.server_name)
    issued: list[str] = []
    if config.internal_tls:
        callers = [Caller.part(part) for part in PART_NAMES] + [OPERATOR]
        issued = [
            str(caller)
            for caller in ensure(
                config.internal_tls_directory,
                config.internal_ca_certificate,
                config.internal_ca_key,
                callers,
                ca_name(config),
            )
        ]
    if args.json:
        value = {
            "signing_key_id": str(key_id),
            "signing_key_path": str(config.signing_key),
            "tls_certificate_path": str(config.tls_certificate),
            "tls_pair_made": bool(made),
            "internal_tls_dir": str(config.internal_tls_directory) if config.internal_tls else None,
            "certificates_issued": issued,
        }
        emit(args, value, "")
        return 0
    print(f"signing key {key_id} in {config.signing_key}")
    print(f"TLS pair {'made' if made else 'present'}: {config.tls_certificate}")
    if config.internal_tls:
        print(
            f"internal certificates in {config.internal_tls_directory}: "
            + (", ".join(issued) or "all present")
        )
    return 0
