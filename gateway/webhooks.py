"""Webhook notifications: attributes, signatures and the delivery loop.

A callback (``Record`` kind ``"callback"``, body from :func:`gateway.monitors.parse_callback`
plus ``status`` and ``secret``) says where notifications go. :func:`enqueue_message` turns one
message (a monitor or remote event) into a queued delivery: the callback's attributes, with
``$vin``-style variables valued, become headers (``Header``), query parameters (``Query``)
or entries of the body's ``attributes`` list (``Body``).

:class:`WebhookSender` posts due deliveries. Each post carries
``X-Tcusim-Signature: t=<ms>,v1=<hex>``, the HMAC-SHA256 under the callback's secret of
``"<t>." + body`` (:func:`sign`; a receiver checks it with :func:`verify`). A ``200`` answer
means received; anything else, a connection error or a timeout is retried every 10 s, and a
notification not received 72 h after it was queued is dropped. The secret appears in no log
line, error or delivery record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx

from gateway.errors import GatewayError
from gateway.store import Delivery, DeliveryState, Record, Store

__all__ = [
    "DEFAULT_DROP_AFTER_MS",
    "DEFAULT_RETRY_EVERY_MS",
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "DeliveryReport",
    "WebhookError",
    "WebhookSender",
    "apply_attributes",
    "enqueue_message",
    "new_secret",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tcusim-Signature"
DELIVERY_HEADER = "X-Tcusim-Delivery"
DEFAULT_RETRY_EVERY_MS = 10_000
DEFAULT_DROP_AFTER_MS = 72 * 3600 * 1000
DEFAULT_TOLERANCE_MS = 5 * 60 * 1000
USER_AGENT = "tcusim-gateway"

# Headers the sender sets itself: an attribute may not replace them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Type",
        "Content-Length",
        "Content-Encoding",
        "Transfer-Encoding",
        "Host",
        "Connection",
        "User-Agent",
        SIGNATURE_HEADER,
        DELIVERY_HEADER,
    )
)
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
_SIGNATURE = re.compile(r"t=(\d{1,19}),v1=([0-9a-f]{64})")


class WebhookError(GatewayError):
    """A notification cannot be queued (its callback is not a webhook, or is gone)."""


def new_secret() -> str:
    """A new callback secret: 32 random bytes, URL-safe text prefixed ``whsec_``."""
    return "whsec_" + secrets.token_urlsafe(32)


def _mac(secret: str, body: bytes, timestamp_ms: int) -> str:
    message = str(timestamp_ms).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp_ms: int) -> str:
    """The ``X-Tcusim-Signature`` value of ``body`` sent at ``timestamp_ms``: ``t=..,v1=..``."""
    if timestamp_ms < 0:
        raise ValueError("the timestamp must not be negative")
    return f"t={timestamp_ms},v1={_mac(secret, body, timestamp_ms)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    now_ms: int | None = None,
    tolerance_ms: int = DEFAULT_TOLERANCE_MS,
) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` (compared in constant time).

    With ``now_ms`` the signature's time must also be within ``tolerance_ms`` of it, which
    refuses a notification replayed later. Any malformed header is simply not valid.
    """
    if not isinstance(header, str):
        return False
    m = _SIGNATURE.fullmatch(header.strip())
    if m is None:
        return False
    stamp = int(m.group(1))
    if now_ms is not None and abs(now_ms - stamp) > tolerance_ms:
        return False
    return hmac.compare_digest(_mac(secret, body, stamp), m.group(2))


# -- attributes ------------------------------------------------------------------------------


def _valued(value: str, variables: Mapping[str, str]) -> str:
    """``value``, or the variable it names when it is ``$name`` (any case) of a known one."""
    if value.startswith("$"):
        known = {k.lower(): v for k, v in variables.items()}
        found = known.get(value[1:].lower())
        if found is not None:
            return found
    return value


