"""Replay of a recorded CAN capture onto a python-can bus, in wall-clock or simulated time.

:class:`Replayer` reads a capture (candump ``.log``, ``.asc``, ``.blf``, ``.trc``, each also
``.gz``; :mod:`can_dbc.capture`) lazily and sends each frame at its recorded offset from the
capture's first frame, divided by ``speed``. Two ways to drive it:

- :meth:`Replayer.run` follows the wall clock (a bench with a real interface): it sleeps
  until each frame is due; ``speed=None`` sends as fast as the bus takes the frames.
- :meth:`Replayer.schedule` puts the frames on a scheduler (a
  :class:`~firmware_sim.clock.SimScheduler`): a box on the same scheduler sees the capture's
  timing to the millisecond, deterministically, and an hour of capture takes seconds. One
  event is pending at a time (the next millisecond that has frames), so the heap stays small
  however large the capture.

What is sent: a frame's id, extended flag, data, DLC, remote flag and FD flags (FD,
bitrate switch, error state indicator), as a new :class:`can.Message` without the recorded
channel (a SocketCAN bus would otherwise send it to the capture's interface). Left out and
counted in :attr:`ReplayStats.skipped` by reason:

- ``error frame``: error frames are signalled by CAN controllers, not sent by software;
- ``invalid: <python-can's reason>``: a frame python-can refuses to build (a CAN FD remote
  frame, a standard id above 0x7FF, a DLC that does not fit the data).

Frames that ``ids``/``exclude`` leave out are counted in ``filtered``; they still count for
the timing, so a filtered replay keeps the capture's timing. A frame recorded earlier than
the one before it goes right after it (the capture's order is kept; ``out_of_order``
counts them). An error of the bus on send (``can.CanError``, ``OSError``) is counted in
``send_errors`` and the replay goes on. So ``frames_read = sent + filtered + skipped +
send_errors``, the frame read ahead by a running :meth:`~Replayer.schedule` aside.

With ``loop`` the capture starts again after its last frame, its offsets continuing: the
next pass begins one mean frame interval after the last frame (:data:`LOOP_GAP_S` when the
capture's frames share one timestamp; in simulated time, a millisecond at least). A capture
with no frame is not looped.

A missing, unknown or unreadable capture is a :class:`~can_dbc.errors.CaptureError` when the
:class:`Replayer` is made; a capture that turns out corrupt while read (a broken ``.gz``, a
corrupt ``.blf`` object) ends the replay with a :class:`~can_dbc.errors.CaptureError`, out of
:meth:`~Replayer.run` or out of the scheduler's run; :attr:`Replayer.stats` keeps what was
done until then. Bad arguments are :class:`~firmware_sim.errors.ConfigError`. A replayer
replays once: a second ``run``/``schedule`` is a :class:`~firmware_sim.errors.LifecycleError`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import can

from can_dbc.capture import CaptureReader, CaptureStats
from firmware_sim.clock import Scheduler
from firmware_sim.errors import ConfigError, LifecycleError

__all__ = ["LOOP_GAP_S", "MAX_CAN_ID", "FrameCallback", "ReplayStats", "Replayer"]

log = logging.getLogger(__name__)

LOOP_GAP_S = 1.0
"""Recorded seconds between two passes of a looped capture whose frames share one time."""

MAX_CAN_ID = 0x1FFF_FFFF
"""The largest (29-bit) CAN id."""

FrameCallback = Callable[[int, can.Message], None]
"""Called with the time (ms) and the message after each frame sent by a scheduled replay."""

_MIN_SLEEP_S = 0.0002  # a frame due sooner than this is sent at once


@dataclass
class ReplayStats:
    """What a replay did.

    ``frames_read`` counts every frame read from the capture (all passes), each of which was
    ``sent``, ``filtered`` out by the id filter, ``skipped`` (by reason) or failed to send
    (``send_errors``, the last error kept). ``capture`` is the first pass's read
    (:class:`~can_dbc.capture.CaptureStats`: bad lines, a BLF cut short). ``loops`` counts
    the restarts of a looped capture. ``first_timestamp`` and ``last_timestamp`` are the
    recorded times (s) of the capture's first and last frames (the last so far while the
    first pass runs); ``position_s`` is the recorded time replayed, from the first frame,
    across passes; ``max_lag_s`` the most a frame went late in a wall-clock replay.
    ``finished`` is set when the capture was replayed to its end.
    """

    frames_read: int = 0
    sent: int = 0
    filtered: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    send_errors: int = 0
    last_send_error: str = ""
    out_of_order: int = 0
    capture: CaptureStats = field(default_factory=CaptureStats)
    loops: int = 0
    first_timestamp: float | None = None
    last_timestamp: float | None = None
    position_s: float = 0.0
    max_lag_s: float = 0.0
    finished: bool = False

    @property
    def bad_lines(self) -> int:
        """Lines of the capture that were not frames (counted and skipped by the reader)."""
        return self.capture.bad_lines

    @property
    def skipped_total(self) -> int:
        """Frames skipped, all reasons together."""
        return sum(self.skipped.values())

    @property
    def duration_s(self) -> float:
        """The recorded span of the capture's first pass (0 before two frames were read)."""
        if self.first_timestamp is None or self.last_timestamp is None:
            return 0.0
        return self.last_timestamp - self.first_timestamp

    def as_dict(self) -> dict[str, Any]:
        """The counts as plain data (for a JSON summary)."""
        return {
            "frames_read": self.frames_read,
            "sent": self.sent,
            "filtered": self.filtered,
            "skipped": self.skipped_total,
            "skipped_reasons": dict(self.skipped),
            "send_errors": self.send_errors,
            "last_send_error": self.last_send_error,
            "out_of_order": self.out_of_order,
            "bad_lines": self.bad_lines,
            "bad_line_numbers": list(self.capture.bad_line_numbers),
            "unread_objects": self.capture.shortfall,
            "cut_short": self.capture.cut_short,
            "loops": self.loops,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "duration_s": round(self.duration_s, 6),
            "position_s": round(self.position_s, 6),
            "max_lag_s": round(self.max_lag_s, 6),
            "finished": self.finished,
        }


