"""Remote commands: the signed command the gateway sends and the status messages the box answers.

The wire formats are described in ``firmware_sim/downlink.cddl`` (RFC 8610) and explained in
``docs/downlink.md``. A command travels on :func:`down_topic`, a status message on
:func:`cmd_topic`; both are CBOR maps with small integer keys.

A command is signed with HMAC-SHA256 under the vehicle's own 32-byte key
(:func:`vehicle_key`) over the canonical encoding of the map without its signature (key 9),
and must itself be in canonical form, so every command has exactly one encoding.

:func:`decode_command` and :func:`decode_status` refuse anything the contract does not allow
with :class:`DownlinkError`; :class:`CommandVerifier` adds what the box must check before it
acts (signature, VIN, validity, replay, order, queue room) and refuses with :class:`Refusal`.
Every refusal has one of these ``reason``\\ s (:data:`REFUSAL_CAUSES` maps each to the
reference's ``failureCause``):

``not_cbor``        not one well-formed CBOR item (also: duplicate map keys, invalid UTF-8,
                    bytes after the item, nesting too deep)
``malformed``       not a command: not a map, unknown or missing keys, a field of the wrong
                    type or out of range, a CBOR tag, not in canonical form, too large
``unsigned``        no signature (key 9)
``bad_signature``   the signature does not match the vehicle's key
``wrong_vin``       signed for this vehicle's key but addressed to another VIN
``expired``         the box's clock is past the command's expiry (beyond the skew allowance)
``not_yet_valid``   the box's clock is before the command's issue time (beyond the allowance)
``replayed``        the command's nonce was seen before
``stale_order``     the command's order is not above the last accepted one
``unknown_action``  an action this protocol does not define
``bad_params``      parameters the action does not take, or out of range
``queue_full``      the box already holds as many unfinished commands as it can
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import io
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import cbor2

from firmware_sim.errors import ConfigError, TcuError
from firmware_sim.nonces import NonceCache

__all__ = [
    "CLOCK_SKEW_MS",
    "CMD_FILTER",
    "FORMAT_VERSION",
    "KEY_BYTES",
    "MAX_COMMAND_BYTES",
    "MAX_DETAIL_CHARS",
    "MAX_VALIDITY_MS",
    "NONCE_MARGIN_MS",
    "REFUSAL_CAUSES",
    "REFUSAL_REASONS",
    "Action",
    "Command",
    "CommandVerifier",
    "DownlinkError",
    "FailureCause",
    "Refusal",
    "RemoteStatus",
    "StatusMessage",
    "cmd_topic",
    "decode_command",
    "decode_status",
    "down_topic",
    "encode_status",
    "new_command",
    "refusal_reason",
    "sign_command",
    "vehicle_key",
    "vin_of_topic",
]

FORMAT_VERSION = 1
KEY_BYTES = 32
"""The length of a vehicle key."""
MAX_COMMAND_BYTES = 4096
"""The largest command (and status message) a decoder reads."""
MAX_DETAIL_CHARS = 200
"""The longest ``detail`` of a status message."""
MAX_VALIDITY_MS = 7 * 24 * 3600 * 1000
"""The longest a command may stay valid: from ``issued_at_ms`` to ``expires_at_ms``."""
CLOCK_SKEW_MS = 30_000
"""How far the box's clock may disagree with the gateway's before a command is out of time."""
NONCE_MARGIN_MS = 60_000
"""How much longer than its command's validity (and the skew allowance) a nonce is kept."""
CMD_FILTER = "tcusim/v1/+/cmd"
"""The subscription of the gateway to every box's status messages."""

_UINT64_MAX = 2**64 - 1
_VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_ID_BYTES = 16
_NONCE_BYTES = 16
_SIG_BYTES = 32
_COMMAND_KEYS = frozenset(range(10))
_STATUS_REQUIRED = (0, 1, 2, 3, 5, 6)
_STATUS_KEYS = frozenset((*_STATUS_REQUIRED, 4))
_MAX_DEPTH = 8  # command > params > programs > program > value: 5 levels are needed
_KEY_LABEL = b"tcusim/vehicle-key/"
_TOPIC = re.compile(r"tcusim/v1/([A-HJ-NPR-Z0-9]{17})/(down|cmd)")


