"""The doctor's checks against real HTTPS servers on loopback that misbehave on purpose.

Each test runs a whole diagnosis (the same code the keys service runs for
``mxfed doctor``) and asserts the step where the problem shows, its outcome
and cause, and that the summary names what an operator needs to fix it.
"""

from __future__ import annotations

import datetime
import email.utils
import time

from aiohttp import web

from mxfed.federation_client import SrvRecord
from services.keys.doctor.report import Cause, Outcome, StepId, verdict_of
from services.keys.doctor.sources import DeliveryState, RoomAccess
from tests.support.federation_doctor import US, DoctorUnderTest, FakeFederationServer

DAY = datetime.timedelta(days=1)


async def serve_srv(doctor: DoctorUnderTest, server: FakeFederationServer) -> None:
    """fed.test: no delegation, SRV to target.fed.test (127.0.0.1) on the server's port;
    the server can fetch our keys."""
    server.notary_keys[US] = await doctor.our_signed_keys()
    doctor.well_known_port = server.port
    doctor.dns.srv["_matrix-fed._tcp.fed.test"] = [SrvRecord(10, 5, server.port, "target.fed.test")]
    doctor.dns.hosts["target.fed.test"] = ["127.0.0.1"]


async def test_a_healthy_server_passes_every_step(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    server = await federation_servers()
    await serve_srv(doctor, server)

    report = await doctor.run("fed.test")

    assert report.outcomes() == {
        "server_name": "pass",
        "well_known": "pass",  # a 404: no delegation
        "srv": "pass",
        "discovery": "pass",
        "addresses": "pass",
        "tls": "pass",
        "version": "pass",
        "clock": "pass",
        "server_keys": "pass",
        "reaches_us": "pass",
        "delivery": "pass",
        "room_acl": "skip",
    }
    assert report[StepId.DISCOVERY].details["rule"] == "srv"
    assert report[StepId.DISCOVERY].details["targets"] == [
        {"host": "target.fed.test", "port": server.port}
    ]
    assert "certificate must hold fed.test" in report[StepId.DISCOVERY].summary
    tls = report[StepId.TLS].details["addresses"][0]
    assert tls["trusted"] is True
    assert [cert["dns_names"] for cert in tls["certificates"]] == [["fed.test"], []]
    assert report[StepId.VERSION].summary == "Fake 0.1"
    assert report[StepId.SERVER_KEYS].details["verify_keys"] == {
        server.key_id: report[StepId.SERVER_KEYS].details["verify_keys"][server.key_id]
    }
    verdict = verdict_of("fed.test", report.steps)
    assert verdict.outcome is Outcome.PASS and verdict.cause is None


async def test_certificate_for_another_name_fails_tls_naming_both(
    doctor_under_test, federation_servers
) -> None:
    doctor = doctor_under_test
    server = await federation_servers("other.example")
    await serve_srv(doctor, server)

    report = await doctor.run("fed.test")

    tls = report[StepId.TLS]
    assert (tls.outcome, tls.cause) == (Outcome.FAIL, Cause.CERTIFICATE_NAME_MISMATCH)
    assert "certificate for other.example, expected fed.test" in tls.summary
    # The well-known on the same server was refused for the same reason.
    well_known = report[StepId.WELL_KNOWN]
    assert well_known.cause is Cause.WELL_KNOWN_TLS
    assert "certificate is not valid for 'fed.test'" in well_known.summary
    # We verify certificates: no request can be made.
    assert report[StepId.VERSION].outcome is Outcome.SKIP
    verdict = verdict_of("fed.test", report.steps)
    assert (verdict.step, verdict.cause) == (StepId.TLS, Cause.CERTIFICATE_NAME_MISMATCH)


async def test_wrong_name_only_warns_when_we_do_not_verify_certificates(
    doctor_under_test, federation_servers
) -> None:
    doctor = doctor_under_test
    doctor.config_changes["federation_verify_tls"] = False
    server = await federation_servers("other.example")
    await serve_srv(doctor, server)

    report = await doctor.run("fed.test")

    tls = report[StepId.TLS]
    assert (tls.outcome, tls.cause) == (Outcome.WARN, Cause.CERTIFICATE_NAME_MISMATCH)
    assert "federation_verify_tls is off" in tls.summary
    assert report[StepId.VERSION].outcome is Outcome.PASS


async def test_expired_and_untrusted_certificates(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    expired = await federation_servers(port_in_name=True, valid_from=-3 * DAY, valid_until=-DAY)
    report = await doctor.run(expired.server_name)
    tls = report[StepId.TLS]
    assert (tls.outcome, tls.cause) == (Outcome.FAIL, Cause.CERTIFICATE_EXPIRED)
    assert "certificate expired at" in tls.summary

    self_signed = await federation_servers(port_in_name=True, self_signed=True)
    report = await doctor.run(self_signed.server_name)
    tls = report[StepId.TLS]
    assert (tls.outcome, tls.cause) == (Outcome.FAIL, Cause.CERTIFICATE_UNTRUSTED)
    assert "self-signed" in tls.summary
    assert report[StepId.DISCOVERY].details["rule"] == "explicit_port"
    assert report[StepId.WELL_KNOWN].outcome is Outcome.SKIP


async def test_well_known_that_redirects_forever_or_in_a_loop(
    doctor_under_test, federation_servers
) -> None:
    doctor = doctor_under_test
    server = await federation_servers()
    await serve_srv(doctor, server)
    hops = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal hops
        hops += 1
        raise web.HTTPFound(f"/.well-known/next{hops}")

    server.well_known = endless
    report = await doctor.run("fed.test")
    well_known = report[StepId.WELL_KNOWN]
    assert (well_known.outcome, well_known.cause) == (
        Outcome.WARN,
        Cause.WELL_KNOWN_TOO_MANY_REDIRECTS,
    )
    assert len(well_known.details["hops"]) == 6
    assert "redirects without end" in well_known.summary
    # Discovery goes on (SRV), and the rest works: the verdict is the warning.
    assert report[StepId.VERSION].outcome is Outcome.PASS
    verdict = verdict_of("fed.test", report.steps)
    assert (verdict.outcome, verdict.step) == (Outcome.WARN, StepId.WELL_KNOWN)

    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/.well-known/matrix/server")

    server.well_known = loop
    report = await doctor.run("fed.test")
    assert report[StepId.WELL_KNOWN].cause is Cause.WELL_KNOWN_REDIRECT_LOOP


async def test_well_known_that_returns_html(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    server = await federation_servers()
    await serve_srv(doctor, server)

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body>Welcome to nginx!</body></html>", content_type="text/html"
        )

    server.well_known = html
    report = await doctor.run("fed.test")
    well_known = report[StepId.WELL_KNOWN]
    assert (well_known.outcome, well_known.cause) == (Outcome.WARN, Cause.WELL_KNOWN_NOT_JSON)
    assert "not JSON (Content-Type: text/html" in well_known.summary


async def test_well_known_delegating_to_a_closed_port(
    doctor_under_test, federation_servers, refused_port
) -> None:
    doctor = doctor_under_test
    server = await federation_servers("fed.test", "delegated.fed.test")
    doctor.well_known_port = server.port
    doctor.dns.hosts["delegated.fed.test"] = ["127.0.0.1"]
    closed_port = refused_port

    async def delegate(request: web.Request) -> web.StreamResponse:
        return web.json_response({"m.server": f"delegated.fed.test:{closed_port}"})

    server.well_known = delegate
    report = await doctor.run("fed.test")

    assert report[StepId.WELL_KNOWN].outcome is Outcome.PASS
    assert report[StepId.WELL_KNOWN].summary == (
        f"fed.test delegates to delegated.fed.test:{closed_port}"
    )
    assert report[StepId.DISCOVERY].details["rule"] == "delegated_explicit_port"
    assert report[StepId.SRV].outcome is Outcome.SKIP
    tls = report[StepId.TLS]
    assert (tls.outcome, tls.cause) == (Outcome.FAIL, Cause.CONNECTION_REFUSED)
    assert tls.summary == f"127.0.0.1:{closed_port}: connection refused"
    for later in (StepId.VERSION, StepId.CLOCK, StepId.SERVER_KEYS, StepId.REACHES_US):
        assert report[later].outcome is Outcome.SKIP
    verdict = verdict_of("fed.test", report.steps)
    assert (verdict.outcome, verdict.step, verdict.cause) == (
        Outcome.FAIL,
        StepId.TLS,
        Cause.CONNECTION_REFUSED,
    )


async def test_blocked_address_names_the_range_and_the_options(
    doctor_under_test, federation_servers
) -> None:
    doctor = doctor_under_test
    doctor.config_changes["federation_allowed_ip_ranges"] = []
    server = await federation_servers(port_in_name=True)
    report = await doctor.run(server.server_name)
    addresses = report[StepId.ADDRESSES]
    assert (addresses.outcome, addresses.cause) == (Outcome.FAIL, Cause.IP_BLOCKED)
    assert addresses.summary == (
        "every address is blocked: 127.0.0.1 is in 127.0.0.0/8 of federation_blocked_ip_ranges;"
        " federation_allowed_ip_ranges can allow it"
    )
    assert report[StepId.TLS].outcome is Outcome.SKIP
    assert server.paths == []  # nothing was sent to a blocked address


async def test_srv_problems(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    server = await federation_servers()
    doctor.well_known_port = server.port
    doctor.dns.hosts["alias.fed.test"] = ["127.0.0.1"]
    doctor.dns.cnames["alias.fed.test"] = "real.fed.test"
    doctor.dns.srv["_matrix-fed._tcp.fed.test"] = [SrvRecord(1, 1, server.port, "alias.fed.test")]
    report = await doctor.run("fed.test")
    srv = report[StepId.SRV]
    assert (srv.outcome, srv.cause) == (Outcome.WARN, Cause.SRV_TARGET_CNAME)
    assert "alias.fed.test, an alias (CNAME) of real.fed.test" in srv.summary
    assert srv.details["lookups"][0]["records"][0]["cname"] == "real.fed.test"

    doctor.dns.srv.clear()
    doctor.dns.srv["_matrix._tcp.fed.test"] = [SrvRecord(1, 1, server.port, "fed.test")]
    report = await doctor.run("fed.test")
    srv = report[StepId.SRV]
    assert (srv.outcome, srv.cause) == (Outcome.WARN, Cause.SRV_DEPRECATED)
    assert [lookup["name"] for lookup in srv.details["lookups"]] == [
        "_matrix-fed._tcp.fed.test",
        "_matrix._tcp.fed.test",
    ]
    assert report[StepId.VERSION].outcome is Outcome.PASS

    doctor.dns.srv.clear()
    doctor.dns.srv["_matrix-fed._tcp.fed.test"] = [SrvRecord(0, 0, 0, ".")]
    report = await doctor.run("fed.test")
    assert report[StepId.SRV].cause is Cause.SRV_SERVICE_UNAVAILABLE
    assert report[StepId.DISCOVERY].cause is Cause.SRV_SERVICE_UNAVAILABLE
    assert report[StepId.ADDRESSES].outcome is Outcome.SKIP


async def test_clock_skew_from_the_date_header(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    server = await federation_servers(port_in_name=True)
    server.date = email.utils.formatdate(time.time() - 7200, usegmt=True)
    report = await doctor.run(server.server_name)
    clock = report[StepId.CLOCK]
    assert (clock.outcome, clock.cause) == (Outcome.FAIL, Cause.CLOCK_SKEW)
    assert clock.summary.startswith("its clock is 2 h behind ours")
    assert -7202 < clock.details["skew_seconds"] < -7198

    server.date = email.utils.formatdate(time.time() + 45, usegmt=True)
    report = await doctor.run(server.server_name)
    assert (report[StepId.CLOCK].outcome, report[StepId.CLOCK].cause) == (
        Outcome.WARN,
        Cause.CLOCK_SKEW,
    )


async def test_expired_and_badly_signed_keys(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    server = await federation_servers(port_in_name=True)
    server.keys_valid_for_ms = -60_000
    report = await doctor.run(server.server_name)
    keys = report[StepId.SERVER_KEYS]
    assert (keys.outcome, keys.cause) == (Outcome.FAIL, Cause.KEY_EXPIRED)
    assert keys.summary.startswith(f"keys {server.key_id} expired 60 s ago")

    server.keys_valid_for_ms = 10 * 60_000
    report = await doctor.run(server.server_name)
    assert report[StepId.SERVER_KEYS].cause is Cause.KEY_EXPIRES_SOON

    server.bad_key_signature = True
    report = await doctor.run(server.server_name)
    keys = report[StepId.SERVER_KEYS]
    assert (keys.outcome, keys.cause) == (Outcome.FAIL, Cause.KEY_INVALID)


async def test_a_server_that_cannot_reach_us(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    server = await federation_servers(port_in_name=True)
    report = await doctor.run(server.server_name)
    reaches = report[StepId.REACHES_US]
    assert (reaches.outcome, reaches.cause) == (Outcome.FAIL, Cause.CANNOT_REACH_US)
    assert "/_matrix/key/v2/query" in server.paths

    stale = await doctor.our_signed_keys()
    stale["verify_keys"] = {"ed25519:old": {"key": "A" * 43}}
    server.notary_keys[US] = stale
    report = await doctor.run(server.server_name)
    assert report[StepId.REACHES_US].cause is Cause.STALE_KEY_FOR_US


async def test_delivery_state_and_room_acls(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    server = await federation_servers(port_in_name=True)
    frozen = time.time()
    doctor.clock = lambda: frozen
    now = int(frozen * 1000)
    name = server.server_name
    doctor.deliveries.states[name] = DeliveryState(
        pending_pdus=3,
        pending_edus=1,
        oldest_pending_ts=now - 60_000,
        last_success_ts=now - 3 * 3600 * 1000,
        backoff_until_ts=now + 90_000,
        retry_interval_ms=120_000,
        failures=4,
        last_error="connection refused",
        lease_owner="sender-1",
    )
    doctor.rooms.access["!denied:doctor.test"] = RoomAccess(
        True, False, "denied by the room's server ACL", {"allow": ["*"], "deny": ["fed.test"]}
    )
    doctor.rooms.access["!open:doctor.test"] = RoomAccess(True, True)
    report = await doctor.run(name, ("!open:doctor.test", "!denied:doctor.test"))
    delivery = report[StepId.DELIVERY]
    assert (delivery.outcome, delivery.cause) == (Outcome.WARN, Cause.BACKED_OFF)
    assert delivery.summary.startswith("backed off for 90 s after 4 failure(s): connection refused")
    assert "3 PDUs and 1 EDUs pending; last success 3 h ago" in delivery.summary
    acl = report[StepId.ROOM_ACL]
    assert (acl.outcome, acl.cause) == (Outcome.FAIL, Cause.ACL_DENIED)
    assert acl.summary == f"the server ACL of !denied:doctor.test denies {name}"
    assert acl.details["rooms"][1]["acl"] == {"allow": ["*"], "deny": ["fed.test"]}


async def test_an_invalid_server_name_stops_at_the_first_step(doctor_under_test) -> None:
    for name in ("not a server name", "fed.test:99999"):
        report = await doctor_under_test.run(name)
        assert report[StepId.SERVER_NAME].cause is Cause.INVALID_SERVER_NAME
        assert {step.outcome for step in report.steps[1:]} == {Outcome.SKIP}
    assert report[StepId.SERVER_NAME].summary == (
        "fed.test:99999 is a valid name, but nothing can listen on port 99999"
    )


async def test_our_own_server_and_its_notaries(doctor_under_test, federation_servers) -> None:
    doctor = doctor_under_test
    # Our public name is served by a test server publishing our real keys.
    ours = await federation_servers(server_name=US, port_in_name=True)
    doctor.dns.hosts[US] = ["127.0.0.1"]
    doctor.config_changes["server_name"] = ours.server_name
    ours.published_keys = await doctor.our_signed_keys()
    notary = await federation_servers(server_name="notary.test", port_in_name=True)
    doctor.dns.hosts["notary.test"] = ["127.0.0.1"]
    doctor.trust_notary(notary)

    report = await doctor.run()

    assert [step.step for step in report.steps] == [
        StepId.SERVER_NAME,
        StepId.WELL_KNOWN,
        StepId.SRV,
        StepId.DISCOVERY,
        StepId.ADDRESSES,
        StepId.TLS,
        StepId.VERSION,
        StepId.SERVER_KEYS,
        StepId.NOTARIES,
    ]
    assert report[StepId.SERVER_KEYS].outcome is Outcome.PASS
    notaries = report[StepId.NOTARIES]
    assert (notaries.outcome, notaries.cause) == (Outcome.FAIL, Cause.NOTARY_CANNOT_FETCH_OUR_KEYS)
    assert notaries.summary.startswith(f"{notary.server_name}: it could not fetch our keys")

    notary.notary_keys[ours.server_name] = ours.published_keys
    report = await doctor.run()
    assert report[StepId.NOTARIES].outcome is Outcome.PASS
    assert verdict_of(ours.server_name, report.steps).outcome is Outcome.PASS

    # Something else answering for our name publishes other keys.
    ours.published_keys = None
    report = await doctor.run()
    keys = report[StepId.SERVER_KEYS]
    assert (keys.outcome, keys.cause) == (Outcome.FAIL, Cause.KEY_NOT_CURRENT)
    assert "something else answers for our name" in keys.summary
