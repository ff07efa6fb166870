"""The box's remote command side: verifier, executor and power manager wired to the box's I/O.

:class:`CommandLink` takes the commands the uplink received (``{prefix}/{vin}/down``),
checks them (:class:`~firmware_sim.downlink.CommandVerifier`, with a durable
:class:`~firmware_sim.nonces.NonceCache`), runs them (:class:`~firmware_sim.commands.
CommandExecutor`) and decides when the box sleeps (:class:`~firmware_sim.power.PowerManager`).
It carries out their outputs through the box: request frames go on the CAN bus, status
messages go up on ``{prefix}/{vin}/cmd``, timers go to the box's scheduler, state goes to the
flash. Like :class:`~firmware_sim.box.Tcu` it owns no clock, so it runs unchanged in simulated
time and on a bench.

A command that arrives while the box sleeps, and passes the checks that need no wake-up
(``CommandVerifier.precheck``: signature, VIN, nonce, expiry, order; else it is refused), is
its shoulder tap: the modem stays registered and keeps the broker session, the application
sleeps. The command waits until the box is awake (``wake_delay_ms`` later, one of the
month's wake-ups) and is checked then; with the month's wake-ups spent it is refused
(``TooManyWakeUpsOverMonth``) and dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import can
from cantools.database.errors import Error as CantoolsError

from can_dbc.catalog import Catalog
from can_dbc.network import COMMAND_FEEDBACK, COMMAND_REQUEST
from firmware_sim import commands, power
from firmware_sim.clock import Scheduler
from firmware_sim.commands import CommandExecutor, CommandStateError, ExecutorState
from firmware_sim.downlink import (
    CLOCK_SKEW_MS,
    CommandVerifier,
    DownlinkError,
    Refusal,
    StatusMessage,
    decode_command,
    encode_status,
)
from firmware_sim.errors import ConfigError, StoreError
from firmware_sim.nonces import NonceCache
from firmware_sim.power import PowerManager, PowerState

if TYPE_CHECKING:
    from cantools.database.can import Database, Message

    from firmware_sim.flash import FlashStore

__all__ = ["CommandLink", "CommandSettings", "LinkStats"]

log = logging.getLogger(__name__)

EXECUTOR_BLOB = "commands"
POWER_BLOB = "power"


@dataclass(frozen=True)
class CommandSettings:
    """The timings and limits of remote commands in the box (ms unless named otherwise)."""

    feedback_timeout_ms: int = 5_000
    completion_timeout_ms: int = 90_000
    wake_timeout_ms: int = 30_000
    max_queue: int = 8
    stay_awake_ms: int = 180_000
    wake_delay_ms: int = 10_000
    monthly_wakeups: int = 20
    clock_skew_ms: int = CLOCK_SKEW_MS

    def __post_init__(self) -> None:
        for name in ("feedback_timeout_ms", "completion_timeout_ms", "wake_timeout_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("stay_awake_ms", "wake_delay_ms", "monthly_wakeups", "clock_skew_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.max_queue < 1:
            raise ConfigError("max_queue must be at least 1")


@dataclass
class LinkStats:
    """What the command side did, for summaries."""

    received: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # by refusal reason
    submitted: int = 0
    statuses: int = 0
    frames_sent: int = 0
    feedback_frames: int = 0
    bad_feedback: int = 0
    held_asleep: int = 0  # commands that came while the box slept (taps)
    store_errors: int = 0


class CommandLink:
    """Remote commands for one box: see the module docstring."""

    def __init__(
        self,
        vin: str,
        key: bytes,
        *,
        catalog: Catalog,
        database: Database,
        scheduler: Scheduler,
        flash: FlashStore,
        nonce_path: str | Path,
        send_frame: Callable[[can.Message], None],
        publish_status: Callable[[bytes], None],
        ack_command: Callable[[int], None],
        request_upload: Callable[[], None],
        on_sleep: Callable[[int], None],
        on_wake: Callable[[int, str], None],
        live: Callable[[], Mapping[int, float | int]],
        settings: CommandSettings | None = None,
        power_safe: bool = True,
    ) -> None:
        self.vin = vin
        self.settings = s = settings or CommandSettings()
        self.scheduler = scheduler
        self.flash = flash
        self.stats = LinkStats()
        self._send_frame = send_frame
        self._publish_status = publish_status
        self._ack_command = ack_command
        self._request_upload = request_upload
        self._on_sleep = on_sleep
        self._on_wake = on_wake
        self._live = live
        try:
            self._feedback: Message = database.get_message_by_name(COMMAND_FEEDBACK)
            self._request = database.get_message_by_name(COMMAND_REQUEST)
        except KeyError as exc:
            raise ConfigError(
                f"remote commands need {COMMAND_REQUEST} and {COMMAND_FEEDBACK} in the network:"
                f" {exc}"
            ) from None
        self.feedback_id: int = self._feedback.frame_id
        self.feedback_extended: bool = bool(self._feedback.is_extended_frame)
        self.nonces = NonceCache(nonce_path, power_safe=power_safe)
        self.verifier = CommandVerifier(
            vin,
            key,
            self.nonces,
            clock_ms=lambda: scheduler.now_ms,
            max_queue=s.max_queue,
            skew_ms=s.clock_skew_ms,
        )
        self.executor = CommandExecutor(
            vin,
            catalog,
            state=self._load_state(),
            feedback_timeout_ms=s.feedback_timeout_ms,
            completion_timeout_ms=s.completion_timeout_ms,
            wake_timeout_ms=s.wake_timeout_ms,
            max_queue=s.max_queue,
        )
        self.power = PowerManager(
            vin,
            stay_awake_ms=s.stay_awake_ms,
            wake_delay_ms=s.wake_delay_ms,
            monthly_wakeups=s.monthly_wakeups,
            budget=self._load_budget(),
        )
        self._names = {sig.id: sig.name for sig in catalog.signals}
        self._ignition_id = catalog.by_name(commands.IGNITION).id
        self._held: list[tuple[int, bytes]] = []  # (ticket, command) that came while asleep
        self._closed = False

    # -- durable state ----------------------------------------------------------------------

    def _load_state(self) -> ExecutorState | None:
        blob = self.flash.get_blob(EXECUTOR_BLOB)
        if blob is None:
            return None
        try:
            return ExecutorState.from_bytes(blob)
        except CommandStateError as exc:
            log.warning("box %s: command state unreadable, starting afresh: %s", self.vin, exc)
            return None

    def _load_budget(self) -> tuple[str, int] | None:
        blob = self.flash.get_blob(POWER_BLOB)
        if blob is None:
            return None
        try:
            doc = json.loads(blob)
            month, used = doc["month"], doc["used"]
            if type(month) is not str or type(used) is not int or used < 0:
                raise ValueError(f"bad wake-up budget {doc!r}")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("box %s: wake-up budget unreadable, starting afresh: %s", self.vin, exc)
            return None
        return month, used

    def _persist(self, key: str, value: bytes) -> None:
        try:
            self.flash.put_blob(key, value)
        except StoreError as exc:
            self.stats.store_errors += 1
            log.error("box %s: could not keep the %s state: %s", self.vin, key, exc)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        """Boot: awake; with the ignition off the box sleeps ``stay_awake_ms`` from now."""
        self._run(self.executor.start(now_ms))
        self._run_power(self.power.start(now_ms, ignition_on=self._ignition_on()))

    def close(self) -> None:
        """Close the nonce cache; idempotent."""
        if not self._closed:
            self._closed = True
            self.nonces.close()

    @property
    def asleep(self) -> bool:
        """Whether the box sleeps (or is waking from a tap)."""
        return self.power.state is not PowerState.AWAKE

    # -- inputs -----------------------------------------------------------------------------

    def on_commands(self, items: list[tuple[int, bytes]], now_ms: int) -> None:
        """Take the ``(ticket, command)`` items the uplink received; each is acknowledged once
        taken (checked, or refused), so that one lost to a power cut comes again."""
        for ticket, raw in items:
            self.stats.received += 1
            self._run_power(self.power.on_activity(now_ms))
            if self.asleep:
                # Garbage, a forgery or a replay must not spend the month's wake-ups.
                if not self._worth_waking(ticket, raw, now_ms):
                    continue
                self.stats.held_asleep += 1
                self._held.append((ticket, raw))
                self._run_power(self.power.shoulder_tap(now_ms, _peek_id(raw)))
                continue
            self._take(ticket, raw, now_ms)

    def _worth_waking(self, ticket: int, raw: bytes, now_ms: int) -> bool:
        """Whether a command that came while asleep passes :meth:`CommandVerifier.precheck`
        (else it is refused, and taken, at once)."""
        try:
            self.verifier.precheck(raw)
        except Refusal as refusal:
            self._refuse(ticket, refusal, now_ms)
            return False
        except StoreError as exc:  # the nonces cannot be read: let the awake box decide
            log.warning("box %s: command not prechecked, nonce store failed: %s", self.vin, exc)
        return True

    def _refuse(self, ticket: int, refusal: Refusal, now_ms: int) -> None:
        self.stats.refused[refusal.reason] = self.stats.refused.get(refusal.reason, 0) + 1
        log.info("box %s: command refused (%s): %s", self.vin, refusal.reason, refusal.detail)
        # A refused command was never queued: its id (read before any check, so anybody's)
        # must not release the queued command that carries it.
        self._status(refusal.status(self.vin, now_ms), release=False)
        self._ack_command(ticket)

    def _take(self, ticket: int, raw: bytes, now_ms: int) -> None:
        try:
            command = self.verifier.verify(raw)
        except Refusal as refusal:
            self._refuse(ticket, refusal, now_ms)
            return
        except StoreError as exc:  # the nonce store failed: left for the broker to resend
            self.stats.store_errors += 1
            log.error("box %s: command not checked, nonce store failed: %s", self.vin, exc)
            return
        self._ack_command(ticket)  # its nonce is remembered: a redelivery is a replay
        self.stats.submitted += 1
        self._sync(now_ms)
        self._run(self.executor.submit(command, now_ms))

    def on_feedback_frame(self, msg: can.Message, now_ms: int) -> None:
        """Take one ``BSI_CmdFeedback`` frame from the bus."""
        self.stats.feedback_frames += 1
        try:
            decoded = self._feedback.decode(bytes(msg.data), decode_choices=False, scaling=False)
            if not isinstance(decoded, Mapping):
                raise TypeError("the feedback frame is a container")
            counter, action, result = (
                _raw(decoded[name]) for name in ("FbCounter", "FbAction", "FbResult")
            )
        except (CantoolsError, ValueError, KeyError, TypeError, IndexError) as exc:
            self.stats.bad_feedback += 1
            log.debug("box %s: undecodable command feedback: %s", self.vin, exc)
            return
        if not self.executor.busy and counter == 0:
            return  # the idle frame: nothing asked, nothing to learn
        self._sync(now_ms)
        self._run(self.executor.on_feedback(counter, action, result, now_ms))

    def on_car_wake(self, reason: str, now_ms: int) -> None:
        """The car woke the box (it started charging by itself): awake at once, off budget."""
        self._run_power(self.power.alarm(now_ms, reason))

    def check_ignition(self, now_ms: int) -> None:
        """Read the ignition line (the power manager acts on a change only)."""
        self._run_power(self.power.on_ignition(self._ignition_on(), now_ms))

    def _ignition_on(self) -> bool:
        return self._live().get(self._ignition_id) in commands.IGNITION_ON

    def _sync(self, now_ms: int) -> None:
        """Give the executor the live values; wake the box first if a program is due (the
        executor starts due programs at any input, not only at its timer)."""
        due = self.executor.next_program_ms
        if due is not None and due <= now_ms and self.asleep:
            self._run_power(self.power.alarm(now_ms))
        names = self._names
        values = {names[sid]: v for sid, v in self._live().items() if sid in names}
        self._run(self.executor.on_signals(values, now_ms))

    # -- outputs ----------------------------------------------------------------------------

    def _status(self, message: StatusMessage, release: bool = True) -> None:
        try:
            payload = encode_status(message)
        except DownlinkError as exc:  # a bug, not an input: say so loudly, keep running
            log.error("box %s: status message not encodable: %s", self.vin, exc)
            return
        self.stats.statuses += 1
        self._publish_status(payload)
        self._run_power(self.power.on_activity(self.scheduler.now_ms))
        if release and message.status.done and message.command_id:
            self.verifier.release(message.command_id)

    def _run(self, outputs: list[commands.Output]) -> None:
        for out in outputs:
            if isinstance(out, commands.SendFrame):
                self._send(out)
            elif isinstance(out, commands.ReportStatus):
                self._status(out.message)
            elif isinstance(out, commands.ArmTimer):
                self.scheduler.call_at(out.at_ms, self._executor_timer)
            elif isinstance(out, commands.RequestUpload):
                self._request_upload()
            elif isinstance(out, commands.PersistState):
                self._persist(EXECUTOR_BLOB, out.state.to_bytes())

    def _send(self, out: commands.SendFrame) -> None:
        message = self._request
        data = message.encode(dict(out.signals), scaling=False, padding=True, strict=True)
        frame = can.Message(
            arbitration_id=message.frame_id,
            is_extended_id=message.is_extended_frame,
            data=data,
            dlc=len(data),
        )
        self.stats.frames_sent += 1
        self._send_frame(frame)

    def _executor_timer(self, now_ms: int) -> None:
        if self._closed:
            return
        self._sync(now_ms)  # wakes the box first when a program is due
        self._run(self.executor.on_timer(now_ms))

    def _power_timer(self, now_ms: int) -> None:
        if not self._closed:
            self._run_power(self.power.on_timer(now_ms))

    def _run_power(self, outputs: list[power.PowerOutput]) -> None:
        for out in outputs:
            now = self.scheduler.now_ms
            if isinstance(out, power.Sleep):
                self.executor.on_sleep(now)
                self._on_sleep(now)
            elif isinstance(out, power.Wake):
                # The held commands first, in their order: whatever the box does as it wakes
                # (uploads, newer commands) comes after them.
                held, self._held = self._held, []
                for ticket, raw in held:
                    self._take(ticket, raw, now)
                self._on_wake(now, out.reason)
            elif isinstance(out, commands.ArmTimer):
                self.scheduler.call_at(out.at_ms, self._power_timer)
            elif isinstance(out, power.PersistBudget):
                doc = {"month": out.month, "used": out.used}
                self._persist(POWER_BLOB, json.dumps(doc, sort_keys=True).encode())
            elif isinstance(out, commands.ReportStatus):
                refused = [h for h in self._held if _peek_id(h[1]) == out.message.command_id]
                self._held = [h for h in self._held if h not in refused]
                self._status(out.message)
                for ticket, _raw in refused:
                    self._ack_command(ticket)


def _raw(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"a raw feedback value must be an integer, not {value!r}")
    return value


def _peek_id(raw: bytes) -> bytes:
    """The command id of ``raw`` if it can be read (unverified: only to name a refusal)."""
    try:
        command, _signature, _signed = decode_command(raw)
    except DownlinkError:
        return b""
    return command.command_id