def down_topic(vin: str) -> str:
    """The topic of the commands for ``vin`` (gateway to box)."""
    return f"tcusim/v1/{vin}/down"


def cmd_topic(vin: str) -> str:
    """The topic of the status messages of ``vin`` (box to gateway)."""
    return f"tcusim/v1/{vin}/cmd"


def vin_of_topic(topic: str) -> str | None:
    """The VIN of a :func:`down_topic` or :func:`cmd_topic`; ``None`` for any other topic."""
    m = _TOPIC.fullmatch(topic)
    return m.group(1) if m else None


class Action(enum.StrEnum):
    """What a command asks of the vehicle."""

    HORN = "horn"
    LIGHTS = "lights"
    LOCK = "lock"
    UNLOCK = "unlock"
    PRECOND = "precond"
    CHARGE = "charge"
    WAKEUP = "wakeup"
    IMMOBILIZE = "immobilize"
    STOLEN = "stolen"


class RemoteStatus(enum.StrEnum):
    """The state of a command, as the reference's remote events name it."""

    ACCEPTED = "Accepted"
    WAKING_UP_VEHICLE = "WakingUpVehicle"
    SENT_TO_VEHICLE = "SentToVehicle"
    SUCCESS = "Success"
    ALREADY_DONE = "AlreadyDone"
    FAILED = "Failed"

    @property
    def done(self) -> bool:
        """Whether this is a final status (the event type ``Done``, else ``Pending``)."""
        return self in (RemoteStatus.SUCCESS, RemoteStatus.ALREADY_DONE, RemoteStatus.FAILED)


class FailureCause(enum.StrEnum):
    """Why a command failed: the reference's ``failureCause`` values."""

    GENERAL_ERROR = "GeneralError"
    VEHICLE_ERROR = "VehicleError"
    WRONG_COMMAND = "WrongCommand"
    VEHICLE_CONNECTION_TIMEOUT = "VehicleConnectionTimeout"
    MISSING_RIGHTS = "MissingRights"
    NOT_POSSIBLE_DUE_TO_VEHICLE_BATTERY_LEVEL = "NotPossibleDueToVehicleBatteryLevel"
    NOT_POSSIBLE_DUE_TO_VEHICLE_PRIVACY_LEVEL = "NotPossibleDueToVehiclePrivacyLevel"
    TOO_MANY_WAKE_UPS_OVER_MONTH = "TooManyWakeUpsOverMonth"
    TOO_MANY_REQUEST_IN_SHORT_TIME = "TooManyRequestInShortTime"
    SAME_ACTION_IN_PROGRESS = "SameActionInProgress"
    NOT_POSSIBLE_DUE_TO_VEHICLE_STOLEN_STATE = "NotPossibleDueToVehicleStolenState"
    VEHICLE_IN_USE = "VehicleInUse"
    TOO_MANY_REQUEST_SENT = "TooManyRequestSent"
    DOORS_OPEN = "DoorsOpen"
    VEHICLE_ERROR_OR_CID_INSIDE = "VehicleErrorOrCidInside"
    CID_INSIDE = "CidInside"
    EXTERNAL_CHARGING_SYSTEM_ERROR = "ExternalChargingSystemError"
    VEHICLE_CHARGING_SYSTEM_ERROR = "VehicleChargingSystemError"
    VEHICLE_IS_NOT_LOCKED = "VehicleIsNotLocked"
    CANCELED_BY_DRIVER = "CanceledByDriver"


