"""The connected-car Web API application (v4 shape): :func:`create_app`.

The data API lives under ``/connectedcar/v4`` (``/user/...`` for B2C users, ``/fleets/...``
for B2B fleets), OAuth2 under ``/oauth2``. Answers are HAL+JSON (``application/hal+json``;
GeoJSON ``application/vnd.geo+json`` for a last position and a trip's waypoints when asked
by ``Accept``); errors carry the body of :mod:`gateway.api.errors`. The OpenAPI document is
served at ``/connectedcar/v4/openapi.json`` and checked in as ``docs/openapi.json``::

    python -m gateway.api.app --openapi > docs/openapi.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.accounts import Accounts
from gateway.api import b2b, b2c, callbacks, remotes
from gateway.api.models import ErrorBody
from gateway.auth import AuthServer
from gateway.store import Store

__all__ = [
    "API_PREFIX",
    "TITLE",
    "VERSION",
    "app_from_env",
    "create_app",
    "offline_app",
    "openapi_document",
]

API_PREFIX = "/connectedcar/v4"
TITLE = "tcusim connected-car API"
VERSION = "4.x"

DESCRIPTION = """\
A connected-car Web API in the shape of the v4 reference, serving the data tcusim's gateway
collected from simulated vehicles.

* Authentication: OAuth2 bearer tokens from `/oauth2/token` (authorization code with PKCE for
  users, client credentials for fleets).
* Answers are HAL+JSON: `_links`, and collections with `_embedded`, `total`, `currentPage`,
  `totalPage`. Page with `indexRange` (`0-9`, `10-`) and `pageSize`.
* Errors: `{"code", "uuid", "message", "timestamp"}` where `code` is the HTTP status times 100
  plus a detail number (40401: no such vehicle).
* What a request sees is the token's scopes, cut down to the vehicle's subscribed services
  and to the driver's privacy setting (`Geolocation` hides positions, `Full` everything but
  the privacy state).
"""

ERROR_MEDIA_TYPE = "application/json"

_ERROR_TEXT = {
    "400": "A query parameter, path parameter or body is not valid (detail 1)",
    "401": "No token (1), a token that is not valid (2) or an expired one (3)",
    "403": (
        "A scope is missing (1), the driver's privacy setting withholds the data (2), the"
        " vehicle's services do not cover it (3), or the wrong kind of account (4)"
    ),
    "404": "No such vehicle in the caller's account (1), or no such resource (2)",
    "429": "Too many requests for the plan (1); see Retry-After",
}


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _fix_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """Document our error bodies on every operation; drop FastAPI's 422 answers."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc.get("paths", {}).items():
        if not path.startswith(API_PREFIX):
            continue
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, text in _ERROR_TEXT.items():
                entry: dict[str, Any] = {
                    "description": text,
                    "content": {ERROR_MEDIA_TYPE: {"schema": error_ref}},
                }
                if status == "429":
                    entry["headers"] = {
                        "Retry-After": {
                            "description": "Seconds to wait before the next request",
                            "schema": {"type": "integer"},
                        }
                    }
                responses[status] = entry
    return doc


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (what ``/connectedcar/v4/openapi.json`` serves)."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=TITLE,
            version=VERSION,
            description=DESCRIPTION,
            routes=app.routes,
            tags=[
                {"name": "User", "description": "The signed-in user"},
                {"name": "Vehicles", "description": "Vehicles and their data"},
                {"name": "Trips", "description": "Trips of a vehicle"},
                {"name": "Callbacks", "description": "Where notifications go"},
                {"name": "Monitors", "description": "Conditions that send notifications"},
                {"name": "Fleet", "description": "B2B fleets and their vehicles"},
            ],
        )
        app.openapi_schema = _fix_openapi(doc)
    return app.openapi_schema


def create_app(
    store: Store,
    accounts: Accounts,
    auth: AuthServer,
    *,
    clock_ms: Callable[[], int] = _wall_ms,
    limiter: Any = None,
    base_url: str | None = None,
) -> FastAPI:
    """The Web API over ``store`` for ``accounts``, its tokens checked by ``auth``.

    ``clock_ms`` is "now" (for open-ended time filters and the rate limit); ``limiter``
    applies the plans' rate limits (none when ``None``); ``base_url`` (e.g.
    ``https://api.example``) prefixes the links, which are otherwise absolute paths.
    """
    from gateway.api import oauth, security  # noqa: PLC0415 (import cycles through routes)

    app = FastAPI(
        title=TITLE,
        version=VERSION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.store = store
    app.state.accounts = accounts
    app.state.auth = auth
    app.state.limiter = limiter
    app.state.clock_ms = clock_ms
    app.state.base_url = (base_url or "").rstrip("/")
    app.include_router(oauth.router)
    app.include_router(b2c.router, prefix=API_PREFIX)
    app.include_router(callbacks.user_router, prefix=API_PREFIX)
    app.include_router(b2b.router, prefix=API_PREFIX)
    app.include_router(callbacks.fleet_router, prefix=API_PREFIX)
    app.include_router(remotes.user_router, prefix=API_PREFIX)
    app.include_router(remotes.fleet_router, prefix=API_PREFIX)
    security.install(app)

    def _openapi() -> dict[str, Any]:
        return openapi_document(app)

    app.openapi = _openapi  # type: ignore[method-assign]
    return app


def offline_app() -> FastAPI:
    """An app over an empty in-memory store and the demo accounts (for its document)."""
    from gateway.accounts import default_accounts  # noqa: PLC0415
    from gateway.store import SqliteStore  # noqa: PLC0415

    accounts = default_accounts()
    return create_app(SqliteStore(":memory:"), accounts, AuthServer(accounts, b"\0" * 32))


def app_from_env() -> FastAPI:
    """An app configured by the environment, for ``uvicorn --factory``.

    ``TCUSIM_DB``: the gateway database (default ``tcusim-data/gateway.sqlite3``);
    ``TCUSIM_ACCOUNTS``: an accounts file (default: the demo accounts, with every vehicle
    the database knows given to the demo user and fleet); ``TCUSIM_TOKEN_SECRET``: the token
    signing secret (default: a random one, so tokens die with the process);
    ``TCUSIM_BASE_URL``: a prefix for the links.
    """
    import os  # noqa: PLC0415
    import secrets  # noqa: PLC0415

    from gateway.accounts import default_accounts, load_accounts  # noqa: PLC0415
    from gateway.ratelimit import RateLimiter  # noqa: PLC0415
    from gateway.store import DEFAULT_DB_PATH, open_store  # noqa: PLC0415

    store = open_store(os.environ.get("TCUSIM_DB") or str(DEFAULT_DB_PATH))
    path = os.environ.get("TCUSIM_ACCOUNTS")
    seen = [v.vin for v in store.vehicles()]
    accounts = load_accounts(path) if path else default_accounts(seen)
    secret = os.environ.get("TCUSIM_TOKEN_SECRET")
    key = secret.encode("utf-8") if secret else secrets.token_bytes(32)
    return create_app(
        store,
        accounts,
        AuthServer(accounts, key),
        limiter=RateLimiter(),
        base_url=os.environ.get("TCUSIM_BASE_URL"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.api.app --openapi``: print the OpenAPI document."""
    parser = argparse.ArgumentParser(prog="python -m gateway.api.app", description=__doc__)
    parser.add_argument("--openapi", action="store_true", help="print the OpenAPI document")
    args = parser.parse_args(argv)
    if not args.openapi:
        parser.print_help()
        return 2
    doc = openapi_document(offline_app())
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
