"""OAuth2: tokens, PKCE, codes, client credentials; the HTTP endpoints and route guards."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.catalog import Scope
from gateway.accounts import Accounts, load_accounts_text
from gateway.api import oauth, security
from gateway.api.errors import ApiError
from gateway.auth import (
    AuthError,
    AuthorizeError,
    AuthServer,
    OAuthError,
    Principal,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenMalformed,
    catalog_scopes,
    pkce_challenge,
)
from gateway.ratelimit import RateLimiter

T0 = 1_780_000_000_000
SECRET = b"0123456789abcdef0123456789abcdef"
REDIRECT = "https://app.example/cb?x=1"
VERIFIER = "v" * 20 + "-._~" + "0123456789" * 2
VIN1, VIN2 = "VR3UHZKXZHT000201", "VR3UHZKXZHT000202"

ACCOUNTS = f"""\
format: tcusim-accounts/1
plans:
  - {{name: tiny, per_day: 5, per_second: 2}}
users:
  - {{id: alice, email: alice@example.com, password: alice-pw}}
  - {{id: bob, email: bob@example.com, password: bob-pw}}
fleets:
  - {{id: f1, label: Fleet one, vehicles: [{VIN2}]}}
  - {{id: f2, label: Fleet two}}
clients:
  - client_id: app
    secret: app-secret
    kind: b2c
    redirect_uris: ["{REDIRECT}", "http://127.0.0.1:9/other"]
    scopes: [data:position, data:trip, data:telemetry]
  - client_id: other-app
    secret: other-secret
    kind: b2c
    redirect_uris: ["{REDIRECT}"]
    scopes: [data:position]
  - {{client_id: fleet-app, secret: "fleet:secret", kind: b2b, fleet: f1,
      scopes: [data:position, data:alert]}}
  - {{client_id: tiny-app, secret: tiny-secret, kind: b2b, fleet: f2, plan: tiny}}
vehicles:
  - {{vin: {VIN1}, owner: alice}}
  - {{vin: {VIN2}}}
"""


class Clock:
    """Simulated time in epoch milliseconds."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture(scope="module")
def accounts() -> Accounts:
    return load_accounts_text(ACCOUNTS, "test-accounts", iterations=1)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(accounts: Accounts, clock: Clock) -> AuthServer:
    return AuthServer(accounts, SECRET, clock_ms=clock)


def authorize(server: AuthServer, **changes: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "scope": "data:position data:trip",
        "state": "st 1",
        "code_challenge": pkce_challenge(VERIFIER),
        "code_challenge_method": "S256",
        "username": "alice@example.com",
        "password": "alice-pw",
    }
    params.update(changes)
    return server.authorize(**params)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def code_of(url: str) -> str:
    return query_of(url)["code"]


def exchange(server: AuthServer, code: str, **changes: str | None) -> Any:
    params: dict[str, str | None] = {
        "client_id": "app",
        "client_secret": "app-secret",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
    }
    params.update(changes)
    return server.token("authorization_code", **params)


# -- the authorization code flow ---------------------------------------------------------------


def test_authorization_code_with_pkce_gives_a_user_token(server: AuthServer) -> None:
    url = authorize(server)
    assert url.startswith("https://app.example/cb?x=1&code=")
    assert query_of(url)["state"] == "st 1"
    answer = exchange(server, code_of(url))
    assert answer.token_type == "Bearer" and answer.expires_in == 3600
    assert answer.scope == "data:position data:trip" and answer.refresh_token
    who = server.verify(answer.access_token)
    assert who.kind == "user" and who.subject == "alice" and who.owner == "user:alice"
    assert who.client_id == "app" and who.scopes == {"data:position", "data:trip"}
    assert who.expires_at_ms == T0 + 3_600_000 and who.plan.name == "standard"
    body = answer.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
    assert answer.access_token not in repr(answer) and answer.refresh_token not in repr(answer)