REFUSAL_CAUSES: Mapping[str, FailureCause] = {
    # The command cannot be read or is not one the vehicle can carry out.
    "not_cbor": FailureCause.WRONG_COMMAND,
    "malformed": FailureCause.WRONG_COMMAND,
    "unknown_action": FailureCause.WRONG_COMMAND,
    "bad_params": FailureCause.WRONG_COMMAND,
    "wrong_vin": FailureCause.WRONG_COMMAND,
    # The sender did not prove the right to command this vehicle.
    "unsigned": FailureCause.MISSING_RIGHTS,
    "bad_signature": FailureCause.MISSING_RIGHTS,
    # An authentic command that is no longer (or not yet) one to carry out.
    "replayed": FailureCause.WRONG_COMMAND,
    "stale_order": FailureCause.WRONG_COMMAND,
    "expired": FailureCause.VEHICLE_CONNECTION_TIMEOUT,
    "not_yet_valid": FailureCause.GENERAL_ERROR,
    # Too many commands waiting at once.
    "queue_full": FailureCause.TOO_MANY_REQUEST_IN_SHORT_TIME,
}
"""The ``failureCause`` a box reports (status ``Failed``) for each refusal reason."""

REFUSAL_REASONS = frozenset(REFUSAL_CAUSES)
"""Every reason a command can be refused for."""


class DownlinkError(TcuError, ValueError):
    """A command or status message that cannot be decoded, encoded or signed.

    ``reason`` is one of :data:`REFUSAL_REASONS` (``bad_key`` for a key or master secret of
    the wrong size); ``detail`` says what was wrong.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Refusal(DownlinkError):
    """A command the box will not carry out (:meth:`CommandVerifier.verify`).

    ``command_id`` is the command's id when it could be read that far, else ``b""``.
    """

    def __init__(
        self, reason: str, failure_cause: FailureCause, detail: str, command_id: bytes
    ) -> None:
        super().__init__(reason, detail)
        self.failure_cause = failure_cause
        self.command_id = command_id

    def status(self, vin: str, at_ms: int) -> StatusMessage:
        """The ``Failed`` status message that reports this refusal.

        Its ``detail`` is the reason code, then ``": "`` and the explanation, cut to
        :data:`MAX_DETAIL_CHARS` (:func:`refusal_reason` reads the code back).
        """
        detail = f"{self.reason}: {self.detail}" if self.detail else self.reason
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        return StatusMessage(
            command_id=self.command_id,
            vin=vin,
            status=RemoteStatus.FAILED,
            failure_cause=self.failure_cause,
            at_ms=at_ms,
            detail=detail,
        )


def refusal_reason(detail: str) -> str | None:
    """The refusal reason a status message's ``detail`` starts with; ``None`` if it has none."""
    code = detail.split(":", 1)[0]
    return code if code in REFUSAL_CAUSES else None


@dataclass(frozen=True, slots=True)
class Command:
    """One remote command, as the gateway issues it (the signature is not part of it).

    ``params`` are the action's parameters (docs/downlink.md); treat them as read-only.
    """

    command_id: bytes
    vin: str
    action: Action
    params: Mapping[str, Any]
    issued_at_ms: int
    expires_at_ms: int
    nonce: bytes
    order: int

    @property
    def id(self) -> bytes:
        """The command id (the same as ``command_id``)."""
        return self.command_id


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """One step of a command's life, reported by the box.

    ``failure_cause`` is given with ``Failed`` and only then; ``command_id`` is ``b""`` for a
    refused command whose id could not be read.
    """

    command_id: bytes
    vin: str
    status: RemoteStatus
    failure_cause: FailureCause | None
    at_ms: int
    detail: str = ""


def new_command(
    vin: str,
    action: Action | str,
    params: Mapping[str, Any],
    *,
    issued_at_ms: int,
    order: int,
    validity_ms: int = 10 * 60 * 1000,
) -> Command:
    """A command with a fresh random id (UUID 4) and nonce, valid ``validity_ms`` from issue."""
    return Command(
        command_id=uuid.uuid4().bytes,
        vin=vin,
        action=Action(action),
        params=params,
        issued_at_ms=issued_at_ms,
        expires_at_ms=issued_at_ms + validity_ms,
        nonce=secrets.token_bytes(_NONCE_BYTES),
        order=order,
    )


# ---------------------------------------------------------------------------------------------
# Keys and signing


