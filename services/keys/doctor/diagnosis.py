"""The checks of ``mxfed doctor``: why federation with a server does or does not work.

For a remote server: its name, server discovery as the spec orders it
(https://spec.matrix.org/v1.19/server-server-api/#resolving-server-names),
the addresses it resolves to and our IP block list's judgement of each, TCP
and TLS on each address (the chain as presented, the names and dates, and
what a verifying peer concludes), ``/_matrix/federation/v1/version``, its clock
(from the ``Date`` of that answer), its signed keys, whether it can fetch our
keys (it is asked, as a notary, for them), the sender's queue and backoff for
it, and optionally the server ACLs of some rooms.

For our own server: the names we answer to, the same discovery, address and
TLS checks against our public name through our own federation client (the
block lists apply, with their allow-list), our version and published keys,
and whether each trusted notary can fetch our keys.

Everything goes through :mod:`mxfed.federation_client` (its resolver, block
lists and transport), with a client of its own per diagnosis so that no cache
answers for the network, no retry hides a failure and the shared clients'
pools are left alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from matrix_protocol.server_names import (
    is_connectable_port,
    is_valid_server_name,
    parse_server_name,
)
from matrix_protocol.signing import encode_verify_key
from mxfed.config import Config
from mxfed.federation_client import (
    DiscoveryRule,
    DiscoveryTrail,
    DnsLookupError,
    DnsResolver,
    FederationClient,
    FederationError,
    FederationResponse,
    IpDecision,
    OutboundOptions,
    ResolvedServer,
    WellKnownFailure,
    build_ssl_context,
    federation_path,
)
from mxfed.federation_client.resolver import is_ip_address
from mxfed.server_policy import SERVER_POLICY
from services.keys.doctor.judgements import (
    ALLOWED_OPTION,
    CERTIFICATE_CAUSES,
    RULE_REASONS,
    VERIFY_TLS_OPTION,
    WELL_KNOWN_CAUSES,
    certificate_file_facts,
    clock_skew,
    for_how_long,
    host_port,
    ip_reason,
    iso_ms,
    judge_probe,
    means_no_delegation,
    request_failure,
    well_known_problem,
)
from services.keys.doctor.probes import probe_address
from services.keys.doctor.report import Cause, Outcome, StepId, StepResult
from services.keys.doctor.sources import (
    DeliveryStates,
    RoomAccessChecks,
    ServiceUnavailable,
)
from services.keys.keyring import KeyResponseError, Notary, parse_server_keys, signed_by_notary
from services.keys.own_keys import OwnKeys

#: At most this many targets and addresses are looked at (SRV can list many).
MAX_TARGETS = 8
MAX_ADDRESSES = 8
#: Published keys valid for less than this get a warning (NOTSPEC: a
#: remote server refetching keys that are about to expire keeps working, but
#: one that cannot reach the server in time can no longer check its events).
KEY_VALIDITY_WARNING_MS = 3600 * 1000
#: Clock difference (seconds) that warns, and that fails: key validity,
#: certificate dates and event timestamps are all judged by clocks.
CLOCK_SKEW_WARNING = 30.0
CLOCK_SKEW_FAILURE = 600.0
#: Asking a server to fetch our keys waits for its own fetch from us.
REACHES_US_TIMEOUT = 30.0
KEY_SERVER_PATH = federation_path("_matrix", "key", "v2", "server")
KEY_QUERY_PATH = federation_path("_matrix", "key", "v2", "query")
VERSION_PATH = federation_path("_matrix", "federation", "v1", "version")

OWN_STEPS = (
    StepId.SERVER_NAME,
    StepId.WELL_KNOWN,
    StepId.SRV,
    StepId.DISCOVERY,
    StepId.ADDRESSES,
    StepId.TLS,
    StepId.VERSION,
    StepId.SERVER_KEYS,
    StepId.NOTARIES,
)
REMOTE_STEPS = (
    StepId.SERVER_NAME,
    StepId.WELL_KNOWN,
    StepId.SRV,
    StepId.DISCOVERY,
    StepId.ADDRESSES,
    StepId.TLS,
    StepId.VERSION,
    StepId.CLOCK,
    StepId.SERVER_KEYS,
    StepId.REACHES_US,
    StepId.DELIVERY,
    StepId.ROOM_ACL,
)


def diagnosis_options(base: OutboundOptions) -> OutboundOptions:
    """The configured outbound options, without retries and with short deadlines.

    A diagnosis reports the first failure instead of hiding it behind a retry.
    """
    return dataclasses.replace(
        base,
        max_retries=0,
        long_max_retries=0,
        request_timeout=min(base.request_timeout, 15.0),
        connect_timeout=min(base.connect_timeout, 10.0),
        well_known_timeout=min(base.well_known_timeout, 15.0),
        max_connections_per_host=2,
    )


class FederationDoctor:
    """Runs diagnoses; one instance per keys process.

    ``dns`` makes the DNS resolver of each diagnosis's client (tests inject
    a static one); by default each client owns an :class:`AiodnsResolver`.
    """

    def __init__(
        self,
        config: Config,
        own_keys: OwnKeys,
        options: OutboundOptions,
        deliveries: DeliveryStates,
        rooms: RoomAccessChecks,
        notaries: Sequence[Notary] = (),
        *,
        dns: Callable[[], DnsResolver] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.own_keys = own_keys
        self.options = diagnosis_options(options)
        self.deliveries = deliveries
        self.rooms = rooms
        self.notaries = list(notaries)
        self._dns = dns
        self.clock = clock

    @property
    def server_name(self) -> str:
        return self.config.server_name

    def _client(self) -> FederationClient:
        key = self.own_keys.current()
        return FederationClient(
            self.server_name,
            key.signing_key,
            key.key_id,
            self.options,
            dns=self._dns() if self._dns is not None else None,
        )

    async def diagnose(
        self, server_name: str = "", room_ids: Sequence[str] = ()
    ) -> AsyncIterator[StepResult]:
        """Each step's result as soon as it is known, in :data:`OWN_STEPS` or
        :data:`REMOTE_STEPS` order (empty or our own name: our own server)."""
        target = server_name or self.server_name
        async with self._client() as client:
            run = _Diagnosis(self, client, target, target == self.server_name, list(room_ids))
            async for step in run.steps():
                yield step


def _usable_server_name(name: str) -> bool:
    """Valid grammar, and a port one can connect to."""
    return is_valid_server_name(name) and is_connectable_port(parse_server_name(name)[1])


class _Diagnosis:
    """One diagnosis: the steps share what earlier steps found."""

    def __init__(
        self,
        doctor: FederationDoctor,
        client: FederationClient,
        target: str,
        own: bool,
        room_ids: list[str],
    ) -> None:
        self.doctor = doctor
        self.client = client
        self.target = target
        self.own = own
        self.room_ids = room_ids
        self.trail = DiscoveryTrail()
        self.resolved: ResolvedServer | None = None
        self.resolve_error: FederationError | None = None
        self.resolve_seconds = 0.0
        self._resolve_done = False
        self.addresses: list[tuple[str, int]] = []
        #: Some address completed a TLS handshake our client accepts.
        self.tls_usable = False
        self.version_answer: tuple[FederationResponse, float, float] | None = None

    # -- running ------------------------------------------------------------------

    async def steps(self) -> AsyncIterator[StepResult]:
        plan = OWN_STEPS if self.own else REMOTE_STEPS
        checks: dict[StepId, Callable[[], Awaitable[StepResult]]] = {
            StepId.SERVER_NAME: self.names_we_answer_to if self.own else self.server_name,
            StepId.WELL_KNOWN: self.well_known,
            StepId.SRV: self.srv,
            StepId.DISCOVERY: self.discovery,
            StepId.ADDRESSES: self.address_list,
            StepId.TLS: self.tls,
            StepId.VERSION: self.version,
            StepId.CLOCK: self.clock,
            StepId.SERVER_KEYS: self.server_keys,
            StepId.NOTARIES: self.notaries,
            StepId.REACHES_US: self.reaches_us,
            StepId.DELIVERY: self.delivery,
            StepId.ROOM_ACL: self.room_acl,
        }
        for step in plan:
            reason = self._cannot_run(step)
            if reason is not None:
                yield StepResult(step, Outcome.SKIP, f"not run: {reason}")
                continue
            started = time.perf_counter()
            result = await checks[step]()
            if not result.seconds:
                result.seconds = time.perf_counter() - started
            yield result

    def _cannot_run(self, step: StepId) -> str | None:
        """Why ``step`` cannot run after what the earlier steps found, if so."""
        if step is not StepId.SERVER_NAME and not _usable_server_name(self.target):
            return "the server name is invalid"
        if step in (StepId.WELL_KNOWN, StepId.SRV, StepId.DISCOVERY):
            return None
        if step is StepId.ADDRESSES and self.resolved is None:
            return "discovery failed"
        if step is StepId.TLS and not self.addresses:
            return "no address we may connect to"
        needs_connection = (
            StepId.VERSION,
            StepId.CLOCK,
            StepId.SERVER_KEYS,
            StepId.REACHES_US,
        )
        if step in needs_connection and not self.tls_usable:
            return "no address gave a TLS connection we accept (see tls)"
        if step is StepId.CLOCK and self.version_answer is None:
            return "the version request failed"
        return None

    async def _resolve(self) -> None:
        """Discovery, once, recording the trail the first three steps report."""
        if self._resolve_done:
            return
        self._resolve_done = True
        started = time.perf_counter()
        try:
            self.resolved = await self.client.resolver.resolve(self.target, trail=self.trail)
        except FederationError as exc:
            self.resolve_error = exc
        self.resolve_seconds = time.perf_counter() - started

    # -- server name ------------------------------------------------------------------

    async def server_name(self) -> StepResult:
        if not is_valid_server_name(self.target):
            return StepResult(
                StepId.SERVER_NAME,
                Outcome.FAIL,
                f"{self.target!r} is not a valid server name (hostname[:port])",
                Cause.INVALID_SERVER_NAME,
                {"server_name": self.target},
            )
        host, port = parse_server_name(self.target)
        details: dict[str, Any] = {
            "server_name": self.target,
            "hostname": host,
            "port": port,
            "ip_literal": is_ip_address(host),
        }
        if not is_connectable_port(port):
            return StepResult(
                StepId.SERVER_NAME,
                Outcome.FAIL,
                f"{self.target} is a valid name, but nothing can listen on port {port}",
                Cause.INVALID_SERVER_NAME,
                details,
            )
        if SERVER_POLICY.blocks(self.target):
            # mxfed servers block: we refuse its requests and send it nothing.
            details["blocked"] = True
            return StepResult(
                StepId.SERVER_NAME,
                Outcome.FAIL,
                f"{self.target} is blocked on this server (mxfed servers list; "
                "mxfed servers unblock to federate again)",
                Cause.SERVER_BLOCKED,
                details,
            )
        kind = "an IP address" if is_ip_address(host) else "a DNS name"
        with_port = f" with port {port}" if port is not None else ""
        return StepResult(
            StepId.SERVER_NAME,
            Outcome.PASS,
            f"{self.target} is {kind}{with_port}",
            details=details,
        )

    async def names_we_answer_to(self) -> StepResult:
        config = self.doctor.config
        details: dict[str, Any] = {
            "server_name": config.server_name,
            "well_known_server": config.well_known_server,
            "certificate_file": str(config.tls_certificate),
        }
        try:
            facts = certificate_file_facts(config.tls_certificate)
        except (OSError, ValueError) as exc:
            details["certificate_error"] = str(exc)
            facts = None
        if facts is not None:
            details["certificate"] = facts.as_json()
        if not _usable_server_name(config.server_name):
            return StepResult(
                StepId.SERVER_NAME,
                Outcome.FAIL,
                f"our server_name {config.server_name!r} is not a valid server name",
                Cause.INVALID_SERVER_NAME,
                details,
            )
        names = [config.server_name]
        if config.well_known_server:
            names.append(f"{config.well_known_server} (our well-known delegation)")
        if facts is not None:
            names.append(f"certificate for {', '.join(facts.names) or 'no name'}")
        return StepResult(StepId.SERVER_NAME, Outcome.PASS, "; ".join(names), details=details)

    # -- discovery ----------------------------------------------------------------------

    async def well_known(self) -> StepResult:
        await self._resolve()
        response = self.trail.well_known
        if response is None:
            reason = (
                RULE_REASONS[self.trail.rule]
                if self.trail.rule in (DiscoveryRule.IP_LITERAL, DiscoveryRule.EXPLICIT_PORT)
                else "no well-known lookup was made"
            )
            return StepResult(StepId.WELL_KNOWN, Outcome.SKIP, f"not asked: {reason}")
        host, _ = parse_server_name(self.target)
        details: dict[str, Any] = {
            "url": response.hops[0].url if response.hops else None,
            "delegated_server": response.server,
            "failure": response.failure.value if response.failure else None,
            "error": response.error,
            "hops": [dataclasses.asdict(hop) for hop in response.hops],
        }
        seconds = self.trail.well_known_seconds
        if response.server is not None:
            return StepResult(
                StepId.WELL_KNOWN,
                Outcome.PASS,
                f"{host} delegates to {response.server}",
                details=details,
                seconds=seconds,
            )
        if means_no_delegation(response):
            why = (
                "nothing listens on port 443"
                if response.failure is WellKnownFailure.CONNECTION_REFUSED
                else f"HTTP {response.hops[-1].status}"
            )
            return StepResult(
                StepId.WELL_KNOWN,
                Outcome.PASS,
                f"no delegation ({why})",
                details=details,
                seconds=seconds,
            )
        assert response.failure is not None
        summary = f"well-known of {host} is unusable: {well_known_problem(response)}"
        if response.failure is WellKnownFailure.BLOCKED:
            decisions = await self._explain_host(host, details)
            blocked = [d for d in decisions if not d.allowed]
            if blocked:
                summary = f"well-known of {host} not fetched: {ip_reason(blocked[0])}"
        summary += "; discovery goes on as if there were none"
        return StepResult(
            StepId.WELL_KNOWN,
            Outcome.WARN,
            summary,
            WELL_KNOWN_CAUSES[response.failure],
            details,
            seconds,
        )

    async def _explain_host(self, host: str, details: dict[str, Any]) -> list[IpDecision]:
        try:
            ips = await self.client.dns.resolve_host(host)
        except DnsLookupError as exc:
            details["address_error"] = str(exc)
            return []
        decisions = [self.client.ip_filter.explain(ip) for ip in ips[:MAX_ADDRESSES]]
        details["addresses"] = [dataclasses.asdict(decision) for decision in decisions]
        return decisions

    async def srv(self) -> StepResult:
        await self._resolve()
        lookups = self.trail.srv_lookups
        if not lookups:
            reason = (
                RULE_REASONS[self.trail.rule]
                if self.trail.rule is not None
                else "discovery stopped before it"
            )
            return StepResult(StepId.SRV, Outcome.SKIP, f"not asked: {reason}")
        started = time.perf_counter()
        answered = next((lookup for lookup in lookups if lookup.records), None)
        cnames: dict[str, str] = {}
        cname_errors: dict[str, str] = {}
        if answered is not None:
            targets = {r.target for r in answered.records if r.target not in ("", ".")}
            for target in sorted(targets)[:MAX_TARGETS]:
                try:
                    canonical = await self.client.dns.resolve_cname(target)
                except DnsLookupError as exc:
                    cname_errors[target] = str(exc)
                    continue
                if canonical is not None:
                    cnames[target] = canonical
        details: dict[str, Any] = {
            "lookups": [
                {
                    "name": lookup.name,
                    "deprecated": lookup.deprecated,
                    "from_cache": lookup.from_cache,
                    "error": lookup.error,
                    "records": [
                        {
                            "priority": r.priority,
                            "weight": r.weight,
                            "port": r.port,
                            "target": r.target,
                            "cname": cnames.get(r.target),
                        }
                        for r in lookup.records
                    ],
                }
                for lookup in lookups
            ],
            "answered_by": answered.name if answered else None,
        }
        if cname_errors:
            details["cname_errors"] = cname_errors
        seconds = sum(lookup.seconds for lookup in lookups) + time.perf_counter() - started
        failed = next((lookup for lookup in lookups if lookup.error), None)
        if failed is not None:
            return StepResult(
                StepId.SRV,
                Outcome.FAIL,
                f"SRV lookup {failed.name} failed: {failed.error}",
                Cause.SRV_LOOKUP_FAILED,
                details,
                seconds,
            )
        if answered is None:
            names = " and ".join(lookup.name for lookup in lookups)
            return StepResult(
                StepId.SRV,
                Outcome.PASS,
                f"no SRV records ({names})",
                details=details,
                seconds=seconds,
            )
        listed = ", ".join(
            f"{r.target}:{r.port} (priority {r.priority}, weight {r.weight})"
            for r in answered.records
        )
        if all(r.target in ("", ".") for r in answered.records):
            return StepResult(
                StepId.SRV,
                Outcome.FAIL,
                f"{answered.name} says the service is not available here (target '.')",
                Cause.SRV_SERVICE_UNAVAILABLE,
                details,
                seconds,
            )
        if cnames:
            alias, canonical = next(iter(cnames.items()))
            return StepResult(
                StepId.SRV,
                Outcome.WARN,
                f"{answered.name} points at {alias}, an alias (CNAME) of {canonical}: "
                "SRV targets must not be aliases (RFC 2782); some servers will not follow it",
                Cause.SRV_TARGET_CNAME,
                details,
                seconds,
            )
        if answered.deprecated:
            return StepResult(
                StepId.SRV,
                Outcome.WARN,
                f"only the deprecated {answered.name} exists: {listed}; "
                f"publish _matrix-fed._tcp{answered.name.removeprefix('_matrix._tcp')} too",
                Cause.SRV_DEPRECATED,
                details,
                seconds,
            )
        return StepResult(
            StepId.SRV, Outcome.PASS, f"{answered.name}: {listed}", details=details, seconds=seconds
        )

    async def discovery(self) -> StepResult:
        await self._resolve()
        resolved = self.resolved
        if resolved is None:
            error = self.resolve_error
            cause = (
                Cause.SRV_SERVICE_UNAVAILABLE
                if any(
                    lookup.records and all(r.target in ("", ".") for r in lookup.records)
                    for lookup in self.trail.srv_lookups
                )
                else Cause.SRV_LOOKUP_FAILED
            )
            return StepResult(
                StepId.DISCOVERY,
                Outcome.FAIL,
                f"discovery failed: {error}",
                cause,
                {"error": str(error)},
                self.resolve_seconds,
            )
        rule = self.trail.rule
        assert rule is not None
        targets = ", ".join(host_port(host, port) for host, port in resolved.targets)
        delegated = self.trail.delegated
        summary = (
            f"{RULE_REASONS[rule]}: connect to {targets}, Host: {resolved.host_header}, "
            f"certificate must hold {resolved.cert_host}"
        )
        if delegated is not None:
            summary = f"delegated to {delegated}; " + summary
        return StepResult(
            StepId.DISCOVERY,
            Outcome.PASS,
            summary,
            details={
                "rule": rule.value,
                "delegated_server": delegated,
                "host_header": resolved.host_header,
                "tls_server_name": resolved.tls_server_name,
                "certificate_name": resolved.cert_host,
                "targets": [{"host": host, "port": port} for host, port in resolved.targets],
            },
            seconds=self.resolve_seconds,
        )

    # -- addresses and TLS --------------------------------------------------------------

    async def address_list(self) -> StepResult:
        assert self.resolved is not None
        found: list[dict[str, Any]] = []
        lookup_errors: list[dict[str, Any]] = []
        decisions: list[tuple[IpDecision, int]] = []
        not_found = True
        for host, port in self.resolved.targets[:MAX_TARGETS]:
            if is_ip_address(host):
                ips = [host.strip("[]")]
            else:
                try:
                    ips = await self.client.dns.resolve_host(host)
                except DnsLookupError as exc:
                    not_found = not_found and exc.not_found
                    lookup_errors.append({"target": host, "error": str(exc)})
                    continue
            for ip in ips[:MAX_ADDRESSES]:
                decision = self.client.ip_filter.explain(ip)
                decisions.append((decision, port))
                found.append({"target": host, "port": port, **dataclasses.asdict(decision)})
        details: dict[str, Any] = {"addresses": found, "lookup_errors": lookup_errors}
        if not decisions:
            error = "; ".join(entry["error"] for entry in lookup_errors)
            return StepResult(
                StepId.ADDRESSES,
                Outcome.FAIL,
                f"no address: {error}",
                Cause.DNS_NO_ADDRESS if not_found else Cause.DNS_LOOKUP_FAILED,
                details,
            )
        self.addresses = [(d.address, port) for d, port in decisions if d.allowed][:MAX_ADDRESSES]
        blocked = [d for d, _ in decisions if not d.allowed]
        if blocked and not self.addresses:
            # Our own server: the block list keeps this check (not the world) out.
            outcome = Outcome.WARN if self.own else Outcome.FAIL
            return StepResult(
                StepId.ADDRESSES,
                outcome,
                f"every address is blocked: {ip_reason(blocked[0])}",
                Cause.IP_BLOCKED,
                details,
            )
        listed = ", ".join(
            host_port(d.address, port)
            + (f" (allowed by {d.allowed_by} of {ALLOWED_OPTION})" if d.blocked_by else "")
            for d, port in decisions
            if d.allowed
        )
        if blocked:
            return StepResult(
                StepId.ADDRESSES,
                Outcome.WARN,
                f"{listed}; skipped: {ip_reason(blocked[0])}",
                Cause.IP_BLOCKED,
                details,
            )
        return StepResult(StepId.ADDRESSES, Outcome.PASS, listed, details=details)

    async def tls(self) -> StepResult:
        assert self.resolved is not None
        options = self.doctor.options
        trust = build_ssl_context(dataclasses.replace(options, verify_tls=True))
        expected = self.resolved.cert_host
        sni = self.resolved.tls_server_name
        probes = await asyncio.gather(
            *(
                probe_address(
                    address,
                    port,
                    sni=sni,
                    expected=expected,
                    trust=trust,
                    attempt_timeout=options.connect_timeout,
                )
                for address, port in self.addresses
            )
        )
        # Our own certificate is judged by the world, which verifies it.
        refused_here = self.own or options.verify_tls
        judged = [judge_probe(probe, expected, self.doctor.clock()) for probe in probes]
        self.tls_usable = any(
            probe.handshake_done and (cause is None or not options.verify_tls)
            for probe, (_, cause, _) in zip(probes, judged, strict=True)
        )
        details = {
            "certificate_name": expected,
            "sni": sni,
            "verify_tls": options.verify_tls,
            "addresses": [entry for entry, _, _ in judged],
        }
        failing = [(cause, text) for _, cause, text in judged if cause is not None]
        if not failing:
            summary = "; ".join(text for _, _, text in judged)
            return StepResult(StepId.TLS, Outcome.PASS, summary, details=details)
        cause, text = failing[0]
        certificate_only = all(found in CERTIFICATE_CAUSES for found, _ in failing) and all(
            probe.handshake_done for probe in probes
        )
        if certificate_only and not refused_here:
            return StepResult(
                StepId.TLS,
                Outcome.WARN,
                f"{text} (accepted here: {VERIFY_TLS_OPTION} is off; servers that verify "
                "certificates, as the spec requires, refuse it)",
                cause,
                details,
            )
        outcome = Outcome.FAIL if len(failing) == len(probes) else Outcome.WARN
        return StepResult(StepId.TLS, outcome, text, cause, details)

    # -- over HTTP ------------------------------------------------------------------------

    async def version(self) -> StepResult:
        sent_at = self.doctor.clock()
        try:
            response = await self.client.request("GET", self.target, VERSION_PATH, sign=False)
        except FederationError as exc:
            cause, text = request_failure(exc)
            return StepResult(StepId.VERSION, Outcome.FAIL, text, cause, {"error": text})
        received_at = self.doctor.clock()
        details: dict[str, Any] = {"status": response.status}
        if response.status != 200:
            return StepResult(
                StepId.VERSION,
                Outcome.FAIL,
                f"{VERSION_PATH} answered HTTP {response.status}",
                Cause.HTTP_ERROR,
                details,
            )
        self.version_answer = (response, sent_at, received_at)
        server = response.body.get("server") if isinstance(response.body, dict) else None
        if not isinstance(server, dict):
            return StepResult(
                StepId.VERSION,
                Outcome.FAIL,
                f"{VERSION_PATH} answered without a server object",
                Cause.INVALID_RESPONSE,
                details,
            )
        details["server"] = server
        name, version = server.get("name"), server.get("version")
        return StepResult(
            StepId.VERSION,
            Outcome.PASS,
            f"{name or 'unnamed'} {version or ''}".strip(),
            details=details,
        )

    async def clock(self) -> StepResult:
        assert self.version_answer is not None
        response, sent_at, received_at = self.version_answer
        header = response.headers.get("Date")
        parsed = email.utils.parsedate_to_datetime(header) if header else None
        if parsed is None:
            return StepResult(StepId.CLOCK, Outcome.SKIP, "its answer had no usable Date header")
        skew = clock_skew(parsed.timestamp(), sent_at, received_at)
        details = {"date": header, "skew_seconds": round(skew, 1)}
        if abs(skew) < CLOCK_SKEW_WARNING:
            return StepResult(StepId.CLOCK, Outcome.PASS, "clocks agree", details=details)
        direction = "ahead of" if skew > 0 else "behind"
        outcome = Outcome.FAIL if abs(skew) >= CLOCK_SKEW_FAILURE else Outcome.WARN
        return StepResult(
            StepId.CLOCK,
            outcome,
            f"its clock is {for_how_long(int(skew * 1000))} {direction} ours (Date: {header})",
            Cause.CLOCK_SKEW,
            details,
        )

    async def server_keys(self) -> StepResult:
        try:
            response = await self.client.request("GET", self.target, KEY_SERVER_PATH, sign=False)
        except FederationError as exc:
            cause, text = request_failure(exc)
            return StepResult(StepId.SERVER_KEYS, Outcome.FAIL, text, cause, {"error": text})
        if response.status != 200:
            return StepResult(
                StepId.SERVER_KEYS,
                Outcome.FAIL,
                f"{KEY_SERVER_PATH} answered HTTP {response.status}",
                Cause.HTTP_ERROR,
                {"status": response.status},
            )
        now = int(self.doctor.clock() * 1000)
        try:
            keys, valid_until_ts = parse_server_keys(response.body, self.target, now, "doctor")
        except KeyResponseError as exc:
            return StepResult(
                StepId.SERVER_KEYS,
                Outcome.FAIL,
                f"its key response is unusable: {exc}",
                Cause.KEY_INVALID,
                {"error": str(exc)},
            )
        current = {key.key_id: key.verify_key for key in keys if key.expired_ts is None}
        details: dict[str, Any] = {
            "verify_keys": current,
            "old_key_ids": sorted(key.key_id for key in keys if key.expired_ts is not None),
            "valid_until_ts": valid_until_ts,
            "valid_for_seconds": (valid_until_ts - now) // 1000,
        }
        ids = ", ".join(sorted(current))
        if self.own:
            ours = self.doctor.own_keys.current()
            ours_b64 = encode_verify_key(ours.signing_key.verify_key)
            if current.get(ours.key_id) != ours_b64:
                return StepResult(
                    StepId.SERVER_KEYS,
                    Outcome.FAIL,
                    f"the keys published for us ({ids}) do not include our signing key "
                    f"{ours.key_id}: something else answers for our name",
                    Cause.KEY_NOT_CURRENT,
                    details,
                )
        if valid_until_ts <= now:
            return StepResult(
                StepId.SERVER_KEYS,
                Outcome.FAIL,
                f"keys {ids} expired {for_how_long(now - valid_until_ts)} ago "
                f"(valid_until_ts {iso_ms(valid_until_ts)})",
                Cause.KEY_EXPIRED,
                details,
            )
        left = for_how_long(valid_until_ts - now)
        if valid_until_ts - now < KEY_VALIDITY_WARNING_MS:
            return StepResult(
                StepId.SERVER_KEYS,
                Outcome.WARN,
                f"keys {ids} are valid for only {left} more",
                Cause.KEY_EXPIRES_SOON,
                details,
            )
        return StepResult(
            StepId.SERVER_KEYS,
            Outcome.PASS,
            f"{ids} self-signed, valid for {left} (until {iso_ms(valid_until_ts)})",
            details=details,
        )

    async def _query_our_keys(
        self, notary: str, request_timeout: float | None = None
    ) -> tuple[FederationResponse | None, Cause | None, str]:
        """Ask ``notary`` for our current key, valid now.

        NOTSPEC: the batch form (``POST /_matrix/key/v2/query``) naming our key
        id, not ``GET /_matrix/key/v2/query/{us}``: Synapse answers the GET
        (no key id given) from its cache only, and an empty cache would read
        as "cannot reach us"; a named key it does not hold makes it fetch.
        """
        now = int(self.doctor.clock() * 1000)
        key_id = self.doctor.own_keys.current().key_id
        body = {"server_keys": {self.doctor.server_name: {key_id: {"minimum_valid_until_ts": now}}}}
        try:
            response = await self.client.request(
                "POST",
                notary,
                KEY_QUERY_PATH,
                json_body=body,
                sign=False,
                timeout=request_timeout,
            )
        except FederationError as exc:
            cause, text = request_failure(exc)
            return None, cause, text
        return response, None, ""

    def _our_key_in(self, body: Any) -> tuple[dict[str, Any] | None, list[str]]:
        """Our key object in a notary answer (if any) and the key ids it has for us."""
        if not isinstance(body, dict) or not isinstance(body.get("server_keys"), list):
            return None, []
        for obj in body["server_keys"]:
            if isinstance(obj, dict) and obj.get("server_name") == self.doctor.server_name:
                verify_keys = obj.get("verify_keys")
                ids = sorted(verify_keys) if isinstance(verify_keys, dict) else []
                return obj, ids
        return None, []

    def _holds_our_current_key(self, obj: dict[str, Any]) -> bool:
        ours = self.doctor.own_keys.current()
        entry = obj.get("verify_keys", {}).get(ours.key_id)
        return isinstance(entry, dict) and entry.get("key") == encode_verify_key(
            ours.signing_key.verify_key
        )

    async def reaches_us(self) -> StepResult:
        us = self.doctor.server_name
        response, cause, text = await self._query_our_keys(self.target, REACHES_US_TIMEOUT)
        if response is None:
            assert cause is not None
            return StepResult(
                StepId.REACHES_US,
                Outcome.WARN,
                f"asking it for our keys failed: {text}",
                cause,
                {"error": text},
            )
        details: dict[str, Any] = {"status": response.status}
        if response.status != 200:
            return StepResult(
                StepId.REACHES_US,
                Outcome.WARN,
                f"it does not answer key queries for other servers (HTTP {response.status}), "
                "so whether it can reach us is unknown",
                Cause.NOTARY_API_UNAVAILABLE,
                details,
            )
        obj, ids = self._our_key_in(response.body)
        details["key_ids"] = ids
        if obj is None:
            return StepResult(
                StepId.REACHES_US,
                Outcome.FAIL,
                f"it could not fetch our keys: it cannot reach us at {us}",
                Cause.CANNOT_REACH_US,
                details,
            )
        details["valid_until_ts"] = obj.get("valid_until_ts")
        if not self._holds_our_current_key(obj):
            ours = self.doctor.own_keys.current().key_id
            return StepResult(
                StepId.REACHES_US,
                Outcome.WARN,
                f"it holds keys {', '.join(ids) or 'none'} for us, not our current {ours}: "
                "its copy is old, and it could not fetch a new one",
                Cause.STALE_KEY_FOR_US,
                details,
            )
        return StepResult(
            StepId.REACHES_US,
            Outcome.PASS,
            f"it fetched our keys ({', '.join(ids)})",
            details=details,
        )

    async def notaries(self) -> StepResult:
        pinned = {notary.server_name: notary for notary in self.doctor.notaries}
        configured = [trusted.server_name for trusted in self.doctor.config.trusted_key_servers]
        if not configured:
            return StepResult(StepId.NOTARIES, Outcome.SKIP, "no trusted_key_servers configured")
        results: list[dict[str, Any]] = []
        problems: list[tuple[Outcome, Cause, str]] = []
        for name in configured:
            notary = pinned.get(name)
            if notary is None:
                results.append({"server_name": name, "outcome": "skip", "error": "no pinned key"})
                continue
            outcome, cause, text, facts = await self._ask_notary(notary)
            results.append({"server_name": name, "outcome": outcome.value, **facts})
            if cause is not None:
                problems.append((outcome, cause, f"{name}: {text}"))
        details = {"notaries": results}
        if not problems:
            asked = [entry["server_name"] for entry in results if entry["outcome"] == "pass"]
            if not asked:
                return StepResult(
                    StepId.NOTARIES,
                    Outcome.SKIP,
                    "no trusted key server has a pinned verify key",
                    details=details,
                )
            return StepResult(
                StepId.NOTARIES,
                Outcome.PASS,
                f"{', '.join(asked)} fetched our current key",
                details=details,
            )
        problems.sort(key=lambda problem: problem[0] is not Outcome.FAIL)
        outcome, cause, text = problems[0]
        return StepResult(StepId.NOTARIES, outcome, text, cause, details)

    async def _ask_notary(
        self, notary: Notary
    ) -> tuple[Outcome, Cause | None, str, dict[str, Any]]:
        response, cause, text = await self._query_our_keys(notary.server_name)
        if response is None:
            assert cause is not None
            return Outcome.WARN, Cause.NOTARY_UNREACHABLE, text, {"error": text}
        if response.status != 200:
            text = f"answered HTTP {response.status}"
            return Outcome.WARN, Cause.NOTARY_API_UNAVAILABLE, text, {"error": text}
        obj, ids = self._our_key_in(response.body)
        facts: dict[str, Any] = {"key_ids": ids}
        if obj is None:
            return (
                Outcome.FAIL,
                Cause.NOTARY_CANNOT_FETCH_OUR_KEYS,
                "it could not fetch our keys: it cannot reach us",
                facts,
            )
        if not signed_by_notary(obj, notary):
            return (
                Outcome.WARN,
                Cause.NOTARY_ANSWER_INVALID,
                "its answer is not signed by its pinned key",
                facts,
            )
        if not self._holds_our_current_key(obj):
            return (
                Outcome.FAIL,
                Cause.STALE_KEY_FOR_US,
                f"it holds {', '.join(ids) or 'no key'} for us, not our current key",
                facts,
            )
        return Outcome.PASS, None, "", facts

    # -- our side -------------------------------------------------------------------------

    async def delivery(self) -> StepResult:
        try:
            state = await self.doctor.deliveries.delivery_state(self.target)
        except ServiceUnavailable as exc:
            return StepResult(StepId.DELIVERY, Outcome.WARN, str(exc), Cause.SERVICE_UNAVAILABLE)
        if state is None:
            return StepResult(
                StepId.DELIVERY, Outcome.PASS, "we have never queued anything for it", details={}
            )
        details = dataclasses.asdict(state)
        now = int(self.doctor.clock() * 1000)
        pending = f"{state.pending_pdus} PDUs and {state.pending_edus} EDUs pending"
        last = (
            f"last success {for_how_long(now - state.last_success_ts)} ago"
            if state.last_success_ts
            else "never delivered"
        )
        if state.backoff_until_ts > now:
            return StepResult(
                StepId.DELIVERY,
                Outcome.WARN,
                f"backed off for {for_how_long(state.backoff_until_ts - now)} after "
                f"{state.failures} failure(s): {state.last_error or 'no error recorded'}; "
                f"{pending}; {last}",
                Cause.BACKED_OFF,
                details,
            )
        if state.failures:
            return StepResult(
                StepId.DELIVERY,
                Outcome.WARN,
                f"{state.failures} failure(s) in a row, retrying now: {state.last_error}; "
                f"{pending}; {last}",
                Cause.BACKED_OFF,
                details,
            )
        return StepResult(StepId.DELIVERY, Outcome.PASS, f"{pending}; {last}", details=details)

    async def room_acl(self) -> StepResult:
        if not self.room_ids:
            return StepResult(StepId.ROOM_ACL, Outcome.SKIP, "no rooms given")
        rooms: list[dict[str, Any]] = []
        denied: list[str] = []
        unknown: list[str] = []
        for room_id in self.room_ids:
            try:
                access = await self.doctor.rooms.room_access(room_id, self.target)
            except ServiceUnavailable as exc:
                return StepResult(
                    StepId.ROOM_ACL, Outcome.WARN, str(exc), Cause.SERVICE_UNAVAILABLE
                )
            rooms.append({"room_id": room_id, **dataclasses.asdict(access)})
            if not access.room_exists:
                unknown.append(room_id)
            elif not access.allowed:
                denied.append(room_id)
        details = {"rooms": rooms}
        if denied:
            return StepResult(
                StepId.ROOM_ACL,
                Outcome.FAIL,
                f"the server ACL of {', '.join(denied)} denies {self.target}",
                Cause.ACL_DENIED,
                details,
            )
        if unknown:
            return StepResult(
                StepId.ROOM_ACL,
                Outcome.WARN,
                f"we do not know {', '.join(unknown)}",
                Cause.ROOM_UNKNOWN,
                details,
            )
        return StepResult(
            StepId.ROOM_ACL,
            Outcome.PASS,
            f"allowed in {', '.join(self.room_ids)}",
            details=details,
        )
