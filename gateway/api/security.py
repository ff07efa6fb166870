"""Access control of the Web API's routes: bearer tokens, scopes, principals, rate limits.

Dependencies for the routers::

    @router.get("/user/vehicles")
    def vehicles(who: Annotated[Principal, Depends(require_user)]) -> ...

    @router.get("/user/vehicles/{id}/lastPosition")
    def last_position(who: Annotated[Principal, Depends(require_scopes("data:position"))]) -> ...

    @router.get("/fleets/{fid}/vehicles")
    def fleet_vehicles(who: Annotated[Principal, Depends(require_fleet)]) -> ...

They read the application's state: ``app.state.auth`` (an :class:`~gateway.auth.AuthServer`),
``app.state.limiter`` (a :class:`~gateway.ratelimit.RateLimiter`; no rate limits without
one) and ``app.state.clock_ms`` (the timestamps of error bodies; the wall clock without one).

:func:`principal` verifies the token once per request and counts the request against the
rate limits of the token's plan. The ``X-RateLimit-*`` values go to ``request.state``;
the middleware :func:`install` adds copies them onto the answer, errors included.
``install`` also turns :class:`~gateway.api.errors.ApiError`, request validation errors and
Starlette's HTTP errors into the API's error body.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accounts import SCOPES
from gateway.api.errors import ApiError
from gateway.auth import AuthServer, Principal, TokenError, TokenExpired
from gateway.ratelimit import RateLimiter

__all__ = [
    "AUTHORIZE_URL",
    "TOKEN_URL",
    "RateLimitHeaders",
    "install",
    "oauth2_scheme",
    "principal",
    "require_fleet",
    "require_scopes",
    "require_user",
]

AUTHORIZE_URL = "/oauth2/authorize"
TOKEN_URL = "/oauth2/token"

_STATE_PRINCIPAL = "tcusim_principal"
_STATE_HEADERS = "tcusim_rate_limit_headers"

oauth2_scheme = OAuth2(
    flows={
        "authorizationCode": {
            "authorizationUrl": AUTHORIZE_URL,
            "tokenUrl": TOKEN_URL,
            "refreshUrl": TOKEN_URL,
            "scopes": dict(SCOPES),
        },
        "clientCredentials": {"tokenUrl": TOKEN_URL, "scopes": dict(SCOPES)},
    },
    scheme_name="oauth2",
    description=(
        "Bearer access tokens. End users' apps (B2C) use the authorization code flow with "
        "PKCE (S256); fleet apps (B2B) use client credentials."
    ),
    auto_error=False,
)


def _now_ms(request: Request) -> int:
    clock = getattr(request.app.state, "clock_ms", None)
    return int(clock()) if callable(clock) else time.time_ns() // 1_000_000


def _unauthorized(detail: int, message: str, error: str | None = None) -> ApiError:
    challenge = 'Bearer realm="tcusim"'
    if error is not None:
        challenge += f', error="{error}", error_description="{message}"'
    return ApiError(401, message, detail=detail, headers={"WWW-Authenticate": challenge})


async def principal(
    request: Request, authorization: Annotated[str | None, Security(oauth2_scheme)]
) -> Principal:
    """The principal of the request's bearer token, counted against its rate limits.

    401 detail 1 without a bearer token, 2 for a token that is not valid, 3 for an expired
    one; 429 detail 1 over the rate limits. Verified once per request.
    """
    cached = getattr(request.state, _STATE_PRINCIPAL, None)
    if isinstance(cached, Principal):
        return cached
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(1, "an access token is required")
    auth: AuthServer = request.app.state.auth
    try:
        who = auth.verify(token)
    except TokenExpired:
        raise _unauthorized(3, "the access token has expired", "invalid_token") from None
    except TokenError:
        raise _unauthorized(2, "the access token is not valid", "invalid_token") from None
    limiter: RateLimiter | None = getattr(request.app.state, "limiter", None)
    if limiter is not None:
        decision = limiter.hit(who.plan, who.client_id, who.subject)
        setattr(request.state, _STATE_HEADERS, decision.headers)
        if not decision.allowed:
            raise ApiError(429, "too many requests", detail=1, headers=decision.headers)
    setattr(request.state, _STATE_PRINCIPAL, who)
    return who


def require_scopes(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the principal, whose token must carry every one of ``scopes`` (403/1)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes {unknown}")
    needed = list(scopes)

    # A default, not Annotated: the annotation is a string naming only module globals.
    async def dependency(who: Principal = Security(principal, scopes=needed)) -> Principal:  # noqa: B008
        missing = [s for s in needed if s not in who.scopes]
        if missing:
            raise ApiError(403, f"the token lacks the scope {', '.join(missing)}", detail=1)
        return who

    return dependency


async def require_user(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """A dependency: the principal, which must be an end user (403 detail 4 otherwise)."""
    if who.kind != "user":
        raise ApiError(403, "this resource is for end users' tokens", detail=4)
    return who


async def require_fleet(fid: str, who: Annotated[Principal, Depends(principal)]) -> Principal:
    """A dependency for routes with a ``{fid}`` path parameter: the token's own fleet.

    403 detail 4 for a token that is not a fleet's; 404 detail 2 for another fleet's id.
    """
    if who.kind != "fleet":
        raise ApiError(403, "this resource is for fleet tokens", detail=4)
    if fid != who.subject:
        raise ApiError(404, "no such fleet", detail=2)
    return who


class RateLimitHeaders:
    """ASGI middleware: copies the request's ``X-RateLimit-*`` values onto its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                values = state.get(_STATE_HEADERS)
                if values:
                    headers = MutableHeaders(scope=message)
                    for name, value in values.items():
                        if name not in headers:
                            headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(
        error.body(_now_ms(request)), status_code=error.status, headers=error.headers
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _error_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    message = "the request is not valid"
    if errors:
        first = errors[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'not valid')}" if where else str(first.get("msg"))
    return _error_response(request, ApiError(400, message, detail=1))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "no such resource", detail=2, headers=exc.headers)
    else:
        error = ApiError(exc.status_code, str(exc.detail), headers=exc.headers)
    return _error_response(request, error)


def install(app: FastAPI) -> None:
    """Add the rate-limit header middleware and the API's error handlers to ``app``."""
    app.add_middleware(RateLimitHeaders)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