def vehicle_key(master_secret: bytes, vin: str) -> bytes:
    """The 32-byte key of ``vin``: HMAC-SHA256(master_secret, b"tcusim/vehicle-key/" + vin).

    :class:`DownlinkError` (``bad_key``) for a master secret shorter than 16 bytes,
    (``malformed``) for a VIN that is not 17 characters of the VIN alphabet.
    """
    if not isinstance(master_secret, bytes | bytearray) or len(master_secret) < 16:
        raise DownlinkError("bad_key", "the master secret must be at least 16 bytes")
    if type(vin) is not str or _VIN.fullmatch(vin) is None:
        raise DownlinkError("malformed", f"vin {_show(vin)} is not a VIN")
    label = _KEY_LABEL + vin.encode("ascii")
    return hmac.new(bytes(master_secret), label, hashlib.sha256).digest()


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise DownlinkError("bad_key", f"a vehicle key is {KEY_BYTES} bytes")
    return bytes(key)


def _mac(key: bytes, signed_part: bytes) -> bytes:
    return hmac.new(key, signed_part, hashlib.sha256).digest()


def sign_command(cmd: Command, key: bytes) -> bytes:
    """The signed CBOR of ``cmd`` for the box.

    Raises :class:`DownlinkError` with the reason the box would refuse ``cmd`` for
    (``malformed``, ``unknown_action``, ``bad_params``), or ``bad_key``.
    """
    key = _check_key(key)
    action = cmd.action.value if isinstance(cmd.action, Action) else cmd.action
    params = dict(cmd.params) if isinstance(cmd.params, Mapping) else cmd.params
    doc: dict[int, Any] = {
        0: FORMAT_VERSION,
        1: cmd.command_id,
        2: cmd.vin,
        3: action,
        4: params,
        5: cmd.issued_at_ms,
        6: cmd.expires_at_ms,
        7: cmd.nonce,
        8: cmd.order,
    }
    try:
        signed_part: bytes = cbor2.dumps(doc, canonical=True)
        doc[9] = _mac(key, signed_part)
        raw: bytes = cbor2.dumps(doc, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise DownlinkError("malformed", f"cannot encode the command: {exc}") from None
    decode_command(raw)  # the box's checks, so nothing is signed that it would refuse
    return raw


# ---------------------------------------------------------------------------------------------
# Decoding


def _fail(reason: str, detail: str) -> NoReturn:
    raise DownlinkError(reason, detail)


def _show(value: object) -> str:
    """``repr(value)``, short enough for a status message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _ForbiddenTag(Exception):
    def __init__(self, tag: int) -> None:
        super().__init__(tag)
        self.tag = tag


def _reject_tag(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
    raise _ForbiddenTag(tag.tag)


def _forbid(tag: int) -> Callable[[Any, bool], NoReturn]:
    def reject(value: Any, immutable: bool) -> NoReturn:
        raise _ForbiddenTag(tag)

    return reject


# The tags cbor2 6 decodes itself; no tag is allowed on this wire.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
_SEMANTIC_DECODERS: Mapping[int, Any] = {
    tag: _forbid(tag) for tag in (*_BUILTIN_TAGS, 1004, 43000, 55799)
}


def _read_map(raw: object, what: str) -> dict[Any, Any]:
    """The one CBOR map in ``raw``: ``not_cbor`` or ``malformed`` if it is not that."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        _fail("not_cbor", f"expected bytes, got {type(raw).__name__}")
    data = bytes(raw)
    if len(data) > MAX_COMMAND_BYTES:
        _fail("malformed", f"{len(data)} bytes, more than {MAX_COMMAND_BYTES}")
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        fp,
        tag_hook=_reject_tag,
        semantic_decoders=_SEMANTIC_DECODERS,
        max_depth=_MAX_DEPTH,
        allow_duplicate_keys=False,
    )
    try:
        doc = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        if isinstance(exc.__cause__, _ForbiddenTag):
            _fail("malformed", f"CBOR tag {exc.__cause__.tag} is not allowed")
        _fail("not_cbor", str(exc)[:100])
    if fp.tell() != len(data):
        _fail("not_cbor", f"{len(data) - fp.tell()} bytes after the {what}")
    if type(doc) is not dict:
        _fail("malformed", f"the {what} is a {type(doc).__name__}, not a map")
    return doc


