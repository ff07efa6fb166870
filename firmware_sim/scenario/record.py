"""What a scenario run leaves behind: the data its report and summary are made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ExpectationResult",
    "RemoteRecord",
    "RemoteStatusRecord",
    "RunRecord",
    "TimelineEntry",
    "UploadRecord",
]


@dataclass(frozen=True)
class UploadRecord:
    """One upload the box queued."""

    t_ms: int  # simulated (or wall) time it was queued
    seq: int
    trigger: str  # payload.Trigger name, lower case
    size: int  # bytes of the CBOR payload
    samples: int


@dataclass(frozen=True)
class TimelineEntry:
    """A scenario action, a fault, or a command, at a time."""

    t_ms: int
    kind: str  # "action" | "fault" | "command"
    text: str


@dataclass(frozen=True)
class RemoteStatusRecord:
    """One status message the box sent about a remote command."""

    t_ms: int  # the box's time in the message (simulated)
    status: str  # RemoteStatus value
    cause: str | None = None  # FailureCause value, with Failed only
    detail: str = ""


@dataclass
class RemoteRecord:
    """A remote command the scenario sent, and every status the box answered."""

    id: str
    action: str
    params: dict[str, Any]
    sent_ms: int  # simulated time it was signed and published
    command_id: str  # hex
    order: int
    statuses: list[RemoteStatusRecord] = field(default_factory=list)

    @property
    def outcome(self) -> RemoteStatusRecord | None:
        """The final status (Success, AlreadyDone or Failed); ``None`` while there is none."""
        final = ("Success", "AlreadyDone", "Failed")
        return next((s for s in reversed(self.statuses) if s.status in final), None)


@dataclass(frozen=True)
class ExpectationResult:
    """The outcome of one expectation."""

    name: str
    passed: bool
    detail: str
    line: int | None = None  # where the scenario file states it


@dataclass
class RunRecord:
    """Everything a run produced, in time order; times in ms since the Unix epoch."""

    name: str
    vin: str
    seed: int
    start_ms: int
    end_ms: int
    wall_s: float = 0.0
    route: list[tuple[int, float, float]] = field(default_factory=list)  # (t, lat, lon)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # name -> (t, v)
    uploads: list[UploadRecord] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    queue_depth: list[tuple[int, int]] = field(default_factory=list)  # (t, uploads waiting)
    expectations: list[ExpectationResult] = field(default_factory=list)
    counters: dict[str, int | float] = field(default_factory=dict)
    payload_digest: str = ""  # SHA-256 of every payload queued, in order: equal runs, equal digest
    remotes: list[RemoteRecord] = field(default_factory=list)  # in the order they were sent

    @property
    def passed(self) -> bool:
        """Whether every expectation held."""
        return all(e.passed for e in self.expectations)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole record."""
        data = asdict(self)
        data["passed"] = self.passed
        return data
