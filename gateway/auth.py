"""OAuth2 for the Web API: authorization code with PKCE (B2C), client credentials (B2B).

:class:`AuthServer` issues and verifies tokens. Access and refresh tokens are compact,
HMAC-SHA256 signed strings (``<payload>.<signature>``, both base64url; the payload is JSON
with the kind of principal, subject, client, scopes, expiry and a random id), so any gateway
process holding the same secret verifies them without a database. Authorization codes are
random, single-use, short-lived and kept in this process's memory: the ``/oauth2/token``
request must reach the process that answered ``/oauth2/authorize``.

Secrets, codes and tokens never appear in reprs, logs or error messages.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from can_dbc.catalog import Scope
from gateway.accounts import (
    DATA_SCOPES,
    PBKDF2_ITERATIONS,
    REMOTE_SCOPES,
    SCOPES,
    Accounts,
    Client,
    Plan,
    hash_secret,
    verify_secret,
)
from gateway.errors import GatewayError

__all__ = [
    "DATA_SCOPES",
    "REMOTE_SCOPES",
    "SCOPES",
    "AuthError",
    "AuthServer",
    "AuthorizeError",
    "OAuthError",
    "Principal",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenMalformed",
    "TokenResponse",
    "catalog_scopes",
    "pkce_challenge",
]

PrincipalKind = Literal["user", "fleet"]

_SCOPE_MAP: Mapping[str, frozenset[Scope]] = {
    "data:telemetry": frozenset({Scope.TELEMETRY, Scope.MAINTENANCE}),
    "data:position": frozenset({Scope.POSITION}),
    "data:trip": frozenset({Scope.TRIP}),
    "data:alert": frozenset({Scope.ALERT}),
    "data:collision": frozenset({Scope.COLLISION}),
}

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_TOKEN_PREFIX = b"tcusim-token/1."
_MAX_TOKEN = 4096


def catalog_scopes(oauth_scopes: Iterable[str]) -> frozenset[Scope]:
    """The catalog's data scopes these OAuth scopes open (``data:telemetry`` opens two)."""
    out: set[Scope] = set()
    for name in oauth_scopes:
        out |= _SCOPE_MAP.get(name, frozenset())
    return frozenset(out)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636)."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# -- errors ------------------------------------------------------------------------------------


class AuthError(GatewayError):
    """Authentication or authorization refused."""


class TokenError(AuthError):
    """A bearer token refused."""


class TokenMalformed(TokenError):
    """The token is not of the token format."""


class TokenInvalid(TokenError):
    """The token's signature is wrong, or it names a client or subject that is gone."""


class TokenExpired(TokenError):
    """The token was valid but its time is up."""


