"""The OAuth2 endpoints: ``/oauth2/authorize`` and ``/oauth2/token`` (RFC 6749, RFC 7636).

The router takes its :class:`~gateway.auth.AuthServer` from ``request.app.state.auth``.

``/oauth2/authorize`` (authorization code with PKCE, B2C clients): a simulator has no login
page, so the user's credentials come with the request, as HTTP Basic auth (e-mail and
password) on ``GET`` or as the form fields ``username`` and ``password`` on ``POST``.
Without them the answer is 401 with a Basic challenge. A valid request answers 302 to the
redirect URI with ``code`` and ``state``; a refused one answers 302 with ``error`` (and
``state``) where the client and redirect URI are known, else 400 with the API's error body.

``/oauth2/token`` takes ``application/x-www-form-urlencoded`` parameters and client
authentication by HTTP Basic or the ``client_id`` / ``client_secret`` form fields, and
answers RFC 6749 JSON: the token, or ``{"error", "error_description"}`` with 400 (401 for
``invalid_client``).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote_plus

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gateway.api.errors import ApiError
from gateway.auth import AuthorizeError, AuthServer, OAuthError

__all__ = ["OAuthErrorBody", "TokenAnswer", "router"]

router = APIRouter(tags=["OAuth2"])

_MAX_BODY = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_AUTHORIZE_FIELDS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)


class TokenAnswer(BaseModel):
    """A token answer (RFC 6749 section 5.1)."""

    access_token: str
    token_type: str = Field(examples=["Bearer"])
    expires_in: int = Field(description="Seconds the access token is valid for")
    scope: str = Field(description="The granted scopes, space-separated")
    refresh_token: str | None = Field(None, description="Authorization code flow only")


class OAuthErrorBody(BaseModel):
    """A refused token request (RFC 6749 section 5.2)."""

    error: str = Field(
        examples=["invalid_grant"],
        description="invalid_request, invalid_client, invalid_grant, unauthorized_client, "
        "unsupported_grant_type or invalid_scope",
    )
    error_description: str


def _form_schema(properties: dict[str, str], required: list[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            name: {"type": "string", "description": text}
                            for name, text in properties.items()
                        },
                        "required": required,
                    }
                }
            },
        }
    }


_AUTHORIZE_FORM = _form_schema(
    {
        "response_type": "code",
        "client_id": "The B2C client",
        "redirect_uri": "One of the client's registered redirect URIs",
        "scope": "Space-separated scopes (default: all the client may have)",
        "state": "Echoed back to the redirect URI",
        "code_challenge": "PKCE S256 challenge: base64url(SHA-256(code_verifier))",
        "code_challenge_method": "S256",
        "username": "The user's e-mail address",
        "password": "The user's password",
    },
    ["response_type", "client_id", "redirect_uri", "code_challenge", "code_challenge_method"],
)

_TOKEN_FORM = _form_schema(
    {
        "grant_type": "authorization_code, client_credentials or refresh_token",
        "code": "authorization_code: the code from the redirect",
        "redirect_uri": "authorization_code: the redirect URI of the authorization",
        "code_verifier": "authorization_code: the PKCE code verifier",
        "refresh_token": "refresh_token: the refresh token",
        "scope": "client_credentials, refresh_token: space-separated scopes",
        "client_id": "The client (unless given by HTTP Basic auth)",
        "client_secret": "The client's secret (unless given by HTTP Basic auth)",
    },
    ["grant_type"],
)

_REDIRECT_RESPONSES: dict[int | str, dict[str, Any]] = {
    302: {"description": "To the redirect URI with code and state, or error and state"},
    400: {"description": "Unknown client or redirect URI, or a malformed request"},
    401: {"description": "The user's credentials are required"},
}


def _basic(request: Request, *, form_encoded: bool) -> tuple[str, str] | None:
    """The HTTP Basic credentials of the request; ``ValueError`` when malformed."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("malformed Basic credentials") from None
    name, colon, secret = decoded.partition(":")
    if not colon:
        raise ValueError("malformed Basic credentials")
    if form_encoded:
        return unquote_plus(name), unquote_plus(secret)
    return name, secret


def _single(items: list[tuple[str, str]]) -> dict[str, str]:
    """The parameters as a mapping; a parameter given twice is an error (RFC 6749 3.1)."""
    out: dict[str, str] = {}
    for name, value in items:
        if name in out:
            raise ValueError(f"{name} is given more than once")
        out[name] = value
    return out