def _header_value(value: str) -> str:
    """``value`` as an HTTP header value: characters outside printable ASCII percent-encoded."""
    if all(" " <= c <= "~" for c in value):
        return value
    return "".join(c if " " <= c <= "~" and c != "%" else quote(c, safe="") for c in value)


def _merge(layers: Sequence[Sequence[Mapping[str, str]]]) -> list[Mapping[str, str]]:
    """Attributes of later layers replace earlier ones of the same type and key."""
    merged: dict[tuple[str, str], Mapping[str, str]] = {}
    for layer in layers:
        for attr in layer:
            key = attr["key"].lower() if attr["type"] == "Header" else attr["key"]
            merged.pop((attr["type"], key), None)
            merged[(attr["type"], key)] = attr
    return list(merged.values())


def apply_attributes(
    target: str,
    attributes: Sequence[Mapping[str, str]],
    variables: Mapping[str, str],
) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    """``(url, headers, body attributes)`` of a notification to ``target``.

    ``attributes`` are ``{type, key, value}`` checked by
    :func:`gateway.monitors.parse_attributes`; a value ``$name`` is the variable ``name``
    (``vin``, ``callbackId``, ``monitorId``, ...: any case) when it is known, else literal.
    ``Query`` attributes are added to the URL's query string.
    """
    headers: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    body: list[dict[str, str]] = []
    for attr in attributes:
        value = _valued(attr["value"], variables)
        if attr["type"] == "Header":
            headers[attr["key"]] = _header_value(value)
        elif attr["type"] == "Query":
            query.append((attr["key"], value))
        else:
            body.append({"key": attr["key"], "value": value})
    url = target
    if query:
        parts = urlsplit(target)
        extra = urlencode(query)
        url = urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))
    return url, headers, body


def enqueue_message(
    store: Store,
    callback: Record,
    message: Mapping[str, Any],
    *,
    variables: Mapping[str, str],
    extra_attributes: Sequence[Sequence[Mapping[str, str]]] = (),
    now_ms: int,
) -> int:
    """Queue ``message`` (``type``, ``date``, ``monitorEvent`` or ``remoteEvent``) for a callback.

    The body is ``{callbackId, attributes, **message}``; ``attributes`` are the callback's
    webhook attributes, then each layer of ``extra_attributes`` (replacing those of the same
    type and key). ``vin``, ``callbackId`` and ``callbackLabel`` are added to ``variables``.
    Returns the delivery id; :class:`WebhookError` when the callback has no webhook.
    """
    webhook = callback.body.get("callback", {}).get("webhook")
    if not isinstance(webhook, Mapping) or not isinstance(webhook.get("target"), str):
        raise WebhookError(f"callback {callback.id} has no webhook")
    values = {
        "callbackId": callback.id,
        "callbackLabel": str(callback.body.get("label", "")),
        **variables,
    }
    layers = [webhook.get("attributes", []), *extra_attributes]
    url, headers, body_attributes = apply_attributes(webhook["target"], _merge(layers), values)
    body = {"callbackId": callback.id, "attributes": body_attributes, **message}
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return store.enqueue_delivery(callback.id, url, raw, headers, now_ms)


