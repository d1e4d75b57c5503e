"""What a diagnosis produces: steps with an outcome and a cause, and a verdict.

The names (``StepId``, ``Cause`` and ``Outcome`` values) are the stable
vocabulary of the report: the gRPC enums carry the same names upper-cased
behind a prefix, and ``mxfed doctor --json`` prints these values
(docs/doctor.md, docs/doctor-report.schema.json).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class Outcome(enum.Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    #: Not applicable, or impossible after an earlier failure.
    SKIP = "skip"


class StepId(enum.Enum):
    """The checks, in the order they run."""

    SERVER_NAME = "server_name"
    WELL_KNOWN = "well_known"
    SRV = "srv"
    DISCOVERY = "discovery"
    ADDRESSES = "addresses"
    TLS = "tls"
    VERSION = "version"
    CLOCK = "clock"
    SERVER_KEYS = "server_keys"
    NOTARIES = "notaries"
    REACHES_US = "reaches_us"
    DELIVERY = "delivery"
    ROOM_ACL = "room_acl"


class Cause(enum.Enum):
    """Why a step warned or failed."""

    INVALID_SERVER_NAME = "invalid_server_name"
    SERVER_BLOCKED = "server_blocked"
    WELL_KNOWN_HTTP_STATUS = "well_known_http_status"
    WELL_KNOWN_REDIRECT_LOOP = "well_known_redirect_loop"
    WELL_KNOWN_TOO_MANY_REDIRECTS = "well_known_too_many_redirects"
    WELL_KNOWN_NOT_HTTPS = "well_known_not_https"
    WELL_KNOWN_TOO_LARGE = "well_known_too_large"
    WELL_KNOWN_NOT_JSON = "well_known_not_json"
    WELL_KNOWN_INVALID = "well_known_invalid"
    WELL_KNOWN_BLOCKED = "well_known_blocked"
    WELL_KNOWN_TIMEOUT = "well_known_timeout"
    WELL_KNOWN_TLS = "well_known_tls"
    WELL_KNOWN_UNREACHABLE = "well_known_unreachable"
    SRV_LOOKUP_FAILED = "srv_lookup_failed"
    SRV_SERVICE_UNAVAILABLE = "srv_service_unavailable"
    SRV_DEPRECATED = "srv_deprecated"
    SRV_TARGET_CNAME = "srv_target_cname"
    DNS_NO_ADDRESS = "dns_no_address"
    DNS_LOOKUP_FAILED = "dns_lookup_failed"
    IP_BLOCKED = "ip_blocked"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_TIMEOUT = "connection_timeout"
    CONNECTION_FAILED = "connection_failed"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    CERTIFICATE_NAME_MISMATCH = "certificate_name_mismatch"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CERTIFICATE_UNTRUSTED = "certificate_untrusted"
    HTTP_ERROR = "http_error"
    INVALID_RESPONSE = "invalid_response"
    CLOCK_SKEW = "clock_skew"
    KEY_INVALID = "key_invalid"
    KEY_EXPIRED = "key_expired"
    KEY_EXPIRES_SOON = "key_expires_soon"
    KEY_NOT_CURRENT = "key_not_current"
    NOTARY_UNREACHABLE = "notary_unreachable"
    NOTARY_ANSWER_INVALID = "notary_answer_invalid"
    NOTARY_CANNOT_FETCH_OUR_KEYS = "notary_cannot_fetch_our_keys"
    NOTARY_API_UNAVAILABLE = "notary_api_unavailable"
    CANNOT_REACH_US = "cannot_reach_us"
    STALE_KEY_FOR_US = "stale_key_for_us"
    BACKED_OFF = "backed_off"
    ACL_DENIED = "acl_denied"
    ROOM_UNKNOWN = "room_unknown"
    SERVICE_UNAVAILABLE = "service_unavailable"


@dataclass
class StepResult:
    """One finished check. ``details`` is a JSON object of step-specific facts."""

    step: StepId
    outcome: Outcome
    summary: str
    cause: Cause | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    summary: str
    cause: Cause | None = None
    step: StepId | None = None
    #: Causes of the other steps that warned or failed, in step order.
    other_causes: tuple[Cause, ...] = ()


def verdict_of(server_name: str, steps: Sequence[StepResult]) -> Verdict:
    """The first failure, else the first warning, else a pass."""
    for outcome in (Outcome.FAIL, Outcome.WARN):
        first = next((step for step in steps if step.outcome is outcome), None)
        if first is None:
            continue
        others = tuple(
            step.cause
            for step in steps
            if step is not first and step.cause is not None and step.outcome is not Outcome.PASS
        )
        summary = f"{first.step.value}: {first.summary}"
        if others:
            summary += f" (also: {', '.join(cause.value for cause in others)})"
        return Verdict(outcome, summary, first.cause, first.step, others)
    passed = sum(1 for step in steps if step.outcome is Outcome.PASS)
    return Verdict(Outcome.PASS, f"federation with {server_name} works ({passed} checks passed)")