def test_the_user_may_log_in_with_id_and_the_scope_defaults_to_the_clients(
    server: AuthServer,
) -> None:
    answer = exchange(server, code_of(authorize(server, username="alice", scope=None)))
    assert answer.scope == "data:position data:telemetry data:trip"
    assert "state" not in query_of(authorize(server, state=None))


def test_a_code_is_single_use(server: AuthServer) -> None:
    code = code_of(authorize(server))
    exchange(server, code)
    with pytest.raises(OAuthError) as caught:
        exchange(server, code)
    assert caught.value.error == "invalid_grant" and code not in str(caught.value)


def test_a_code_expires(server: AuthServer, clock: Clock) -> None:
    code = code_of(authorize(server))
    clock.now += 60_000
    with pytest.raises(OAuthError, match="invalid_grant"):
        exchange(server, code)
    code = code_of(authorize(server))
    clock.now += 59_999
    exchange(server, code)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"code_verifier": "w" * 43}, "does not match"),
        ({"code_verifier": "short"}, "43-128"),
        ({"code_verifier": "v" * 129}, "43-128"),
        ({"code_verifier": None}, "invalid_request"),
        ({"redirect_uri": "http://127.0.0.1:9/other"}, "redirect_uri differs"),
        ({"client_id": "other-app", "client_secret": "other-secret"}, "another client"),
        ({"code": "not-a-code"}, "unknown, used or expired"),
    ],
)
def test_a_code_exchange_is_refused(
    server: AuthServer, changes: dict[str, str | None], error: str
) -> None:
    code = code_of(authorize(server))
    with pytest.raises(OAuthError, match=error):
        exchange(server, **{"code": code, **changes})  # type: ignore[arg-type]


def test_a_refused_exchange_still_uses_up_the_code(server: AuthServer) -> None:
    code = code_of(authorize(server))
    with pytest.raises(OAuthError):
        exchange(server, code, code_verifier="w" * 43)
    with pytest.raises(OAuthError, match="unknown, used or expired"):
        exchange(server, code)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"client_id": "fleet-app"}, None),  # not a redirect URI of this client
        ({"scope": "data:alert"}, "invalid_scope"),
        ({"scope": "data:position data:nothing"}, "invalid_scope"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "abc"}, "invalid_request"),
        ({"password": "badpass-xyz"}, "access_denied"),
        ({"username": "nobody@example.com"}, "access_denied"),
    ],
)
def test_an_authorization_is_refused_to_the_redirect_uri(
    server: AuthServer, changes: dict[str, str | None], error: str | None
) -> None:
    with pytest.raises(AuthorizeError) as caught:
        authorize(server, **changes)
    if error is None:
        assert caught.value.redirect_to is None
        return
    assert caught.value.redirect_to is not None
    query = query_of(caught.value.redirect_to)
    assert query["error"] == error and query["state"] == "st 1" and "code" not in query
    assert "alice-pw" not in str(caught.value) and "badpass" not in str(caught.value)


def test_a_b2b_client_may_not_authorize_users(accounts: Accounts, clock: Clock) -> None:
    server = AuthServer(accounts, SECRET, clock_ms=clock)
    with pytest.raises(AuthorizeError) as caught:
        authorize(server, client_id="fleet-app")
    assert caught.value.redirect_to is None  # b2b clients have no redirect URI


@pytest.mark.parametrize(
    "changes",
    [{"client_id": "nope"}, {"client_id": None}, {"redirect_uri": "https://evil.example/cb"}],
)
def test_an_authorization_is_refused_without_redirect(
    server: AuthServer, changes: dict[str, str | None]
) -> None:
    with pytest.raises(AuthorizeError) as caught:
        authorize(server, **changes)
    assert caught.value.redirect_to is None and caught.value.error == "invalid_request"


def test_an_authorization_without_credentials_asks_for_them(server: AuthServer) -> None:
    with pytest.raises(AuthorizeError) as caught:
        authorize(server, username=None, password=None)
    assert caught.value.login_required and caught.value.redirect_to is None


# -- client credentials and refresh ------------------------------------------------------------