def _peek_id(doc: Mapping[Any, Any]) -> bytes:
    """The command id of a map if key 1 holds one, else ``b""``."""
    value = doc.get(1)
    return value if type(value) is bytes and len(value) == _ID_BYTES else b""


def _envelope(doc: dict[Any, Any], raw: bytes) -> tuple[bytes, bytes]:
    """``(signature, signed part)`` of a command map, after the checks of its structure."""
    for key in doc:
        if type(key) is not int or key not in _COMMAND_KEYS:
            _fail("malformed", f"unknown key {_show(key)}")
    if 9 not in doc:
        _fail("unsigned", "no signature (key 9)")
    for key in range(9):
        if key not in doc:
            _fail("malformed", f"missing key {key}")
    signature = doc[9]
    if type(signature) is not bytes or len(signature) != _SIG_BYTES:
        _fail("malformed", f"the signature (key 9) must be {_SIG_BYTES} bytes")
    try:
        canonical = cbor2.dumps(doc, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError):  # pragma: no cover - decoded values
        canonical = b""
    if canonical != bytes(raw):
        _fail("malformed", "not in canonical CBOR form")
    unsigned = {k: v for k, v in doc.items() if k != 9}
    return signature, cbor2.dumps(unsigned, canonical=True)


def _uint(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:
        _fail("malformed", f"{name} must be an unsigned integer, got {_show(value)}")
    return value


def _bstr(value: object, name: str, size: int) -> bytes:
    if type(value) is not bytes or len(value) != size:
        _fail("malformed", f"{name} must be {size} bytes, got {_show(value)}")
    return value


def _vin(value: object) -> str:
    if type(value) is not str or _VIN.fullmatch(value) is None:
        _fail("malformed", f"vin {_show(value)} is not 17 characters of the VIN alphabet")
    return value


def _fields(doc: Mapping[Any, Any]) -> Command:
    """The command in a map whose structure :func:`_envelope` checked."""
    version = doc[0]
    if type(version) is not int or version != FORMAT_VERSION:
        _fail("malformed", f"format version {_show(version)}, expected {FORMAT_VERSION}")
    command_id = _bstr(doc[1], "the command id (key 1)", _ID_BYTES)
    vin = _vin(doc[2])
    issued = _uint(doc[5], "issued_at_ms (key 5)")
    expires = _uint(doc[6], "expires_at_ms (key 6)")
    if not issued < expires <= issued + MAX_VALIDITY_MS:
        _fail("malformed", "expires_at_ms must be after issued_at_ms, by at most 7 days")
    nonce = _bstr(doc[7], "the nonce (key 7)", _NONCE_BYTES)
    order = _uint(doc[8], "order (key 8)")
    name = doc[3]
    if type(name) is not str:
        _fail("malformed", f"the action (key 3) must be text, got {_show(name)}")
    try:
        action = Action(name)
    except ValueError:
        _fail("unknown_action", f"{_show(name)}")
    params = doc[4]
    if type(params) is not dict:
        _fail("bad_params", f"the parameters (key 4) must be a map, got {_show(params)}")
    _check_params(action, params)
    return Command(command_id, vin, action, params, issued, expires, nonce, order)


def _keys(params: Mapping[Any, Any], where: str, required: tuple[str, ...], *optional: str) -> None:
    for key in params:
        if key not in required and key not in optional:
            _fail("bad_params", f"{where}: unknown parameter {_show(key)}")
    for key in required:
        if key not in params:
            _fail("bad_params", f"{where}: missing parameter {key!r}")


def _int_in(params: Mapping[str, Any], key: str, low: int, high: int, where: str) -> None:
    value = params[key]
    if type(value) is not int or not low <= value <= high:
        _fail("bad_params", f"{where}: {key} must be an integer in {low}..{high}")


def _bool(params: Mapping[str, Any], key: str, where: str) -> None:
    if type(params[key]) is not bool:
        _fail("bad_params", f"{where}: {key} must be true or false")


def _check_program(program: object, where: str) -> int:
    if type(program) is not dict:
        _fail("bad_params", f"{where}: a program must be a map")
    _keys(program, where, ("slot", "enabled", "days", "start_min"))
    _int_in(program, "slot", 1, 4, where)
    _bool(program, "enabled", where)
    _int_in(program, "days", 0, 127, where)
    _int_in(program, "start_min", 0, 1439, where)
    slot: int = program["slot"]
    return slot


def _check_params(action: Action, params: dict[Any, Any]) -> None:
    """Refuse (``bad_params``) anything but the parameters ``action`` takes."""
    where = action.value
    if action is Action.HORN:
        _keys(params, where, ("beeps",))
        _int_in(params, "beeps", 1, 10, where)
    elif action is Action.LIGHTS:
        _keys(params, where, ("duration_s",))
        _int_in(params, "duration_s", 1, 60, where)
    elif action in (Action.LOCK, Action.UNLOCK, Action.WAKEUP):
        _keys(params, where, ())
    elif action is Action.PRECOND:
        _keys(params, where, (), "immediate", "programs")
        if not params:
            _fail("bad_params", "precond: give immediate, programs or both")
        if "immediate" in params:
            _bool(params, "immediate", where)
        if "programs" in params:
            programs = params["programs"]
            if type(programs) is not list or not 1 <= len(programs) <= 4:
                _fail("bad_params", "precond: programs must be a list of 1 to 4 programs")
            slots = [_check_program(p, f"precond program {i}") for i, p in enumerate(programs)]
            if len(set(slots)) != len(slots):
                _fail("bad_params", "precond: a slot appears twice")
    elif action is Action.CHARGE:
        _keys(params, where, (), "immediate", "delayed_to_min", "preferences")
        if not params:
            _fail("bad_params", "charge: give immediate, delayed_to_min or preferences")
        if "immediate" in params and "delayed_to_min" in params:
            _fail("bad_params", "charge: immediate and delayed_to_min exclude each other")
        if "immediate" in params:
            _bool(params, "immediate", where)
        if "delayed_to_min" in params:
            _int_in(params, "delayed_to_min", 0, 1439, where)
        if "preferences" in params:
            prefs = params["preferences"]
            if type(prefs) is not dict:
                _fail("bad_params", "charge: preferences must be a map")
            _keys(prefs, "charge preferences", ("level", "type"))
            _int_in(prefs, "level", 1, 5, "charge preferences")
            if type(prefs["type"]) is not str or prefs["type"] not in ("Partial", "Full"):
                _fail("bad_params", "charge preferences: type must be Partial or Full")
    elif action is Action.IMMOBILIZE:
        _keys(params, where, ("activate",))
        _bool(params, "activate", where)
    else:  # Action.STOLEN
        _keys(params, where, ("stolen",))
        _bool(params, "stolen", where)


def decode_command(raw: bytes | bytearray | memoryview) -> tuple[Command, bytes, bytes]:
    """``(command, signature, signed part)`` of a signed command; else :class:`DownlinkError`.

    The signature is not checked here (:class:`CommandVerifier` does); the signed part is
    the canonical CBOR of the map without key 9, the bytes the signature covers.
    """
    doc = _read_map(raw, "command")
    signature, signed_part = _envelope(doc, bytes(raw))
    return _fields(doc), signature, signed_part


# ---------------------------------------------------------------------------------------------
# Status messages


def _status_doc(msg: StatusMessage) -> dict[int, Any]:
    """The map of ``msg`` after every check of :func:`decode_status` (``malformed``)."""
    command_id = msg.command_id
    if not isinstance(command_id, bytes | bytearray) or len(command_id) not in (0, _ID_BYTES):
        _fail("malformed", f"the command id must be {_ID_BYTES} bytes (or empty)")
    vin = _vin(msg.vin)
    try:
        status = RemoteStatus(msg.status)
    except ValueError:
        _fail("malformed", f"unknown status {_show(msg.status)}")
    if not command_id and status is not RemoteStatus.FAILED:
        _fail("malformed", "only a Failed status may lack the command id")
    doc: dict[int, Any] = {0: FORMAT_VERSION, 1: bytes(command_id), 2: vin, 3: status.value}
    if status is RemoteStatus.FAILED:
        if msg.failure_cause is None:
            _fail("malformed", "a Failed status needs its failure cause")
        try:
            doc[4] = FailureCause(msg.failure_cause).value
        except ValueError:
            _fail("malformed", f"unknown failure cause {_show(msg.failure_cause)}")
    elif msg.failure_cause is not None:
        _fail("malformed", "a failure cause goes only with Failed")
    doc[5] = _uint(msg.at_ms, "at_ms (key 5)")
    if type(msg.detail) is not str or len(msg.detail) > MAX_DETAIL_CHARS:
        _fail("malformed", f"detail must be text of at most {MAX_DETAIL_CHARS} characters")
    doc[6] = msg.detail
    return doc


def encode_status(msg: StatusMessage) -> bytes:
    """The CBOR of a status message; :class:`DownlinkError` (``malformed``) if it is invalid."""
    data: bytes = cbor2.dumps(_status_doc(msg), canonical=True)
    return data


def decode_status(raw: bytes | bytearray | memoryview) -> StatusMessage:
    """The status message in ``raw``; else :class:`DownlinkError` (``not_cbor``, ``malformed``)."""
    doc = _read_map(raw, "status message")
    for key in doc:
        if type(key) is not int or key not in _STATUS_KEYS:
            _fail("malformed", f"unknown key {_show(key)}")
    for key in _STATUS_REQUIRED:
        if key not in doc:
            _fail("malformed", f"missing key {key}")
    version = doc[0]
    if type(version) is not int or version != FORMAT_VERSION:
        _fail("malformed", f"format version {_show(version)}, expected {FORMAT_VERSION}")
    command_id = doc[1]
    if type(command_id) is not bytes:
        _fail("malformed", "the command id (key 1) must be bytes")
    status, cause, detail = doc[3], doc.get(4), doc[6]
    for value, name in ((status, "status (key 3)"), (detail, "detail (key 6)")):
        if type(value) is not str:
            _fail("malformed", f"{name} must be text")
    if cause is not None and type(cause) is not str:
        _fail("malformed", "the failure cause (key 4) must be text")
    try:
        status_value = RemoteStatus(status)
    except ValueError:
        _fail("malformed", f"unknown status {_show(status)}")
    try:
        cause_value = None if cause is None else FailureCause(cause)
    except ValueError:
        _fail("malformed", f"unknown failure cause {_show(cause)}")
    msg = StatusMessage(command_id, doc[2], status_value, cause_value, doc[5], detail)
    _status_doc(msg)  # the rules that tie the fields together
    return msg


# ---------------------------------------------------------------------------------------------
# The box's checks


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class CommandVerifier:
    """What the box checks of each command before it acts on it.

    ``nonces`` remembers the nonces seen and the last accepted order across reboots. A
    command is accepted when, in this order: it is a well-formed signed map; its signature
    matches ``key``; every field and parameter is valid; it is addressed to ``vin``; its
    nonce is new; the box's clock is in ``[issued_at_ms - skew_ms, expires_at_ms + skew_ms)``;
    its order is above the last accepted one; and fewer than ``max_queue`` accepted commands
    are unfinished (:meth:`release` finishes one). Only an authentic command (past the
    signature check) is remembered: its nonce whatever the verdict, its order when accepted.
    Thread-safe.
    """

    def __init__(
        self,
        vin: str,
        key: bytes,
        nonces: NonceCache,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        max_queue: int = 8,
        skew_ms: int = CLOCK_SKEW_MS,
    ) -> None:
        if type(vin) is not str or _VIN.fullmatch(vin) is None:
            raise ConfigError(f"vin {vin!r} is not 17 characters of the VIN alphabet")
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise ConfigError(f"the vehicle key must be {KEY_BYTES} bytes")
        if max_queue < 1:
            raise ConfigError("max_queue must be at least 1")
        if skew_ms < 0:
            raise ConfigError("skew_ms must not be negative")
        self.vin = vin
        self._key = bytes(key)
        self.nonces = nonces
        self.clock_ms = clock_ms
        self.max_queue = max_queue
        self.skew_ms = skew_ms
        self._queue: dict[bytes, None] = {}
        self._lock = threading.Lock()

    @property
    def queued(self) -> tuple[bytes, ...]:
        """The ids of the accepted commands not yet released, oldest first."""
        with self._lock:
            return tuple(self._queue)

    def release(self, command_id: bytes) -> bool:
        """Mark an accepted command finished; ``False`` if it was not queued."""
        with self._lock:
            if bytes(command_id) not in self._queue:
                return False
            del self._queue[bytes(command_id)]
            return True

    def verify(self, raw: bytes | bytearray | memoryview) -> Command:
        """The command in ``raw``, accepted and queued; else :class:`Refusal`.

        A failure of the nonce store raises :class:`~firmware_sim.errors.StoreError`.
        """
        with self._lock:
            return self._refusing(raw, self._admit)

    def precheck(self, raw: bytes | bytearray | memoryview) -> Command:
        """The command in ``raw`` if it may be worth waking for; else :class:`Refusal`.

        What a sleeping box checks before it spends one of the month's wake-ups: a
        well-formed signed map, its signature, its fields, its VIN, a nonce not seen before,
        an expiry not yet past and an order above the last accepted one (refusals that the
        wake-up cannot change). It remembers nothing: :meth:`verify` decides, awake.
        """

        def worth_waking(cmd: Command) -> Command:
            verdict = self._judge(cmd, self.clock_ms(), awake=False)
            if verdict is not None:
                _fail(*verdict)
            return cmd

        with self._lock:
            return self._refusing(raw, worth_waking)

    def _judge(self, cmd: Command, now: int, *, awake: bool) -> tuple[str, str] | None:
        """Why an authentic command is refused at ``now`` (``None``: it is not). A command for
        another vehicle or seen before raises at once; the other reasons are returned, for
        :meth:`_admit` to remember the nonce first. Asleep (``awake=False``) only those a
        wake-up cannot change count: not ``not_yet_valid`` nor ``queue_full``."""
        if cmd.vin != self.vin:
            _fail("wrong_vin", f"addressed to {cmd.vin}, this is {self.vin}")
        if self.nonces.seen(cmd.nonce):
            _fail("replayed", "this command's nonce was seen before")
        last = self.nonces.last_order
        if now >= cmd.expires_at_ms + self.skew_ms:
            return "expired", f"expired {now - cmd.expires_at_ms} ms ago"
        if awake and now < cmd.issued_at_ms - self.skew_ms:
            return "not_yet_valid", f"issued {cmd.issued_at_ms - now} ms ahead of this clock"
        if last is not None and cmd.order <= last:  # orders only grow
            return "stale_order", f"order {cmd.order} is not above {last}"
        if awake and len(self._queue) >= self.max_queue:
            return "queue_full", f"{len(self._queue)} commands are unfinished"
        return None

    def _refusing(
        self, raw: bytes | bytearray | memoryview, then: Callable[[Command], Command]
    ) -> Command:
        """``then`` of the authentic command in ``raw``; every failure as a :class:`Refusal`."""
        command_id = b""
        try:
            doc = _read_map(raw, "command")
            command_id = _peek_id(doc)
            signature, signed_part = _envelope(doc, bytes(raw))
            if not hmac.compare_digest(_mac(self._key, signed_part), signature):
                _fail("bad_signature", "the signature does not match this vehicle's key")
            return then(_fields(doc))
        except Refusal:
            raise
        except DownlinkError as exc:
            cause = REFUSAL_CAUSES[exc.reason]
            raise Refusal(exc.reason, cause, exc.detail, command_id) from None

    def _admit(self, cmd: Command) -> Command:
        """The checks of an authentic, well-formed command (under the lock)."""
        now = self.clock_ms()
        verdict = self._judge(cmd, now, awake=True)
        keep_until = cmd.expires_at_ms + self.skew_ms + NONCE_MARGIN_MS
        order = cmd.order if verdict is None else None
        self.nonces.remember(cmd.nonce, keep_until, now_ms=now, order=order)
        if verdict is not None:
            _fail(*verdict)
        self._queue[cmd.command_id] = None
        return cmd