def _id_set(ids: Iterable[int] | None, name: str) -> frozenset[int] | None:
    if ids is None:
        return None
    found = frozenset(ids)
    if not found:
        raise ConfigError(f"{name} is empty: give at least one CAN id, or none at all")
    for can_id in found:
        if isinstance(can_id, bool) or not isinstance(can_id, int):
            raise ConfigError(f"{name}: {can_id!r} is not a CAN id")
        if not 0 <= can_id <= MAX_CAN_ID:
            raise ConfigError(f"{name}: {can_id:#x} is beyond the 29-bit CAN id range")
    return found


def _outgoing(msg: can.Message, timestamp: float) -> can.Message:
    """The frame to send: the recorded one without its channel; ValueError if invalid."""
    return can.Message(
        timestamp=timestamp,
        arbitration_id=msg.arbitration_id,
        is_extended_id=msg.is_extended_id,
        is_remote_frame=msg.is_remote_frame,
        is_fd=msg.is_fd,
        bitrate_switch=msg.bitrate_switch,
        error_state_indicator=msg.error_state_indicator,
        dlc=msg.dlc,
        data=msg.data,
        check=True,
    )


class Replayer:
    """One replay of a capture onto a bus (see the module's documentation).

    ``speed`` divides the recorded intervals (1.0 as recorded, 10 ten times faster; ``None``
    as fast as possible, wall clock only). ``ids`` keeps only those arbitration ids,
    ``exclude`` leaves those out (both match standard and extended ids by number). ``bus``
    may be ``None`` for a scheduled replay that only hands the frames to ``on_frame``.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        bus: can.BusABC | None,
        *,
        speed: float | None = 1.0,
        loop: bool = False,
        ids: Iterable[int] | None = None,
        exclude: Iterable[int] | None = None,
    ) -> None:
        if speed is not None and (
            isinstance(speed, bool)
            or not isinstance(speed, int | float)
            or not math.isfinite(speed)
            or speed <= 0
        ):
            raise ConfigError(f"speed must be a positive number (or None: at once), not {speed!r}")
        CaptureReader(path)  # a missing file or an unknown format fails now
        self.path = path
        self.bus = bus
        self.speed = speed
        self.loop = loop
        self.ids = _id_set(ids, "ids")
        self.exclude = _id_set(exclude, "exclude") or frozenset()
        self.stats = ReplayStats()
        self._used = False
        self._period_s: float | None = None  # recorded seconds from one pass to the next

    def __repr__(self) -> str:
        return f"Replayer({str(self.path)!r}, speed={self.speed}, loop={self.loop})"

    def recorded_start(self) -> float | None:
        """The recorded time (s) of the capture's first frame; ``None`` when it has none."""
        frames = iter(CaptureReader(self.path))
        try:
            first = next(frames, None)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        return None if first is None else float(first.timestamp)

    # -- the timeline ---------------------------------------------------------------------

    def _begin(self) -> None:
        if self._used:
            raise LifecycleError("a Replayer replays once: make a new one to replay again")
        self._used = True

    def _pass(self, number: int) -> Iterator[tuple[float, can.Message]]:
        """(recorded offset from the first frame, frame) of the frames to send in one pass."""
        reader = CaptureReader(self.path)
        if number == 0:
            self.stats.capture = reader.stats
        stats = self.stats
        ids, exclude = self.ids, self.exclude
        t0: float | None = None
        offset = 0.0
        last = 0.0
        count = 0
        for msg in reader:
            count += 1
            stats.frames_read += 1
            t = float(msg.timestamp)
            if t0 is None:
                t0 = t
                if number == 0:
                    stats.first_timestamp = t
            if number == 0:
                stats.last_timestamp = t
            if t - t0 < offset:
                stats.out_of_order += 1
            else:
                offset = t - t0
            last = offset
            can_id = msg.arbitration_id
            if (ids is not None and can_id not in ids) or can_id in exclude:
                stats.filtered += 1
                continue
            if msg.is_error_frame:
                stats.skipped["error frame"] += 1
                continue
            yield offset, msg
        if number == 0 and count:
            gap = last / (count - 1) if count > 1 and last > 0 else LOOP_GAP_S
            self._period_s = last + gap

    def _timeline(
        self, min_period_s: float = 0.0
    ) -> Generator[tuple[float, can.Message], None, None]:
        """(recorded offset across passes, frame) of every frame to send, passes included;
        a pass lasts at least ``min_period_s``."""
        number = 0
        base = 0.0
        while True:
            for offset, msg in self._pass(number):
                yield base + offset, msg
            if not self.loop or self._period_s is None:
                break
            base += max(self._period_s, min_period_s)
            number += 1
            self.stats.loops += 1
        self.stats.finished = True

    def _send(self, position_s: float, msg: can.Message, timestamp: float) -> can.Message | None:
        """Send one frame; the message sent, or ``None`` when skipped or the send failed."""
        stats = self.stats
        stats.position_s = position_s
        try:
            out = _outgoing(msg, timestamp)
        except ValueError as exc:
            stats.skipped[f"invalid: {exc}"] += 1
            return None
        if self.bus is not None:
            try:
                self.bus.send(out)
            except (can.CanError, OSError) as exc:
                stats.send_errors += 1
                stats.last_send_error = str(exc)
                if stats.send_errors == 1:
                    log.warning("replay of %s: the bus refused a frame: %s", self.path, exc)
                return None
        stats.sent += 1
        return out

    # -- wall clock -----------------------------------------------------------------------

    def run(
        self,
        stop_event: threading.Event | None = None,
        *,
        progress: Callable[[ReplayStats], None] | None = None,
        progress_every_s: float = 5.0,
    ) -> ReplayStats:
        """Replay in wall-clock time until the capture ends or ``stop_event`` is set.

        ``progress`` is called with the stats every ``progress_every_s`` seconds.
        """
        if self.bus is None:
            raise ConfigError("a wall-clock replay needs a bus to send on")
        self._begin()
        stop = stop_event if stop_event is not None else threading.Event()
        speed = self.speed
        stats = self.stats
        start = time.monotonic()
        next_progress = start + progress_every_s

        def tick(now: float) -> float:
            """Report progress when due; the time of the next report."""
            nonlocal next_progress
            if progress is not None and now >= next_progress:
                progress(stats)
                next_progress = now + progress_every_s
            return next_progress if progress is not None else math.inf

        with contextlib.closing(self._timeline()) as timeline:
            for position, msg in timeline:
                if stop.is_set():
                    break
                if speed is not None:
                    due = start + position / speed
                    now = time.monotonic()
                    # Sleep until due, waking for the progress reports of a long gap.
                    while due - now > _MIN_SLEEP_S:
                        if stop.wait(min(due, tick(now)) - now):
                            return stats
                        now = time.monotonic()
                    stats.max_lag_s = max(stats.max_lag_s, now - due)
                self._send(position, msg, time.time())
                tick(time.monotonic())
        return stats

    # -- simulated time -------------------------------------------------------------------

    def schedule(
        self,
        scheduler: Scheduler,
        start_ms: int | None = None,
        on_frame: FrameCallback | None = None,
    ) -> None:
        """Put the replay on ``scheduler``: each frame at ``start_ms`` (default: now) plus its
        recorded offset divided by the speed, rounded to the millisecond.

        Frames due in the same millisecond go in one event, in the capture's order, and each
        sent frame is handed to ``on_frame(ms, message)``; the next event is scheduled when
        one has run. :attr:`stats` ``.finished`` tells when the capture is done.
        """
        if self.speed is None:
            raise ConfigError("a scheduled replay needs a speed: simulated time is fast already")
        self._begin()
        scale = 1000.0 / self.speed
        base = scheduler.now_ms if start_ms is None else start_ms
        # Each pass takes a millisecond at least, or a loop at a high speed would never let
        # the simulated time move on.
        timeline = self._timeline(min_period_s=self.speed / 1000)
        send = self._send

        def due_ms(position: float) -> int:
            return base + round(position * scale)

        pending = next(timeline, None)

        def fire(now_ms: int) -> None:
            nonlocal pending
            while pending is not None:
                position, msg = pending
                if due_ms(position) > now_ms:
                    scheduler.call_at(due_ms(position), fire)
                    return
                sent = send(position, msg, now_ms / 1000)
                if sent is not None and on_frame is not None:
                    on_frame(now_ms, sent)
                pending = next(timeline, None)

        if pending is not None:
            scheduler.call_at(due_ms(pending[0]), fire)