def test_client_credentials_give_a_fleet_token(server: AuthServer) -> None:
    answer = server.token("client_credentials", client_id="fleet-app", client_secret="fleet:secret")
    assert answer.refresh_token is None and answer.scope == "data:alert data:position"
    who = server.verify(answer.access_token)
    assert who.kind == "fleet" and who.subject == "f1" and who.owner == "fleet:f1"
    narrowed = server.token(
        "client_credentials",
        client_id="fleet-app",
        client_secret="fleet:secret",
        scope="data:alert",
    )
    assert server.verify(narrowed.access_token).scopes == {"data:alert"}
    with pytest.raises(OAuthError, match="invalid_scope"):
        server.token(
            "client_credentials",
            client_id="fleet-app",
            client_secret="fleet:secret",
            scope="data:trip",
        )


@pytest.mark.parametrize(
    ("request_", "error", "status"),
    [
        (("client_credentials", "fleet-app", "wrong"), "invalid_client", 401),
        (("client_credentials", "fleet-app", None), "invalid_client", 401),
        (("client_credentials", "nope", "fleet:secret"), "invalid_client", 401),
        (("client_credentials", None, None), "invalid_client", 401),
        (("client_credentials", "app", "app-secret"), "unauthorized_client", 400),
        (("password", "app", "app-secret"), "unsupported_grant_type", 400),
        ((None, "app", "app-secret"), "unsupported_grant_type", 400),
        (("refresh_token", "app", "app-secret"), "invalid_request", 400),
    ],
)
def test_token_requests_are_refused(
    server: AuthServer, request_: tuple[str | None, str | None, str | None], error: str, status: int
) -> None:
    grant, client_id, secret = request_
    with pytest.raises(OAuthError) as caught:
        server.token(grant, client_id=client_id, client_secret=secret)
    assert caught.value.error == error and caught.value.status == status
    assert caught.value.body()["error"] == error
    assert "fleet:secret" not in str(caught.value) and "app-secret" not in str(caught.value)


def test_a_refresh_token_gives_new_tokens(server: AuthServer, clock: Clock) -> None:
    first = exchange(server, code_of(authorize(server)))
    clock.now += 2 * 3_600_000
    with pytest.raises(TokenExpired):
        server.verify(first.access_token)
    again = server.token(
        "refresh_token",
        client_id="app",
        client_secret="app-secret",
        refresh_token=first.refresh_token,
        scope="data:trip",
    )
    who = server.verify(again.access_token)
    assert who.subject == "alice" and who.scopes == {"data:trip"}
    assert again.refresh_token and again.refresh_token != first.refresh_token


@pytest.mark.parametrize("case", ["access", "other-client", "wider", "garbage", "expired"])
def test_a_refresh_is_refused(server: AuthServer, clock: Clock, case: str) -> None:
    first = exchange(server, code_of(authorize(server)))
    token, client, secret, scope = first.refresh_token, "app", "app-secret", None
    if case == "access":
        token = first.access_token
    elif case == "other-client":
        client, secret = "other-app", "other-secret"
    elif case == "wider":
        scope = "data:telemetry"
    elif case == "garbage":
        token = "x.y"
    else:
        clock.now += 31 * 86_400_000
    with pytest.raises(OAuthError) as caught:
        server.token(
            "refresh_token",
            client_id=client,
            client_secret=secret,
            refresh_token=token,
            scope=scope,
        )
    assert caught.value.error in {"invalid_grant", "invalid_scope"}


# -- tokens ------------------------------------------------------------------------------------


def test_a_refresh_token_is_no_access_token(server: AuthServer) -> None:
    first = exchange(server, code_of(authorize(server)))
    with pytest.raises(TokenInvalid):
        server.verify(first.refresh_token)


def test_tokens_expire_with_the_clock(server: AuthServer, clock: Clock) -> None:
    token = server.issue_access_token("user", "alice", "app", ["data:trip"], ttl_s=10)
    clock.now += 9_999
    assert server.verify(token).subject == "alice"
    clock.now += 1
    with pytest.raises(TokenExpired):
        server.verify(token)


