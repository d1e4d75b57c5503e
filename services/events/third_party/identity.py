"""Talking to identity servers: register for an access token, store-invite,
and the key validity check of a third-party invite's public key.

Identity Service API v2: every call needs an access token, obtained from
``POST /_matrix/identity/v2/account/register`` with an OpenID token of the
inviting user (minted by the keys process; the identity server checks it with
our ``/_matrix/federation/v1/openid/userinfo``). A caller may pass an access
token it already has instead. When the server does not know the v2 API
(404/405/M_UNRECOGNIZED) ``store-invite`` falls back to the v1 path
``/_matrix/identity/api/v1/store-invite``, which older servers served without
authentication.

``id_server`` is ``host[:port]`` (HTTPS, as homeservers always use) or a
full base URL (``http://127.0.0.1:8090``) for tests and local setups.

The ``m.room.third_party_invite`` we write carries, at top level, the
identity server's long-term key and a ``key_validity_url`` we build for the
v2 API (``/_matrix/identity/v2/pubkey/isvalid``), whatever URLs the server
handed out with its keys: Sydent with ``enable_v1_access = false`` still
hands out ``/_matrix/identity/api/v1/`` URLs, which then answer 404. The keys
and URLs the server gave stay in ``public_keys``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from matrix_protocol.membership import MembershipError
from mxfed.federation_client import FederationClient, FederationError

MAX_RESPONSE = 1 << 20
KEY_VALIDITY_PATH = "/_matrix/identity/v2/pubkey/isvalid"


def base_url(id_server: str) -> str:
    id_server = id_server.strip().rstrip("/")
    if not id_server:
        raise MembershipError(400, "M_MISSING_PARAM", "id_server is required")
    if id_server.startswith(("http://", "https://")):
        return id_server
    if "/" in id_server or "@" in id_server:
        raise MembershipError(400, "M_INVALID_PARAM", f"invalid id_server {id_server!r}")
    return "https://" + id_server


def key_validity_url(id_server: str) -> str:
    """The v2 ``pubkey/isvalid`` URL of ``id_server`` (for its long-term key)."""
    return base_url(id_server) + KEY_VALIDITY_PATH


@dataclass
class StoredInvite:
    token: str
    display_name: str
    public_keys: list[dict[str, str]]
    # The long-term key (the answer's top-level one, else its first) and our v2 URL for it.
    public_key: str
    key_validity_url: str

    def event_content(self) -> dict[str, Any]:
        """The ``m.room.third_party_invite`` content."""
        return {
            "display_name": self.display_name,
            "public_key": self.public_key,
            "key_validity_url": self.key_validity_url,
            "public_keys": self.public_keys,
        }


class KeyCheckFailed(Exception):
    """The identity server could not confirm a key: why, and whether it answered at all."""

    def __init__(self, cause: str, *, answered: bool) -> None:
        super().__init__(cause)
        self.answered = answered


class IdentityServerError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        errcode = body.get("errcode") if isinstance(body, Mapping) else None
        error = body.get("error") if isinstance(body, Mapping) else None
        super().__init__(f"{status} {errcode or ''} {error or ''}".strip())
        self.status = status
        self.errcode = errcode if isinstance(errcode, str) else None
        self.error = error if isinstance(error, str) else ""

    @property
    def unrecognised(self) -> bool:
        return self.status in (404, 405) and self.errcode in (None, "M_UNRECOGNIZED", "M_NOT_FOUND")


def _unavailable(message: str) -> MembershipError:
    return MembershipError(502, "M_UNKNOWN", message)


class IdentityClient:
    """Requests to identity servers, through the federation client's connector.

    An identity server is named by a local actor, and a ``key_validity_url``
    by a remote server's event: every address must pass the outbound IP block
    list, a redirect is never followed, and ``http://`` is refused unless the
    operator allows it (``identity_server_allow_http``).
    """

    def __init__(self, client: FederationClient, *, allow_http: bool = False) -> None:
        self._client = client
        self._allow_http = allow_http

    async def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        access_token: str = "",
    ) -> Any:
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        try:
            response = await self._client.fetch_url(
                method,
                url,
                json_body=body,
                headers=headers,
                allow_http=self._allow_http,
                max_size=MAX_RESPONSE,
            )
        except FederationError as error:
            raise _unavailable(f"cannot reach the identity server: {error}") from None
        if response.status != 200:
            raise IdentityServerError(response.status, response.body)
        if not isinstance(response.body, dict):
            raise _unavailable(f"{url}: the answer is not a JSON object")
        return response.body

    async def register(self, id_server: str, openid: Mapping[str, Any]) -> str:
        """An identity server access token for the OpenID token ``openid``."""
        url = base_url(id_server) + "/_matrix/identity/v2/account/register"
        try:
            answer = await self.request("POST", url, dict(openid))
        except IdentityServerError as error:
            raise _identity_refusal("account/register", error) from None
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise _unavailable("account/register answered without a token")
        return token

    async def store_invite(
        self, id_server: str, access_token: str, request: Mapping[str, Any]
    ) -> StoredInvite:
        base = base_url(id_server)
        try:
            answer = await self.request(
                "POST",
                base + "/_matrix/identity/v2/store-invite",
                dict(request),
                access_token=access_token,
            )
        except IdentityServerError as error:
            if not error.unrecognised:
                raise _identity_refusal("store-invite", error) from None
            try:
                answer = await self.request(
                    "POST", base + "/_matrix/identity/api/v1/store-invite", dict(request)
                )
            except IdentityServerError as v1_error:
                raise _identity_refusal("store-invite (v1)", v1_error) from None
        return parse_stored_invite(answer, key_validity_url(id_server))

    async def check_key(self, url: str, public_key: str) -> None:
        """GET ``url?public_key=...``; :class:`KeyCheckFailed` unless it answers ``valid: true``."""
        separator = "&" if "?" in url else "?"
        try:
            answer = await self.request(
                "GET", f"{url}{separator}public_key={quote(public_key, safe='')}"
            )
        except IdentityServerError as error:
            raise KeyCheckFailed(f"{url} answered {error}", answered=True) from None
        except MembershipError as error:  # unreachable, or not a JSON object
            raise KeyCheckFailed(f"{url}: {error.message}", answered=False) from None
        if answer.get("valid") is not True:
            raise KeyCheckFailed(f"{url} says the key is not valid", answered=True)


def _identity_refusal(call: str, error: IdentityServerError) -> MembershipError:
    if error.status in (400, 401, 403):
        return MembershipError(
            403 if error.status != 400 else 400,
            error.errcode or "M_FORBIDDEN",
            f"the identity server refused {call}: {error.error or error.status}",
        )
    return _unavailable(f"the identity server failed {call}: {error}")


def parse_stored_invite(answer: Mapping[str, Any], validity_url: str) -> StoredInvite:
    """A store-invite answer; ``validity_url`` is our v2 URL for its long-term key."""
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise _unavailable("store-invite answered without a token")
    keys: list[dict[str, str]] = []
    raw_keys = answer.get("public_keys")
    if isinstance(raw_keys, list):
        for entry in raw_keys:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                key = {"public_key": entry["public_key"]}
                if isinstance(entry.get("key_validity_url"), str):
                    key["key_validity_url"] = entry["key_validity_url"]
                keys.append(key)
    if not keys and isinstance(answer.get("public_key"), str):
        keys.append({"public_key": answer["public_key"]})
    if not keys:
        raise _unavailable("store-invite answered without public keys")
    display_name = answer.get("display_name")
    if not isinstance(display_name, str):
        display_name = ""
    top = answer.get("public_key")
    public_key = top if isinstance(top, str) and top else keys[0]["public_key"]
    return StoredInvite(token, display_name, keys, public_key, validity_url)
