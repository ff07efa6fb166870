"""An app's side of the Web API: sign-in, calls, and a webhook receiver.

:class:`ApiClient` signs in the way a connected-car app does: a user through the
authorization-code flow with PKCE (S256), a fleet owner with client credentials; then it
calls the API with the bearer token. :class:`WebhookReceiver` is an HTTP endpoint on a
free local port that checks each notification's signature and keeps it. ``tcusim demo``
uses both; so can tests and scripts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx

from gateway.errors import GatewayError
from gateway.webhooks import SIGNATURE_HEADER, verify

__all__ = ["API_PREFIX", "ApiCallError", "ApiClient", "Notification", "WebhookReceiver"]

API_PREFIX = "/connectedcar/v4"


class ApiCallError(GatewayError):
    """A sign-in or a call was refused; ``status`` and ``body`` are the answer's."""

    def __init__(self, what: str, status: int, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class ApiClient:
    """Calls to the Web API at ``base_url`` (``http://host:port``) with a bearer token."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout)
        self.token: str | None = None

    def __repr__(self) -> str:
        return f"<ApiClient {self.http.base_url} signed_in={self.token is not None}>"

    def sign_in_user(
        self,
        *,
        email: str,
        password: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        scopes: str,
    ) -> str:
        """Authorization code with PKCE for the user; the access token (also kept)."""
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        state = secrets.token_urlsafe(8)
        answer = self.http.get(
            "/oauth2/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": scopes,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
            auth=(email, password),
        )
        location = answer.headers.get("location", "")
        query = parse_qs(urlsplit(location).query)
        if answer.status_code != 302 or "code" not in query or query.get("state") != [state]:
            raise ApiCallError("authorization", answer.status_code, location or answer.text)
        return self._token(
            {
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
            (client_id, client_secret),
        )

    def sign_in_fleet(self, *, client_id: str, client_secret: str, scopes: str = "") -> str:
        """Client credentials for a fleet owner's client; the access token (also kept)."""
        form = {"grant_type": "client_credentials"}
        if scopes:
            form["scope"] = scopes
        return self._token(form, (client_id, client_secret))

    def _token(self, form: Mapping[str, str], client: tuple[str, str]) -> str:
        answer = self.http.post("/oauth2/token", data=dict(form), auth=client)
        if answer.status_code != 200:
            raise ApiCallError("token", answer.status_code, answer.text)
        token: str = answer.json()["access_token"]
        self.token = token
        return token

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One call to ``/connectedcar/v4`` + ``path`` with the token; the raw answer."""
        headers = dict(options.pop("headers", {}))
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.http.request(method, API_PREFIX + path, headers=headers, **options)

    def get(self, path: str, **options: Any) -> Any:
        """GET and the JSON body; :class:`ApiCallError` unless the answer is 200."""
        answer = self.request("GET", path, **options)
        if answer.status_code != 200:
            raise ApiCallError(f"GET {path}", answer.status_code, answer.text)
        return answer.json()

    def post(self, path: str, body: Any) -> Any:
        """POST a JSON body and the JSON answer; :class:`ApiCallError` unless 200 or 202."""
        answer = self.request("POST", path, json=body)
        if answer.status_code not in (200, 202):
            raise ApiCallError(f"POST {path}", answer.status_code, answer.text)
        return answer.json()

    def vehicle_id(self, vin: str) -> str:
        """The API id of the signed-in user's vehicle ``vin``."""
        vehicles = self.get("/user/vehicles", params={"pageSize": 60})
        for vehicle in vehicles.get("_embedded", {}).get("vehicles", []):
            if vehicle.get("vin") == vin:
                return str(vehicle["id"])
        raise ApiCallError(f"vehicle {vin}", 404, "not among the user's vehicles")

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Notification:
    """One webhook notification as received: its JSON body and whether its signature held."""

    body: dict[str, Any]
    signed: bool


class WebhookReceiver:
    """A webhook endpoint on ``127.0.0.1``; ``secrets`` maps a callback id to its secret.

    It answers 200 to every well-formed POST (received, as the webhook contract asks) and
    keeps each notification with the result of its signature check; a body that is not JSON
    is answered 400 and counted in :attr:`malformed`.
    """

    def __init__(self, secrets_by_callback: Mapping[str, str] | None = None) -> None:
        self.secrets: dict[str, str] = dict(secrets_by_callback or {})
        self.received: list[Notification] = []
        self.malformed = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                accepted = receiver._take(raw, self.headers.get(SIGNATURE_HEADER, ""))
                self.send_response(200 if accepted else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/notifications"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tcusim-webhook-receiver", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self.url} received={len(self.received)}>"

    def _take(self, raw: bytes, signature: str) -> bool:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            if not isinstance(body, dict):
                self.malformed += 1
                return False
            secret = self.secrets.get(str(body.get("callbackId")))
            signed = secret is not None and verify(secret, raw, signature)
            self.received.append(Notification(body, signed))
            self._arrived.notify_all()
        return True

    def wait(self, predicate: Callable[[list[Notification]], bool], timeout: float) -> bool:
        """Wait until ``predicate(received)`` holds, at most ``timeout`` seconds; whether it did."""
        with self._arrived:
            return self._arrived.wait_for(lambda: predicate(self.received), timeout)

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