def test_any_process_with_the_secret_verifies_and_no_other(
    accounts: Accounts, server: AuthServer, clock: Clock
) -> None:
    token = server.issue_access_token("fleet", "f1", "fleet-app", ["data:alert"])
    twin = AuthServer(accounts, SECRET, clock_ms=clock)
    assert twin.verify(token) == server.verify(token)
    stranger = AuthServer(accounts, b"another secret of 32 bytes......", clock_ms=clock)
    with pytest.raises(TokenInvalid):
        stranger.verify(token)


def test_tokens_of_removed_clients_or_subjects_are_refused(
    server: AuthServer, clock: Clock
) -> None:
    for kind, subject, client in [("user", "zoe", "app"), ("fleet", "f9", "fleet-app")]:
        token = server.issue_access_token(kind, subject, client, [])  # type: ignore[arg-type]
        with pytest.raises(TokenInvalid):
            server.verify(token)
    with pytest.raises(AuthError):
        server.issue_access_token("user", "alice", "nope", [])
    other = load_accounts_text(
        ACCOUNTS.replace("client_id: app\n", "client_id: app2\n"), "x", iterations=1
    )
    token = server.issue_access_token("user", "alice", "app", [])
    with pytest.raises(TokenInvalid):
        AuthServer(other, SECRET, clock_ms=clock).verify(token)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "a..b", "!!!.abc", "a." + "A" * 42, "a." + "A" * 44, "é.é", "x" * 5000],
)
def test_malformed_tokens(server: AuthServer, token: str) -> None:
    with pytest.raises(TokenMalformed):
        server.verify(token)


def _mutations() -> st.SearchStrategy[tuple[str, int, str]]:
    alphabet = st.characters(codec="utf-8") | st.sampled_from("A_-.=a0")
    return st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(0), alphabet)


@settings(max_examples=400)
@given(_mutations(), st.sampled_from(["user", "fleet"]))
def test_any_change_to_a_token_fails_verification(
    mutation: tuple[str, int, str], kind: str
) -> None:
    accounts = load_accounts_text(ACCOUNTS, "x", iterations=1)
    server = AuthServer(accounts, SECRET, clock_ms=Clock())
    subject, client = ("alice", "app") if kind == "user" else ("f1", "fleet-app")
    token = server.issue_access_token(kind, subject, client, ["data:trip"])  # type: ignore[arg-type]
    how, at, char = mutation
    at %= len(token) + (how == "insert")
    if how == "replace":
        changed = token[:at] + char + token[at + 1 :]
    elif how == "insert":
        changed = token[:at] + char + token[at:]
    else:
        changed = token[:at] + token[at + 1 :]
    if changed == token:
        return
    with pytest.raises(TokenError):
        server.verify(changed)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_string_is_refused_with_a_token_error(text: str) -> None:
    server = AuthServer(load_accounts_text(ACCOUNTS, "x", iterations=1), SECRET)
    with pytest.raises(TokenError):
        server.verify(text)


def test_a_forged_payload_with_a_copied_signature_fails(server: AuthServer) -> None:
    token = server.issue_access_token("user", "alice", "app", ["data:trip"])
    payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sc"] = ["data:position"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenInvalid):
        server.verify(f"{forged}.{signature}")


def test_the_server_refuses_a_short_secret_and_hides_its_own(accounts: Accounts) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        AuthServer(accounts, b"short")
    with pytest.raises(ValueError, match="code_ttl_s"):
        AuthServer(accounts, SECRET, code_ttl_s=0)
    assert "0123456789abcdef" not in repr(AuthServer(accounts, SECRET))


def test_catalog_scopes() -> None:
    assert catalog_scopes(["data:telemetry"]) == {Scope.TELEMETRY, Scope.MAINTENANCE}
    assert catalog_scopes(["data:position", "remote:horn:write", "data:trip"]) == {
        Scope.POSITION,
        Scope.TRIP,
    }
    assert catalog_scopes([]) == frozenset()


# -- HTTP: the OAuth endpoints and the route guards --------------------------------------------