class OAuthError(AuthError):
    """An OAuth request refused, with its RFC 6749 ``error`` code and HTTP status."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        """The RFC 6749 error body."""
        return {"error": self.error, "error_description": self.description}


class AuthorizeError(OAuthError):
    """An authorization request refused; ``redirect_to`` is set where the client can be told.

    Without ``redirect_to`` (unknown client, a redirect URI not registered) the refusal is
    shown to the user agent, never sent to the redirect URI. ``login_required`` is true when
    the user's credentials are missing.
    """

    def __init__(
        self,
        error: str,
        description: str,
        *,
        redirect_to: str | None = None,
        login_required: bool = False,
        status: int = 400,
    ) -> None:
        super().__init__(error, description, status=status)
        self.redirect_to = redirect_to
        self.login_required = login_required


# -- principal and token answer ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified access token speaks for: a user (B2C) or a fleet (B2B)."""

    kind: PrincipalKind
    subject: str
    client_id: str
    scopes: frozenset[str]
    expires_at_ms: int
    plan: Plan

    @property
    def owner(self) -> str:
        """The owner key of this principal's records: ``user:<id>`` or ``fleet:<id>``."""
        return f"{self.kind}:{self.subject}"


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A successful token answer (RFC 6749 section 5.1)."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: str
    refresh_token: str | None = field(default=None, repr=False)
    token_type: str = "Bearer"

    def json(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


@dataclass(frozen=True, slots=True)
class _Grant:
    client_id: str
    redirect_uri: str
    user_id: str
    scopes: frozenset[str]
    challenge: str
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class _Claims:
    use: Literal["access", "refresh"]
    kind: PrincipalKind
    subject: str
    client_id: str
    scopes: frozenset[str]
    expires_at_ms: int


# -- the server --------------------------------------------------------------------------------


class AuthServer:
    """Issues authorization codes and tokens for ``accounts`` and verifies tokens.

    ``secret`` (at least 16 bytes) signs the tokens: every process that shares it accepts
    the tokens of the others. ``clock_ms`` gives "now" in epoch milliseconds.
    """

    def __init__(
        self,
        accounts: Accounts,
        secret: bytes,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        access_ttl_s: int = 3600,
        refresh_ttl_s: int = 30 * 86400,
        code_ttl_s: int = 60,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the token signing secret must be at least 16 bytes")
        for name, ttl in (
            ("access", access_ttl_s),
            ("refresh", refresh_ttl_s),
            ("code", code_ttl_s),
        ):
            if ttl < 1:
                raise ValueError(f"{name}_ttl_s must be at least 1")
        self.accounts = accounts
        self._key = hmac.new(secret, b"tcusim-token-key", hashlib.sha256).digest()
        self._clock_ms = clock_ms
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.code_ttl_s = code_ttl_s
        self._codes: dict[bytes, _Grant] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuthServer({self.accounts!r}, access_ttl_s={self.access_ttl_s})"

    # -- authorization endpoint -----------------------------------------------------------

    def authorize(
        self,
        *,
        response_type: str | None,
        client_id: str | None,
        redirect_uri: str | None,
        scope: str | None,
        state: str | None,
        code_challenge: str | None,
        code_challenge_method: str | None,
        username: str | None,
        password: str | None,
    ) -> str:
        """Check an authorization request and the user's credentials; the redirect URL.

        The URL is ``redirect_uri`` with ``code`` and ``state``. Raises
        :class:`AuthorizeError`, with ``redirect_to`` set when the client can be told.
        """
        client = self.accounts.client(client_id) if client_id else None
        if client is None:
            raise AuthorizeError("invalid_request", "unknown client_id")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            raise AuthorizeError("invalid_request", "redirect_uri is not registered for the client")

        def refuse(error: str, description: str) -> AuthorizeError:
            params = {"error": error, "error_description": description}
            if state is not None:
                params["state"] = state
            return AuthorizeError(error, description, redirect_to=_with_query(redirect_uri, params))

        if response_type != "code":
            raise refuse("unsupported_response_type", "response_type must be code")
        if client.kind != "b2c":
            raise refuse("unauthorized_client", "this client may use client credentials only")
        scopes = self._scopes(scope, client)
        if scopes is None:
            raise refuse("invalid_scope", "a scope is unknown or not allowed for the client")
        if code_challenge is None:
            raise refuse("invalid_request", "code_challenge is required (PKCE)")
        if code_challenge_method != "S256":
            raise refuse("invalid_request", "code_challenge_method must be S256")
        if _CHALLENGE.fullmatch(code_challenge) is None:
            raise refuse("invalid_request", "code_challenge is not an S256 challenge")
        if not username or password is None:
            raise AuthorizeError(
                "access_denied", "the user's credentials are required", login_required=True
            )
        user = self.accounts.user_by_email(username) or self.accounts.user(username)
        if user is None:
            verify_secret(password, _dummy_hash())
            raise refuse("access_denied", "wrong e-mail or password")
        if not user.check_password(password):
            raise refuse("access_denied", "wrong e-mail or password")
        code = secrets.token_urlsafe(32)
        now = self._clock_ms()
        grant = _Grant(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            user_id=user.id,
            scopes=scopes,
            challenge=code_challenge,
            expires_at_ms=now + self.code_ttl_s * 1000,
        )
        with self._lock:
            for key in [k for k, g in self._codes.items() if g.expires_at_ms <= now]:
                del self._codes[key]
            self._codes[_digest(code)] = grant
        params = {"code": code}
        if state is not None:
            params["state"] = state
        return _with_query(redirect_uri, params)

    @staticmethod
    def _scopes(requested: str | None, client: Client) -> frozenset[str] | None:
        if requested is None or not requested.strip():
            return client.scopes
        names = frozenset(requested.split())
        return names if names <= client.scopes else None

    # -- token endpoint -------------------------------------------------------------------

    def authenticate_client(self, client_id: str | None, client_secret: str | None) -> Client:
        """The client these credentials prove; ``invalid_client`` (401) otherwise."""
        client = self.accounts.client(client_id) if client_id else None
        if client is None or client_secret is None:
            if client_secret is not None:
                verify_secret(client_secret, _dummy_hash())
            raise OAuthError("invalid_client", "client authentication failed", status=401)
        if not client.check_secret(client_secret):
            raise OAuthError("invalid_client", "client authentication failed", status=401)
        return client

    def token(
        self,
        grant_type: str | None,
        *,
        client_id: str | None,
        client_secret: str | None,
        code: str | None = None,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
        refresh_token: str | None = None,
        scope: str | None = None,
    ) -> TokenResponse:
        """Answer a token request; raises :class:`OAuthError`."""
        if grant_type not in ("authorization_code", "client_credentials", "refresh_token"):
            raise OAuthError("unsupported_grant_type", "grant_type is not supported")
        client = self.authenticate_client(client_id, client_secret)
        if grant_type == "authorization_code":
            return self._code_grant(client, code, redirect_uri, code_verifier)
        if grant_type == "client_credentials":
            if client.kind != "b2b" or client.fleet is None:
                raise OAuthError("unauthorized_client", "client credentials are for b2b clients")
            scopes = self._scopes(scope, client)
            if scopes is None:
                raise OAuthError("invalid_scope", "a scope is unknown or not allowed")
            return self._issue("fleet", client.fleet, client, scopes, refresh=False)
        return self._refresh_grant(client, refresh_token, scope)

    def _code_grant(
        self,
        client: Client,
        code: str | None,
        redirect_uri: str | None,
        code_verifier: str | None,
    ) -> TokenResponse:
        if not code or code_verifier is None or redirect_uri is None:
            raise OAuthError("invalid_request", "code, redirect_uri and code_verifier are required")
        now = self._clock_ms()
        with self._lock:
            grant = self._codes.pop(_digest(code), None)
        if grant is None or grant.expires_at_ms <= now:
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if not hmac.compare_digest(grant.redirect_uri.encode(), redirect_uri.encode()):
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization's")
        if _VERIFIER.fullmatch(code_verifier) is None:
            raise OAuthError("invalid_grant", "code_verifier is not 43-128 unreserved characters")
        if not hmac.compare_digest(pkce_challenge(code_verifier), grant.challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        if self.accounts.user(grant.user_id) is None:
            raise OAuthError("invalid_grant", "the user is gone")
        return self._issue("user", grant.user_id, client, grant.scopes, refresh=True)

    def _refresh_grant(
        self, client: Client, refresh_token: str | None, scope: str | None
    ) -> TokenResponse:
        if not refresh_token:
            raise OAuthError("invalid_request", "refresh_token is required")
        try:
            claims = self._claims(refresh_token)
        except TokenError:
            raise OAuthError("invalid_grant", "the refresh token is not valid") from None
        if claims.use != "refresh" or claims.expires_at_ms <= self._clock_ms():
            raise OAuthError("invalid_grant", "the refresh token is not valid")
        if claims.client_id != client.client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        scopes = claims.scopes & client.scopes
        if scope is not None and scope.strip():
            asked = frozenset(scope.split())
            if not asked <= scopes:
                raise OAuthError("invalid_scope", "a scope was not granted")
            scopes = asked
        if self._subject_gone(claims.kind, claims.subject):
            raise OAuthError("invalid_grant", "the token's subject is gone")
        return self._issue(claims.kind, claims.subject, client, scopes, refresh=True)

    def _subject_gone(self, kind: PrincipalKind, subject: str) -> bool:
        if kind == "user":
            return self.accounts.user(subject) is None
        return self.accounts.fleet(subject) is None

    # -- tokens ---------------------------------------------------------------------------

    def _issue(
        self,
        kind: PrincipalKind,
        subject: str,
        client: Client,
        scopes: frozenset[str],
        *,
        refresh: bool,
    ) -> TokenResponse:
        now = self._clock_ms()
        expiry = now + self.access_ttl_s * 1000
        access = self._sign(_Claims("access", kind, subject, client.client_id, scopes, expiry))
        refresh_token = None
        if refresh:
            expiry = now + self.refresh_ttl_s * 1000
            claims = _Claims("refresh", kind, subject, client.client_id, scopes, expiry)
            refresh_token = self._sign(claims)
        return TokenResponse(
            access_token=access,
            expires_in=self.access_ttl_s,
            scope=" ".join(sorted(scopes)),
            refresh_token=refresh_token,
        )

    def issue_access_token(
        self,
        kind: PrincipalKind,
        subject: str,
        client_id: str,
        scopes: Iterable[str],
        *,
        ttl_s: int | None = None,
    ) -> str:
        """An access token issued directly (for tools and tests), no flow checked."""
        client = self.accounts.client(client_id)
        if client is None:
            raise AuthError("unknown client")
        ttl = self.access_ttl_s if ttl_s is None else ttl_s
        expiry = self._clock_ms() + ttl * 1000
        claims = _Claims("access", kind, subject, client.client_id, frozenset(scopes), expiry)
        return self._sign(claims)

    def _sign(self, claims: _Claims) -> str:
        raw = {
            "u": claims.use,
            "k": claims.kind,
            "s": claims.subject,
            "c": claims.client_id,
            "sc": sorted(claims.scopes),
            "e": claims.expires_at_ms,
            "i": secrets.token_urlsafe(12),
        }
        payload = _b64(json.dumps(raw, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}"

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, _TOKEN_PREFIX + payload.encode("ascii"), hashlib.sha256)
        return _b64(digest.digest())

    def _claims(self, token: str) -> _Claims:
        if not isinstance(token, str) or len(token) > _MAX_TOKEN or token.count(".") != 1:
            raise TokenMalformed("the token is malformed")
        payload, signature = token.split(".")
        if _B64URL.fullmatch(payload) is None or _B64URL.fullmatch(signature) is None:
            raise TokenMalformed("the token is malformed")
        if len(signature) != 43:
            raise TokenMalformed("the token is malformed")
        if not hmac.compare_digest(self._mac(payload), signature):
            raise TokenInvalid("the token is not valid")
        try:
            raw = json.loads(_unb64(payload))
            scopes = raw["sc"]
            claims = _Claims(
                use=raw["u"],
                kind=raw["k"],
                subject=raw["s"],
                client_id=raw["c"],
                scopes=frozenset(scopes),
                expires_at_ms=raw["e"],
            )
        except (ValueError, KeyError, TypeError):
            raise TokenMalformed("the token is malformed") from None
        if (
            claims.use not in ("access", "refresh")
            or claims.kind not in ("user", "fleet")
            or not all(isinstance(v, str) for v in (claims.subject, claims.client_id, *scopes))
            or type(claims.expires_at_ms) is not int
        ):
            raise TokenMalformed("the token is malformed")
        return claims

    def verify(self, token: str) -> Principal:
        """The principal of an access token; raises a :class:`TokenError`."""
        claims = self._claims(token)
        if claims.use != "access":
            raise TokenInvalid("the token is not an access token")
        if claims.expires_at_ms <= self._clock_ms():
            raise TokenExpired("the token has expired")
        client = self.accounts.client(claims.client_id)
        if client is None or self._subject_gone(claims.kind, claims.subject):
            raise TokenInvalid("the token's client or subject is gone")
        return Principal(
            kind=claims.kind,
            subject=claims.subject,
            client_id=claims.client_id,
            scopes=claims.scopes,
            expires_at_ms=claims.expires_at_ms,
            plan=client.plan,
        )


@functools.cache
def _dummy_hash() -> str:
    """A hash to check an unknown name's password against, so that takes the usual time."""
    return hash_secret(secrets.token_urlsafe(16), iterations=PBKDF2_ITERATIONS)


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode("utf-8", "replace")).digest()


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = urlencode(params)
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))