# -- delivery --------------------------------------------------------------------------------


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one :meth:`WebhookSender.deliver_due` did."""

    delivered: int = 0
    retried: int = 0
    dropped: int = 0


class WebhookSender:
    """Posts due webhook deliveries of a store, signed, retried and dropped by the rules.

    ``client`` is an :class:`httpx.Client` to use (one is made, and closed by :meth:`close`,
    when not given); redirects are never followed. ``clock_ms`` is "now".
    """

    def __init__(
        self,
        store: Store,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        client: httpx.Client | None = None,
        retry_every_ms: int = DEFAULT_RETRY_EVERY_MS,
        drop_after_ms: int = DEFAULT_DROP_AFTER_MS,
        batch: int = 100,
        timeout_s: float = 5,
    ) -> None:
        if retry_every_ms <= 0 or drop_after_ms <= 0 or batch <= 0 or timeout_s <= 0:
            raise ValueError("retry_every_ms, drop_after_ms, batch and timeout_s must be > 0")
        self.store = store
        self.clock_ms = clock_ms
        self.retry_every_ms = retry_every_ms
        self.drop_after_ms = drop_after_ms
        self.batch = batch
        self.timeout_s = timeout_s
        self._own_client = client is None
        self.client = client if client is not None else httpx.Client()
        self._wake = threading.Event()

    def close(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._own_client:
            self.client.close()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _secret(self, callback_id: str) -> str | None:
        record = self.store.get_record("callback", callback_id)
        if record is None:
            return None
        secret = record.body.get("secret")
        return secret if isinstance(secret, str) and secret else None

    def _post(self, delivery: Delivery, secret: str, now_ms: int) -> str:
        """Post one delivery; ``""`` when it was received, else why not (no secret in it)."""
        headers = {
            **delivery.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            DELIVERY_HEADER: str(delivery.id),
            SIGNATURE_HEADER: sign(secret, delivery.body, now_ms),
        }
        try:
            response = self.client.post(
                delivery.target,
                content=delivery.body,
                headers=headers,
                timeout=self.timeout_s,
                follow_redirects=False,
            )
        except httpx.TimeoutException:
            return f"no answer within {self.timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        if response.status_code == 200:
            return ""
        return f"HTTP {response.status_code}"

    def deliver_due(self) -> DeliveryReport:
        """Post every delivery due now (at most ``batch``); what became of them."""
        now = self.clock_ms()
        delivered = retried = dropped = 0
        failed_targets: dict[str, str] = {}
        for delivery in self.store.due_deliveries(now, self.batch):
            expires = delivery.created_ms + self.drop_after_ms
            if now >= expires:
                self.store.record_attempt(
                    delivery.id,
                    now_ms=now,
                    state=DeliveryState.DROPPED,
                    error=f"not received within {self.drop_after_ms // 3_600_000} h"
                    f" ({delivery.last_error or 'never tried'})",
                )
                dropped += 1
                continue
            secret = self._secret(delivery.callback_id)
            if secret is None:
                self.store.record_attempt(
                    delivery.id,
                    now_ms=now,
                    state=DeliveryState.DROPPED,
                    error="the callback was deleted",
                )
                dropped += 1
                continue
            host = urlsplit(delivery.target).netloc
            error = failed_targets.get(host)
            if error is None:
                error = self._post(delivery, secret, now)
                if error and not error.startswith("HTTP"):
                    failed_targets[host] = error  # unreachable: spare its other deliveries
            else:
                error = f"not tried: {host} failed moments ago ({error})"
            if not error:
                self.store.record_attempt(delivery.id, now_ms=now, state=DeliveryState.DELIVERED)
                delivered += 1
                continue
            retry_at = now + self.retry_every_ms
            if retry_at >= expires:
                self.store.record_attempt(
                    delivery.id, now_ms=now, state=DeliveryState.DROPPED, error=error
                )
                dropped += 1
            else:
                self.store.record_attempt(
                    delivery.id,
                    now_ms=now,
                    state=DeliveryState.PENDING,
                    next_attempt_ms=retry_at,
                    error=error,
                )
                retried += 1
        return DeliveryReport(delivered, retried, dropped)

    def wake(self) -> None:
        """A notification was queued: let :meth:`run` deliver now rather than at its round."""
        self._wake.set()

    def run(self, stop_event: threading.Event, interval_s: float = 1.0) -> None:
        """Deliver what is due every ``interval_s``, and at once after :meth:`wake`, until
        ``stop_event`` is set (call :meth:`wake` after setting it, to stop at once).

        A failure of the store is logged and tried again at the next round.
        """
        while not stop_event.is_set():
            self._wake.clear()
            try:
                report = self.deliver_due()
            except GatewayError as exc:
                log.warning("webhook delivery round failed: %s", exc)
            else:
                if report.delivered or report.retried or report.dropped:
                    log.debug("webhooks: %s", report)
            self._wake.wait(interval_s)