class Http:
    """A synchronous face on an httpx AsyncClient talking to an ASGI app in-process."""

    def __init__(self, app: FastAPI) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def build_app(accounts: Accounts, clock: Clock) -> FastAPI:
    app = FastAPI()
    app.state.accounts = accounts
    app.state.auth = AuthServer(accounts, SECRET, clock_ms=clock)
    app.state.limiter = RateLimiter(clock_ms=clock)
    app.state.clock_ms = clock
    app.include_router(oauth.router)
    api = APIRouter(prefix="/connectedcar/v4")

    @api.get("/user")
    async def user(who: Annotated[Principal, Depends(security.require_user)]) -> dict[str, str]:
        return {"owner": who.owner}

    @api.get("/user/positions")
    async def positions(
        who: Annotated[Principal, Depends(security.require_scopes("data:position"))],
        user: Annotated[Principal, Depends(security.require_user)],
    ) -> dict[str, str]:
        return {"owner": who.owner}

    @api.get("/fleets/{fid}/vehicles")
    async def fleet(
        who: Annotated[Principal, Depends(security.require_fleet)], page: int = 0
    ) -> dict[str, Any]:
        return {"owner": who.owner, "page": page}

    @api.get("/broken")
    async def broken() -> None:
        raise ApiError(404, "no such vehicle", detail=1)

    app.include_router(api)
    security.install(app)
    return app


@pytest.fixture
def http(accounts: Accounts, clock: Clock) -> Iterator[Http]:
    client = Http(build_app(accounts, clock))
    try:
        yield client
    finally:
        client.close()


AUTHORIZE = {
    "response_type": "code",
    "client_id": "app",
    "redirect_uri": REDIRECT,
    "scope": "data:position data:trip",
    "state": "s-42",
    "code_challenge": pkce_challenge(VERIFIER),
    "code_challenge_method": "S256",
}


def assert_error(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code // 100, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code and set(body) == {"code", "uuid", "message", "timestamp"}
    return body


def user_token(http: Http) -> str:
    response = http.get(
        "/oauth2/authorize", params=AUTHORIZE, auth=("alice@example.com", "alice-pw")
    )
    assert response.status_code == 302
    location = response.headers["location"]
    assert query_of(location)["state"] == "s-42"
    response = http.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code_of(location),
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
        },
        auth=("app", "app-secret"),
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "data:position data:trip"
    assert body["expires_in"] == 3600 and body["refresh_token"]
    return str(body["access_token"])


def fleet_token(http: Http, client: str = "fleet-app", secret: str = "fleet:secret") -> str:
    response = http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client, "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    assert "refresh_token" not in response.json()
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_http_authorization_code_flow_end_to_end(http: Http) -> None:
    token = user_token(http)
    response = http.get("/connectedcar/v4/user/positions", headers=bearer(token))
    assert response.status_code == 200 and response.json() == {"owner": "user:alice"}
    assert response.headers["X-RateLimit-Limit-1"] == "100000"
    assert response.headers["X-RateLimit-Remaining-1"] == "99999"
    assert response.headers["X-RateLimit-Limit-2"] == "100"
    assert response.headers["X-RateLimit-Remaining-2"] == "99"


def test_http_authorize_by_form_post(http: Http) -> None:
    form = {**AUTHORIZE, "username": "bob@example.com", "password": "bob-pw"}
    response = http.post("/oauth2/authorize", data=form)
    assert response.status_code == 302 and "code=" in response.headers["location"]
    form["password"] = "nope"
    response = http.post("/oauth2/authorize", data=form)
    assert response.status_code == 302
    assert query_of(response.headers["location"])["error"] == "access_denied"


def test_http_client_credentials_flow_end_to_end(http: Http) -> None:
    token = fleet_token(http)
    response = http.get("/connectedcar/v4/fleets/f1/vehicles?page=2", headers=bearer(token))
    assert response.status_code == 200 and response.json() == {"owner": "fleet:f1", "page": 2}
    basic = http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=("fleet-app", "fleet:secret"),
    )
    assert basic.status_code == 200


