"""The box's configuration: vehicle identity, services, upload policy, uplink settings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from can_dbc.catalog import Refresh
from firmware_sim.errors import ConfigError

__all__ = [
    "FIRST_MODERN_MODEL_YEAR",
    "BrokerUrl",
    "TcuConfig",
    "UplinkConfig",
    "UploadPolicy",
    "mask_password",
    "model_year_from_vin",
    "parse_broker_url",
    "validate_vin",
]

FIRST_MODERN_MODEL_YEAR = 2019
"""Cars of this model year and later refresh faster than once a minute."""

_VIN_RE = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
# The 10th VIN character encodes the model year on a 30-year cycle (ISO 3779 / 49 CFR 565).
_YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY123456789"


def validate_vin(vin: str) -> str:
    """Return ``vin`` if it is 17 characters of the VIN alphabet (no I, O, Q), else raise."""
    if not isinstance(vin, str) or not _VIN_RE.match(vin):
        raise ConfigError(f"VIN {vin!r} is not 17 characters of A-H, J-N, P, R-Z, 0-9")
    return vin


def model_year_from_vin(vin: str, *, not_after: int | None = None) -> int:
    """The model year a VIN's 10th character gives, the latest one not after ``not_after``.

    The code repeats every 30 years; ``not_after`` defaults to next year.
    """
    validate_vin(vin)
    code = vin[9]
    if code not in _YEAR_CODES:
        raise ConfigError(f"VIN {vin!r}: character 10 ({code!r}) is not a model-year code")
    latest = not_after if not_after is not None else dt.datetime.now(dt.UTC).year + 1
    year = 1980 + _YEAR_CODES.index(code)
    while year + 30 <= latest:
        year += 30
    return year


@dataclass(frozen=True)
class UploadPolicy:
    """When the box samples and uploads, by refresh class (all times in ms)."""

    sample_ms: Mapping[Refresh, int]
    upload_ms: Mapping[Refresh, int]

    @classmethod
    def for_model_year(cls, model_year: int) -> UploadPolicy:
        """Every 60 s before 2019; from 2019 on, fast data every 10 s and the rest less often."""
        sample = {Refresh.FAST: 1_000, Refresh.NORMAL: 10_000, Refresh.SLOW: 60_000}
        if model_year < FIRST_MODERN_MODEL_YEAR:
            upload = dict.fromkeys(Refresh, 60_000)
        else:
            upload = {
                Refresh.EVENT: 10_000,
                Refresh.FAST: 10_000,
                Refresh.NORMAL: 30_000,
                Refresh.SLOW: 60_000,
            }
        return cls(sample_ms=sample, upload_ms=upload)

    @property
    def tick_ms(self) -> int:
        """The period of the upload timer: the shortest upload period."""
        return min(self.upload_ms.values())


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed ``mqtt://`` or ``mqtts://`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


def mask_password(url: str) -> str:
    """``url`` with the password of its user part, if any, replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS).

    Errors name the URL with its password masked.
    """
    parts = urlsplit(url)
    url = mask_password(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {url!r}: unexpected path or query")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from exc
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerUrl(parts.hostname, port, tls, username, password)


@dataclass(frozen=True)
class UplinkConfig:
    """How the box reaches its broker."""

    broker: BrokerUrl
    client_id: str = ""
    topic_prefix: str = "tcusim/v1"
    keepalive_s: int = 30
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_inflight: int = 32

    def __post_init__(self) -> None:
        if self.keepalive_s < 5:
            raise ConfigError("keepalive_s must be at least 5")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("reconnect delays must satisfy 0 < min <= max")
        if self.max_inflight < 1:
            raise ConfigError("max_inflight must be at least 1")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("cert_file and key_file go together")


@dataclass(frozen=True)
class TcuConfig:
    """What the box knows of the car it sits in."""

    vin: str
    model_year: int
    services: tuple[str, ...] = ("connected_car",)
    queue_max_entries: int = 1_000
    queue_max_bytes: int = 16 * 1024 * 1024
    max_samples_per_payload: int = 4_000
    position_max_age_ms: int = 5_000
    flash_power_safe: bool = True  # sync every flash commit to disk (survives power loss)
    min_event_gap_ms: int = 1_000  # event uploads (but a crash) at most this often
    policy: UploadPolicy = field(init=False)

    def __post_init__(self) -> None:
        validate_vin(self.vin)
        if not 1980 <= self.model_year <= 2100:
            raise ConfigError(f"model_year {self.model_year} is out of range 1980..2100")
        if self.queue_max_entries < 1 or self.queue_max_bytes < 1024:
            raise ConfigError("the queue must hold at least one entry and 1 KiB")
        if not 1 <= self.max_samples_per_payload <= 50_000:
            raise ConfigError("max_samples_per_payload must be in 1..50000 (a payload's limit)")
        if self.min_event_gap_ms < 0:
            raise ConfigError("min_event_gap_ms must not be negative")
        object.__setattr__(self, "policy", UploadPolicy.for_model_year(self.model_year))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TcuConfig:
        """Build from a mapping (parsed YAML or CLI), refusing unknown keys.

        ``model_year`` may be left out: the VIN's 10th character gives it.
        """
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
        if "vin" not in data:
            raise ConfigError("configuration needs a 'vin'")
        values = dict(data)
        if values.get("model_year") is None:
            values["model_year"] = model_year_from_vin(str(values["vin"]))
        if "services" in values:
            services = values["services"]
            if isinstance(services, str) or not all(isinstance(s, str) for s in services):
                raise ConfigError("services must be a list of service names")
            values["services"] = tuple(services)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