async def _form(request: Request) -> dict[str, str]:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise ValueError("the body must be application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise ValueError("the body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    return _single(parse_qsl(text, keep_blank_values=True, max_num_fields=50))


def _server(request: Request) -> AuthServer:
    server: AuthServer = request.app.state.auth
    return server


def _api_error_response(request: Request, error: ApiError) -> JSONResponse:
    clock = getattr(request.app.state, "clock_ms", None)
    now = int(clock()) if callable(clock) else time.time_ns() // 1_000_000
    return JSONResponse(error.body(now), status_code=error.status, headers=error.headers)


async def _authorize(
    request: Request, params: dict[str, str], credentials: tuple[str, str] | None
) -> Response:
    username, password = credentials if credentials is not None else (None, None)
    try:
        location = await run_in_threadpool(
            lambda: _server(request).authorize(
                **{name: params.get(name) for name in _AUTHORIZE_FIELDS},
                username=username,
                password=password,
            )
        )
    except AuthorizeError as exc:
        if exc.redirect_to is not None:
            return RedirectResponse(exc.redirect_to, status_code=302, headers=_NO_STORE)
        if exc.login_required:
            error = ApiError(
                401,
                exc.description,
                detail=1,
                headers={"WWW-Authenticate": 'Basic realm="tcusim", charset="UTF-8"'},
            )
            return _api_error_response(request, error)
        return _api_error_response(request, ApiError(400, exc.description, detail=1))
    return RedirectResponse(location, status_code=302, headers=_NO_STORE)


@router.get(
    "/oauth2/authorize",
    summary="Authorize a B2C client (authorization code with PKCE)",
    operation_id="oauthAuthorize",
    response_class=Response,
    status_code=302,
    responses=_REDIRECT_RESPONSES,
)
async def authorize_get(
    request: Request,
    *,
    response_type: Annotated[str | None, Query(description="code")] = None,
    client_id: Annotated[str | None, Query(description="The B2C client")] = None,
    redirect_uri: Annotated[str | None, Query(description="A registered redirect URI")] = None,
    scope: Annotated[str | None, Query(description="Space-separated scopes")] = None,
    state: Annotated[str | None, Query(description="Echoed back to the redirect URI")] = None,
    code_challenge: Annotated[str | None, Query(description="PKCE S256 challenge")] = None,
    code_challenge_method: Annotated[str | None, Query(description="S256")] = None,
) -> Response:
    """The user's e-mail and password come as HTTP Basic auth."""
    try:
        params = _single(request.query_params.multi_items())
        credentials = _basic(request, form_encoded=False)
    except ValueError as exc:
        return _api_error_response(request, ApiError(400, str(exc), detail=1))
    return await _authorize(request, params, credentials)


@router.post(
    "/oauth2/authorize",
    summary="Authorize a B2C client, the user's credentials in the form",
    operation_id="oauthAuthorizeForm",
    response_class=Response,
    status_code=302,
    responses=_REDIRECT_RESPONSES,
    openapi_extra=_AUTHORIZE_FORM,
)
async def authorize_post(request: Request) -> Response:
    """Like ``GET``, the parameters and the user's ``username`` / ``password`` in a form."""
    try:
        params = _single([*request.query_params.multi_items(), *(await _form(request)).items()])
        credentials = _basic(request, form_encoded=False)
    except ValueError as exc:
        return _api_error_response(request, ApiError(400, str(exc), detail=1))
    if "username" in params or "password" in params:
        credentials = (params.get("username", ""), params.get("password", ""))
    return await _authorize(request, params, credentials)


def _oauth_error(error: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="tcusim"'
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


@router.post(
    "/oauth2/token",
    summary="Exchange a grant for tokens",
    operation_id="oauthToken",
    response_model=TokenAnswer,
    response_model_exclude_none=True,
    responses={
        400: {"model": OAuthErrorBody, "description": "The grant or request is refused"},
        401: {"model": OAuthErrorBody, "description": "Client authentication failed"},
    },
    openapi_extra=_TOKEN_FORM,
)
async def token(request: Request) -> Response:
    """Grants: ``authorization_code`` (with ``code_verifier``), ``client_credentials``,
    ``refresh_token``."""
    try:
        params = await _form(request)
    except ValueError as exc:
        return _oauth_error(OAuthError("invalid_request", str(exc)))
    try:
        basic = _basic(request, form_encoded=True)
    except ValueError:
        return _oauth_error(OAuthError("invalid_client", "malformed Basic credentials", status=401))
    client_id, client_secret = params.get("client_id"), params.get("client_secret")
    if basic is not None:
        if client_secret is not None:
            return _oauth_error(
                OAuthError("invalid_request", "give the client's credentials only once")
            )
        if client_id is not None and client_id != basic[0]:
            return _oauth_error(OAuthError("invalid_request", "client_id differs from Basic auth"))
        client_id, client_secret = basic
    server = _server(request)
    try:
        answer = await run_in_threadpool(
            lambda: server.token(
                params.get("grant_type"),
                client_id=client_id,
                client_secret=client_secret,
                code=params.get("code"),
                redirect_uri=params.get("redirect_uri"),
                code_verifier=params.get("code_verifier"),
                refresh_token=params.get("refresh_token"),
                scope=params.get("scope"),
            )
        )
    except OAuthError as exc:
        return _oauth_error(exc)
    return JSONResponse(answer.json(), headers=_NO_STORE)