def test_http_authorize_refusals(http: Http) -> None:
    response = http.get("/oauth2/authorize", params=AUTHORIZE)
    assert_error(response, 40101)
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    response = http.get(
        "/oauth2/authorize",
        params={**AUTHORIZE, "redirect_uri": "https://evil.example/"},
        auth=("alice@example.com", "alice-pw"),
    )
    assert_error(response, 40001)
    response = http.get(
        "/oauth2/authorize",
        params={**AUTHORIZE, "code_challenge_method": "plain"},
        auth=("alice@example.com", "alice-pw"),
    )
    assert response.status_code == 302
    assert query_of(response.headers["location"])["error"] == "invalid_request"
    response = http.get(
        "/oauth2/authorize?client_id=app&client_id=app", auth=("alice@example.com", "alice-pw")
    )
    assert_error(response, 40001)
    response = http.get("/oauth2/authorize", params=AUTHORIZE, headers={"Authorization": "Basic !"})
    assert_error(response, 40001)


def test_http_token_refusals(http: Http) -> None:
    response = http.post("/oauth2/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    response = http.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": "x",
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
        },
        auth=("app", "app-secret"),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    response = http.post(
        "/oauth2/token", json={"grant_type": "client_credentials"}, auth=("app", "app-secret")
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    response = http.post(
        "/oauth2/token",
        content=b"grant_type=client_credentials&grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=("fleet-app", "fleet:secret"),
    )
    assert response.json()["error"] == "invalid_request"
    response = http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "client_secret": "fleet:secret"},
        auth=("fleet-app", "fleet:secret"),
    )
    assert response.json()["error"] == "invalid_request"
    response = http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic %%%"},
    )
    assert response.status_code == 401
    response = http.post(
        "/oauth2/token",
        content=b"grant_type=\xff",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.json()["error"] == "invalid_request"


def test_http_refresh_token_grant(http: Http) -> None:
    response = http.post(
        "/oauth2/authorize",
        data={**AUTHORIZE, "username": "alice", "password": "alice-pw"},
    )
    code = code_of(response.headers["location"])
    tokens = http.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            "client_id": "app",
            "client_secret": "app-secret",
        },
    ).json()
    response = http.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=("app", "app-secret"),
    )
    assert response.status_code == 200
    assert http.get("/connectedcar/v4/user", headers=bearer(response.json()["access_token"]))


def test_http_no_wrong_and_expired_tokens(http: Http, clock: Clock) -> None:
    response = http.get("/connectedcar/v4/user")
    assert_error(response, 40101)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tcusim"'
    assert "X-RateLimit-Limit-1" not in response.headers
    assert_error(http.get("/connectedcar/v4/user", headers={"Authorization": "Basic eDp5"}), 40101)
    response = http.get("/connectedcar/v4/user", headers=bearer("not-a-token"))
    assert_error(response, 40102)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    token = user_token(http)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_error(http.get("/connectedcar/v4/user", headers=bearer(forged)), 40102)
    clock.now += 3_600_000
    body = assert_error(http.get("/connectedcar/v4/user", headers=bearer(token)), 40103)
    assert token not in json.dumps(body)
    assert body["timestamp"].startswith("2026-05-28T")


def test_http_missing_scope_and_wrong_kind(http: Http) -> None:
    other = http.get(
        "/oauth2/authorize",
        params={**AUTHORIZE, "scope": "data:trip"},
        auth=("alice@example.com", "alice-pw"),
    )
    tokens = http.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code_of(other.headers["location"]),
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
        },
        auth=("app", "app-secret"),
    ).json()
    response = http.get("/connectedcar/v4/user/positions", headers=bearer(tokens["access_token"]))
    body = assert_error(response, 40301)
    assert "data:position" in body["message"]
    assert response.headers["X-RateLimit-Remaining-2"] == "99"  # counted once
    fleet = fleet_token(http)
    assert_error(http.get("/connectedcar/v4/user", headers=bearer(fleet)), 40304)
    assert_error(http.get("/connectedcar/v4/fleets/f2/vehicles", headers=bearer(fleet)), 40402)
    user = user_token(http)
    assert_error(http.get("/connectedcar/v4/fleets/f1/vehicles", headers=bearer(user)), 40304)


def test_http_validation_and_other_errors_use_the_error_body(http: Http) -> None:
    fleet = fleet_token(http)
    response = http.get("/connectedcar/v4/fleets/f1/vehicles?page=x", headers=bearer(fleet))
    body = assert_error(response, 40001)
    assert "page" in body["message"]
    assert response.headers["X-RateLimit-Limit-2"] == "100"
    assert_error(http.get("/connectedcar/v4/broken"), 40401)
    assert_error(http.get("/nowhere"), 40402)
    assert_error(http.post("/connectedcar/v4/user"), 40500)


def test_http_rate_limit_answers_429_with_retry_after(http: Http, clock: Clock) -> None:
    token = fleet_token(http, "tiny-app", "tiny-secret")
    url = "/connectedcar/v4/fleets/f2/vehicles"
    clock.now = T0 - T0 % 1000  # the start of a second
    remaining = [http.get(url, headers=bearer(token)) for _ in range(2)]
    assert [r.headers["X-RateLimit-Remaining-2"] for r in remaining] == ["1", "0"]
    clock.now += 250
    response = http.get(url, headers=bearer(token))
    assert_error(response, 42901)
    assert response.headers["Retry-After"] == "1" == response.headers["X-RateLimit-Reset"]
    assert response.headers["X-RateLimit-Remaining-1"] == "3"
    clock.now += 750
    assert http.get(url, headers=bearer(token)).status_code == 200
    assert http.get(url, headers=bearer(token)).status_code == 200
    clock.now += 1000
    assert http.get(url, headers=bearer(token)).headers["X-RateLimit-Remaining-1"] == "0"
    response = http.get(url, headers=bearer(token))
    assert_error(response, 42901)
    assert response.headers["X-RateLimit-Remaining-1"] == "0"
    assert int(response.headers["Retry-After"]) > 86_000


def test_the_openapi_document_declares_both_flows_and_the_scopes(
    accounts: Accounts, clock: Clock
) -> None:
    document = build_app(accounts, clock).openapi()
    scheme = document["components"]["securitySchemes"]["oauth2"]
    flows = scheme["flows"]
    assert flows["authorizationCode"]["authorizationUrl"] == "/oauth2/authorize"
    assert flows["clientCredentials"]["tokenUrl"] == "/oauth2/token"
    assert "remote:horn:write" in flows["authorizationCode"]["scopes"]
    operation = document["paths"]["/connectedcar/v4/user/positions"]["get"]
    assert {"oauth2": ["data:position"]} in operation["security"]
    token = document["paths"]["/oauth2/token"]["post"]
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]


@pytest.fixture(scope="module")
def shared_http(accounts: Accounts) -> Iterator[Http]:
    client = Http(build_app(accounts, Clock()))
    try:
        yield client
    finally:
        client.close()


form_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["authorization_code", "client_credentials", "refresh_token", "app", "S256", REDIRECT]
    ),
)
form_names = st.sampled_from(
    [
        "grant_type",
        "code",
        "redirect_uri",
        "code_verifier",
        "refresh_token",
        "scope",
        "client_id",
        "client_secret",
        "response_type",
        "state",
        "code_challenge",
        "code_challenge_method",
        "username",
        "password",
        "other",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(form_names, form_values), max_size=8),
    st.sampled_from(["/oauth2/token", "/oauth2/authorize"]),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_any_oauth_request_gets_an_answer_not_a_crash(
    shared_http: Http, fields: list[tuple[str, str]], path: str, basic: str | None
) -> None:
    headers = {}
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    response = shared_http.post(path, data=dict(fields), headers=headers)
    assert response.status_code in {200, 302, 400, 401}, response.text
    get = shared_http.get("/oauth2/authorize", params=fields, headers=headers)
    assert get.status_code in {302, 400, 401}, get.text
