"""Remote commands: signing, the CDDL contract, the box's checks and every refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import cbor2
import pycddl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from firmware_sim.downlink import (
    CLOCK_SKEW_MS,
    CMD_FILTER,
    MAX_COMMAND_BYTES,
    MAX_DETAIL_CHARS,
    MAX_VALIDITY_MS,
    NONCE_MARGIN_MS,
    REFUSAL_CAUSES,
    REFUSAL_REASONS,
    Action,
    Command,
    CommandVerifier,
    DownlinkError,
    FailureCause,
    Refusal,
    RemoteStatus,
    StatusMessage,
    cmd_topic,
    decode_command,
    decode_status,
    down_topic,
    encode_status,
    new_command,
    refusal_reason,
    sign_command,
    vehicle_key,
    vin_of_topic,
)
from firmware_sim.errors import ConfigError, LifecycleError, StoreError, TcuError
from firmware_sim.nonces import NonceCache

VIN = "VR3UHZKXZHT123456"
OTHER_VIN = "VF1RFB00X12345678"
SECRET = bytes(range(32))
KEY = vehicle_key(SECRET, VIN)
T0 = 1_795_334_400_000  # the gateway's (and the box's) clock at issue

# ---------------------------------------------------------------------------------------------
# The contract, as a check

CDDL = resources.files("firmware_sim").joinpath("downlink.cddl").read_text(encoding="utf-8")
# pycddl 0.6 lets a value of the wrong major type pass a choice of map types, and checks the
# maps inside an array loosely: so each alternative of ``command`` and ``status`` is a schema
# of its own, and each preconditioning program is also checked on its own.
COMMAND_RULES = [f"{action}-command" for action in Action]
STATUS_RULES = ["pending-status", "done-status", "failed-status"]
SCHEMAS = {rule: pycddl.Schema(f"tcusim-{rule} = {rule}\n" + CDDL) for rule in COMMAND_RULES}
SCHEMAS |= {rule: pycddl.Schema(f"tcusim-{rule} = {rule}\n" + CDDL) for rule in STATUS_RULES}
PROGRAM_SCHEMA = pycddl.Schema("tcusim-program = program\n" + CDDL)
WHOLE_SCHEMAS = [pycddl.Schema(CDDL), pycddl.Schema("tcusim-status = status\n" + CDDL)]


def _valid(schema: Any, data: bytes) -> bool:
    try:
        schema.validate_cbor(data)
    except pycddl.ValidationError:
        return False
    return True


def command_conforms(data: bytes) -> bool:
    """Whether ``data`` satisfies the ``command`` rule of downlink.cddl."""
    if not any(_valid(SCHEMAS[rule], data) for rule in COMMAND_RULES):
        return False
    params = cbor2.loads(data)[4]
    return all(_valid(PROGRAM_SCHEMA, cbor2.dumps(p)) for p in params.get("programs", []))


def status_conforms(data: bytes) -> bool:
    """Whether ``data`` satisfies the ``status`` rule of downlink.cddl."""
    return any(_valid(SCHEMAS[rule], data) for rule in STATUS_RULES)


# ---------------------------------------------------------------------------------------------
# Strategies and helpers

vins = st.from_regex(r"[A-HJ-NPR-Z0-9]{17}", fullmatch=True)
uint64 = st.integers(0, 2**64 - 1)
programs = st.lists(
    st.fixed_dictionaries(
        {
            "slot": st.integers(1, 4),
            "enabled": st.booleans(),
            "days": st.integers(0, 127),
            "start_min": st.integers(0, 1439),
        }
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda p: p["slot"],
)
preferences = st.fixed_dictionaries(
    {"level": st.integers(1, 5), "type": st.sampled_from(["Partial", "Full"])}
)
precond_params = st.fixed_dictionaries(
    {}, optional={"immediate": st.booleans(), "programs": programs}
).filter(bool)
charge_params = st.one_of(
    st.fixed_dictionaries({"immediate": st.booleans()}, optional={"preferences": preferences}),
    st.fixed_dictionaries(
        {"delayed_to_min": st.integers(0, 1439)}, optional={"preferences": preferences}
    ),
    st.fixed_dictionaries({"preferences": preferences}),
)
PARAMS: dict[Action, st.SearchStrategy[dict[str, Any]]] = {
    Action.HORN: st.fixed_dictionaries({"beeps": st.integers(1, 10)}),
    Action.LIGHTS: st.fixed_dictionaries({"duration_s": st.integers(1, 60)}),
    Action.LOCK: st.just({}),
    Action.UNLOCK: st.just({}),
    Action.PRECOND: precond_params,
    Action.CHARGE: charge_params,
    Action.WAKEUP: st.just({}),
    Action.IMMOBILIZE: st.fixed_dictionaries({"activate": st.booleans()}),
    Action.STOLEN: st.fixed_dictionaries({"stolen": st.booleans()}),
}


@st.composite
def commands(draw: st.DrawFn, vin: st.SearchStrategy[str] = vins) -> Command:
    action = draw(st.sampled_from(Action))
    issued = draw(st.integers(0, 2**64 - 2))
    expires = draw(st.integers(issued + 1, min(issued + MAX_VALIDITY_MS, 2**64 - 1)))
    return Command(
        command_id=draw(st.binary(min_size=16, max_size=16)),
        vin=draw(vin),
        action=action,
        params=draw(PARAMS[action]),
        issued_at_ms=issued,
        expires_at_ms=expires,
        nonce=draw(st.binary(min_size=16, max_size=16)),
        order=draw(uint64),
    )


@st.composite
def statuses(draw: st.DrawFn) -> StatusMessage:
    status = draw(st.sampled_from(RemoteStatus))
    failed = status is RemoteStatus.FAILED
    sizes = [0, 16] if failed else [16]
    size = draw(st.sampled_from(sizes))
    return StatusMessage(
        command_id=draw(st.binary(min_size=size, max_size=size)),
        vin=draw(vins),
        status=status,
        failure_cause=draw(st.sampled_from(FailureCause)) if failed else None,
        at_ms=draw(uint64),
        detail=draw(st.text(max_size=MAX_DETAIL_CHARS)),
    )


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-2, 10) | st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=20,
)


def command(**changes: Any) -> Command:
    """A valid command for ``VIN`` issued at ``T0``, with fields replaced."""
    base = Command(
        command_id=bytes(range(16)),
        vin=VIN,
        action=Action.HORN,
        params={"beeps": 2},
        issued_at_ms=T0,
        expires_at_ms=T0 + 600_000,
        nonce=bytes(range(100, 116)),
        order=7,
    )
    return dataclasses.replace(base, **changes)


def doc_of(raw: bytes) -> dict[Any, Any]:
    doc: dict[Any, Any] = cbor2.loads(raw)
    return doc


DELETE = object()


def signed_doc(changes: dict[Any, Any], key: bytes = KEY) -> bytes:
    """The example command's map with keys replaced (or removed), signed again canonically."""
    doc = doc_of(sign_command(command(), KEY))
    del doc[9]
    for k, value in changes.items():
        if value is not DELETE:
            doc[k] = value
        elif k in doc:
            del doc[k]
    if changes.get(9) is not DELETE:
        doc[9] = hmac.new(key, cbor2.dumps(doc, canonical=True), hashlib.sha256).digest()
    data: bytes = cbor2.dumps(doc, canonical=True)
    return data


class Clock:
    """A simulated clock in ms."""

    def __init__(self, now_ms: int = T0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> Iterator[CommandVerifier]:
    with NonceCache(":memory:") as nonces:
        yield CommandVerifier(VIN, KEY, nonces, clock_ms=clock)


def refusal_of(v: CommandVerifier, raw: bytes) -> Refusal:
    with pytest.raises(Refusal) as info:
        v.verify(raw)
    return info.value


def decode_reason(raw: bytes) -> str:
    with pytest.raises(DownlinkError) as info:
        decode_command(raw)
    return info.value.reason


# ---------------------------------------------------------------------------------------------
# Round trips and the contract


@given(commands())
def test_signed_commands_round_trip_and_conform(cmd: Command) -> None:
    raw = sign_command(cmd, KEY)
    decoded, signature, signed_part = decode_command(raw)
    assert decoded == cmd
    assert command_conforms(raw)
    assert len(raw) <= MAX_COMMAND_BYTES
    assert signature == hmac.new(KEY, signed_part, hashlib.sha256).digest()
    assert signed_part == cbor2.dumps({k: v for k, v in doc_of(raw).items() if k != 9})
    assert sign_command(decoded, KEY) == raw  # one encoding per command


@given(statuses())
def test_status_messages_round_trip_and_conform(msg: StatusMessage) -> None:
    raw = encode_status(msg)
    assert decode_status(raw) == msg
    assert status_conforms(raw)


def test_the_example_on_the_wire() -> None:
    raw = sign_command(command(), KEY)
    assert doc_of(raw) == {
        0: 1,
        1: bytes(range(16)),
        2: VIN,
        3: "horn",
        4: {"beeps": 2},
        5: T0,
        6: T0 + 600_000,
        7: bytes(range(100, 116)),
        8: 7,
        9: hmac.new(KEY, decode_command(raw)[2], hashlib.sha256).digest(),
    }
    assert raw == cbor2.dumps(doc_of(raw), canonical=True)


def test_status_example_on_the_wire() -> None:
    msg = StatusMessage(bytes(16), VIN, RemoteStatus.FAILED, FailureCause.DOORS_OPEN, 5, "")
    assert doc_of(encode_status(msg)) == {
        0: 1,
        1: bytes(16),
        2: VIN,
        3: "Failed",
        4: "DoorsOpen",
        5: 5,
        6: "",
    }


def test_new_command_makes_fresh_ids_and_nonces() -> None:
    a = new_command(VIN, "precond", {"immediate": True}, issued_at_ms=T0, order=1)
    b = new_command(VIN, Action.PRECOND, {"immediate": True}, issued_at_ms=T0, order=2)
    assert a.action is Action.PRECOND
    assert a.command_id != b.command_id and a.nonce != b.nonce
    assert a.command_id[6] >> 4 == 4  # UUID version 4
    assert a.expires_at_ms - a.issued_at_ms == 600_000
    assert a.id == a.command_id
    assert decode_command(sign_command(a, KEY))[0] == a


def test_vehicle_keys() -> None:
    assert hmac.new(SECRET, b"tcusim/vehicle-key/" + VIN.encode(), "sha256").digest() == KEY
    assert len(KEY) == 32
    assert vehicle_key(SECRET, OTHER_VIN) != KEY
    assert vehicle_key(bytes(reversed(SECRET)), VIN) != KEY
    for secret, vin, reason in [
        (b"short", VIN, "bad_key"),
        ("text" * 8, VIN, "bad_key"),
        (SECRET, "VR3UHZKXZHT12345", "malformed"),
        (SECRET, VIN.lower(), "malformed"),
    ]:
        with pytest.raises(DownlinkError) as info:
            vehicle_key(secret, vin)  # type: ignore[arg-type]
        assert info.value.reason == reason


def test_topics() -> None:
    assert down_topic(VIN) == f"tcusim/v1/{VIN}/down"
    assert cmd_topic(VIN) == f"tcusim/v1/{VIN}/cmd"
    assert topic_matches_sub(CMD_FILTER, cmd_topic(VIN))
    assert not topic_matches_sub(CMD_FILTER, down_topic(VIN))
    assert vin_of_topic(cmd_topic(VIN)) == VIN
    assert vin_of_topic(down_topic(OTHER_VIN)) == OTHER_VIN
    assert vin_of_topic(f"tcusim/v1/{VIN}/up") is None
    assert vin_of_topic("tcusim/v1/short/cmd") is None


def test_the_enums_follow_the_reference() -> None:
    assert len(FailureCause) == 20
    assert {"CanceledByDriver", "VehicleIsNotLocked", "TooManyRequestSent"} <= set(FailureCause)
    assert [s.value for s in RemoteStatus if not s.done] == [
        "Accepted",
        "WakingUpVehicle",
        "SentToVehicle",
    ]
    assert [s.value for s in RemoteStatus if s.done] == ["Success", "AlreadyDone", "Failed"]
    assert len(Action) == 9
    assert set(REFUSAL_CAUSES) == REFUSAL_REASONS
    assert len(REFUSAL_REASONS) == 12


# ---------------------------------------------------------------------------------------------
# decode_command: one refusal at a time

PROGRAM = {"slot": 1, "enabled": True, "days": 31, "start_min": 420}
RAW = sign_command(command(), KEY)

DECODE_REFUSALS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not_cbor"),
    ("truncated", RAW[:-1], "not_cbor"),
    ("trailing byte", RAW + b"\x00", "not_cbor"),
    ("duplicate key", b"\xa2\x00\x01\x00\x01", "not_cbor"),
    ("too deep", b"\x81" * 20 + b"\x00", "not_cbor"),
    ("array", cbor2.dumps([1, 2]), "malformed"),
    ("over the size", b"\x00" * (MAX_COMMAND_BYTES + 1), "malformed"),
    ("tagged", b"\xd9\xd9\xf7" + RAW, "malformed"),
    ("tag inside", signed_doc({5: cbor2.CBORTag(1, T0)}), "malformed"),
    ("not canonical", RAW[:-34] + b"\x59\x00\x20" + RAW[-32:], "malformed"),
    ("keys out of order", cbor2.dumps(dict(reversed(doc_of(RAW).items()))), "malformed"),
    ("unknown key", signed_doc({10: 1}), "malformed"),
    ("text key", signed_doc({"vin": VIN}), "malformed"),
    ("no signature", cbor2.dumps({k: v for k, v in doc_of(RAW).items() if k != 9}), "unsigned"),
    ("signature short", RAW[:-34] + b"\x58\x1f" + RAW[-31:], "malformed"),
    ("missing id", signed_doc({1: DELETE}), "malformed"),
    ("missing params", signed_doc({4: DELETE}), "malformed"),
    ("version 2", signed_doc({0: 2}), "malformed"),
    ("version true", signed_doc({0: True}), "malformed"),
    ("id of 15 bytes", signed_doc({1: bytes(15)}), "malformed"),
    ("id as text", signed_doc({1: "0" * 16}), "malformed"),
    ("short vin", signed_doc({2: VIN[:16]}), "malformed"),
    ("vin with I", signed_doc({2: VIN[:16] + "I"}), "malformed"),
    ("negative issue", signed_doc({5: -1}), "malformed"),
    ("issue as float", signed_doc({5: float(T0)}), "malformed"),
    ("expires at issue", signed_doc({6: T0}), "malformed"),
    ("expires before issue", signed_doc({6: T0 - 1}), "malformed"),
    ("valid over 7 days", signed_doc({6: T0 + MAX_VALIDITY_MS + 1}), "malformed"),
    ("nonce of 17 bytes", signed_doc({7: bytes(17)}), "malformed"),
    ("order true", signed_doc({8: True}), "malformed"),
    ("order negative", signed_doc({8: -7}), "malformed"),
    ("action as int", signed_doc({3: 2}), "malformed"),
    ("unknown action", signed_doc({3: "navigate"}), "unknown_action"),
    ("action in capitals", signed_doc({3: "HORN"}), "unknown_action"),
    ("params not a map", signed_doc({4: [2]}), "bad_params"),
    ("horn without beeps", signed_doc({4: {}}), "bad_params"),
    ("horn 11 beeps", signed_doc({4: {"beeps": 11}}), "bad_params"),
    ("horn 0 beeps", signed_doc({4: {"beeps": 0}}), "bad_params"),
    ("horn beeps true", signed_doc({4: {"beeps": True}}), "bad_params"),
    ("horn extra", signed_doc({4: {"beeps": 2, "loud": True}}), "bad_params"),
    ("int param key", signed_doc({4: {1: 2}}), "bad_params"),
    ("lights 61 s", signed_doc({3: "lights", 4: {"duration_s": 61}}), "bad_params"),
    ("lights 1.5 s", signed_doc({3: "lights", 4: {"duration_s": 1.5}}), "bad_params"),
    ("lock with params", signed_doc({3: "lock", 4: {"forced": True}}), "bad_params"),
    ("unlock with params", signed_doc({3: "unlock", 4: {"x": 1}}), "bad_params"),
    ("wakeup with params", signed_doc({3: "wakeup", 4: {"action": "WakeUp"}}), "bad_params"),
    ("precond empty", signed_doc({3: "precond", 4: {}}), "bad_params"),
    ("precond immediate 1", signed_doc({3: "precond", 4: {"immediate": 1}}), "bad_params"),
    ("precond no programs", signed_doc({3: "precond", 4: {"programs": []}}), "bad_params"),
    (
        "precond 5 programs",
        signed_doc({3: "precond", 4: {"programs": [PROGRAM] * 5}}),
        "bad_params",
    ),
    (
        "precond slot twice",
        signed_doc({3: "precond", 4: {"programs": [PROGRAM, {**PROGRAM, "days": 1}]}}),
        "bad_params",
    ),
    (
        "precond slot 5",
        signed_doc({3: "precond", 4: {"programs": [{**PROGRAM, "slot": 5}]}}),
        "bad_params",
    ),
    (
        "precond days 128",
        signed_doc({3: "precond", 4: {"programs": [{**PROGRAM, "days": 128}]}}),
        "bad_params",
    ),
    (
        "precond start 1440",
        signed_doc({3: "precond", 4: {"programs": [{**PROGRAM, "start_min": 1440}]}}),
        "bad_params",
    ),
    (
        "precond program extra key",
        signed_doc({3: "precond", 4: {"programs": [{**PROGRAM, "temp": 21}]}}),
        "bad_params",
    ),
    (
        "precond program missing key",
        signed_doc({3: "precond", 4: {"programs": [{"slot": 1, "enabled": True, "days": 1}]}}),
        "bad_params",
    ),
    ("precond program list", signed_doc({3: "precond", 4: {"programs": [[1]]}}), "bad_params"),
    ("charge empty", signed_doc({3: "charge", 4: {}}), "bad_params"),
    (
        "charge now and later",
        signed_doc({3: "charge", 4: {"immediate": True, "delayed_to_min": 5}}),
        "bad_params",
    ),
    ("charge at 24:00", signed_doc({3: "charge", 4: {"delayed_to_min": 1440}}), "bad_params"),
    ("charge immediate text", signed_doc({3: "charge", 4: {"immediate": "yes"}}), "bad_params"),
    (
        "charge level 6",
        signed_doc({3: "charge", 4: {"preferences": {"level": 6, "type": "Full"}}}),
        "bad_params",
    ),
    (
        "charge type Empty",
        signed_doc({3: "charge", 4: {"preferences": {"level": 1, "type": "Empty"}}}),
        "bad_params",
    ),
    (
        "charge preferences half",
        signed_doc({3: "charge", 4: {"preferences": {"level": 1}}}),
        "bad_params",
    ),
    ("charge preferences list", signed_doc({3: "charge", 4: {"preferences": [1]}}), "bad_params"),
    ("immobilize empty", signed_doc({3: "immobilize", 4: {}}), "bad_params"),
    ("immobilize 1", signed_doc({3: "immobilize", 4: {"activate": 1}}), "bad_params"),
    ("stolen null", signed_doc({3: "stolen", 4: {"stolen": None}}), "bad_params"),
    ("stolen wrong key", signed_doc({3: "stolen", 4: {"activate": True}}), "bad_params"),
]


@pytest.mark.parametrize(
    ("raw", "reason"), [r[1:] for r in DECODE_REFUSALS], ids=[r[0] for r in DECODE_REFUSALS]
)
def test_decode_refusal(raw: bytes, reason: str) -> None:
    assert decode_reason(raw) == reason


# What the grammar states, pycddl detects too: the contract is not vacuous. (Canonical form,
# sizes, tags, time order and distinct slots are rules CDDL cannot state; "charge now and
# later" the grammar refuses, but pycddl 0.6 lets a map through a choice of maps when every
# alternative fails only on an unexpected key.)
CONTRACT_REFUSES = [
    "array", "unknown key", "text key", "no signature", "signature short", "missing id",
    "missing params", "version 2", "version true", "id of 15 bytes", "id as text", "short vin",
    "vin with I", "negative issue", "issue as float", "nonce of 17 bytes", "order true",
    "order negative", "action as int", "unknown action", "params not a map",
    "horn without beeps", "horn 11 beeps", "horn beeps true", "horn extra", "lights 61 s",
    "lock with params", "precond empty", "precond no programs", "precond 5 programs",
    "precond slot 5", "precond days 128", "precond program extra key", "charge empty",
    "charge at 24:00", "charge level 6", "charge type Empty",
    "charge preferences half", "immobilize 1", "stolen null",
]  # fmt: skip


@pytest.mark.parametrize("name", CONTRACT_REFUSES)
def test_the_contract_refuses_it_too(name: str) -> None:
    (raw,) = [r[1] for r in DECODE_REFUSALS if r[0] == name]
    assert not command_conforms(raw)


def test_decode_refusals_cover_every_decode_reason() -> None:
    reasons = {r[2] for r in DECODE_REFUSALS}
    assert reasons == {"not_cbor", "malformed", "unsigned", "unknown_action", "bad_params"}


def test_no_cbor_tag_is_accepted() -> None:
    for tag in (*range(0, 300, 7), 1004, 43000, 55799, 2**32):
        assert decode_reason(signed_doc({8: cbor2.CBORTag(tag, 7)})) == "malformed", tag


def test_non_bytes_input_is_refused() -> None:
    assert decode_reason(RAW.hex()) == "not_cbor"  # type: ignore[arg-type]
    assert decode_command(memoryview(RAW))[0] == command()
    assert decode_command(bytearray(RAW))[0] == command()


def test_sign_command_refuses_what_the_box_would() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"params": {"beeps": 0}}, "bad_params"),
        ({"action": "navigate"}, "unknown_action"),
        ({"vin": "SHORT"}, "malformed"),
        ({"command_id": b"x"}, "malformed"),
        ({"expires_at_ms": T0}, "malformed"),
        ({"order": -1}, "malformed"),
        ({"params": {"beeps": object()}}, "malformed"),
        ({"params": None}, "bad_params"),
    ]
    for changes, reason in cases:
        with pytest.raises(DownlinkError) as info:
            sign_command(command(**changes), KEY)
        assert info.value.reason == reason, changes
    with pytest.raises(DownlinkError) as info:
        sign_command(command(), KEY[:31])
    assert info.value.reason == "bad_key"
    # a tuple is an array on the wire
    cmd = command(action=Action.PRECOND, params={"programs": (PROGRAM,)})
    assert decode_command(sign_command(cmd, KEY))[0].params == {"programs": [PROGRAM]}


# ---------------------------------------------------------------------------------------------
# Status messages


def status_raw(changes: dict[Any, Any]) -> bytes:
    doc: dict[Any, Any] = {0: 1, 1: bytes(16), 2: VIN, 3: "Failed", 4: "DoorsOpen", 5: 5, 6: ""}
    for k, value in changes.items():
        if value is DELETE:
            del doc[k]
        else:
            doc[k] = value
    data: bytes = cbor2.dumps(doc)
    return data


STATUS_REFUSALS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not_cbor"),
    ("trailing", status_raw({}) + b"\x00", "not_cbor"),
    ("array", cbor2.dumps([1]), "malformed"),
    ("unknown key", status_raw({7: 1}), "malformed"),
    ("missing detail", status_raw({6: DELETE}), "malformed"),
    ("missing at", status_raw({5: DELETE}), "malformed"),
    ("version 0", status_raw({0: 0}), "malformed"),
    ("id of 8 bytes", status_raw({1: bytes(8)}), "malformed"),
    ("id as text", status_raw({1: ""}), "malformed"),
    ("bad vin", status_raw({2: "x"}), "malformed"),
    ("unknown status", status_raw({3: "Done"}), "malformed"),
    ("status as int", status_raw({3: 1}), "malformed"),
    ("failed without cause", status_raw({4: DELETE}), "malformed"),
    ("unknown cause", status_raw({4: "Bad luck"}), "malformed"),
    ("cause as int", status_raw({4: 3}), "malformed"),
    ("cause with success", status_raw({3: "Success"}), "malformed"),
    ("accepted without id", status_raw({1: b"", 3: "Accepted", 4: DELETE}), "malformed"),
    ("negative at", status_raw({5: -5}), "malformed"),
    ("detail too long", status_raw({6: "x" * (MAX_DETAIL_CHARS + 1)}), "malformed"),
    ("detail as bytes", status_raw({6: b""}), "malformed"),
    ("tagged at", status_raw({5: cbor2.CBORTag(1, 5)}), "malformed"),
]


@pytest.mark.parametrize(
    ("raw", "reason"), [r[1:] for r in STATUS_REFUSALS], ids=[r[0] for r in STATUS_REFUSALS]
)
def test_status_refusal(raw: bytes, reason: str) -> None:
    with pytest.raises(DownlinkError) as info:
        decode_status(raw)
    assert info.value.reason == reason


STATUS_CONTRACT_REFUSES = [
    "array", "unknown key", "missing detail", "missing at", "version 0", "id of 8 bytes",
    "id as text", "bad vin", "unknown status", "status as int", "failed without cause",
    "unknown cause", "cause as int", "accepted without id", "negative at", "detail as bytes",
]  # fmt: skip


@pytest.mark.parametrize("name", STATUS_CONTRACT_REFUSES)
def test_the_status_contract_refuses_it_too(name: str) -> None:
    (raw,) = [r[1] for r in STATUS_REFUSALS if r[0] == name]
    assert not status_conforms(raw)


def test_encode_status_refuses_what_decode_would() -> None:
    good = StatusMessage(bytes(16), VIN, RemoteStatus.SUCCESS, None, 5, "")
    cases: list[dict[str, Any]] = [
        {"failure_cause": FailureCause.DOORS_OPEN},
        {"status": RemoteStatus.FAILED},
        {"status": "Done"},
        {"command_id": b""},
        {"vin": OTHER_VIN.lower()},
        {"at_ms": -1},
        {"detail": "x" * (MAX_DETAIL_CHARS + 1)},
        {"status": RemoteStatus.FAILED, "failure_cause": "Bad luck"},
    ]
    for changes in cases:
        with pytest.raises(DownlinkError) as info:
            encode_status(dataclasses.replace(good, **changes))
        assert info.value.reason == "malformed", changes
    plain = dataclasses.replace(good, status="Failed", failure_cause="DoorsOpen")  # type: ignore[arg-type]
    assert decode_status(encode_status(plain)).failure_cause is FailureCause.DOORS_OPEN


# ---------------------------------------------------------------------------------------------
# Anything at all: only DownlinkError, and what is accepted conforms


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    for decode, conforms in ((decode_command, command_conforms), (decode_status, status_conforms)):
        try:
            decode(data)
        except DownlinkError as exc:
            assert exc.reason in REFUSAL_REASONS
        else:
            assert conforms(data)


@given(cbor_values)
def test_arbitrary_cbor(value: object) -> None:
    data = cbor2.dumps(value, canonical=True)
    for decode in (decode_command, decode_status):
        with pytest.raises(DownlinkError) as info:
            decode(data)
        assert info.value.reason in REFUSAL_REASONS


def mutate(doc: dict[Any, Any], data: st.DataObject) -> None:
    """Replace, delete or add one node of a command's map (its parameters included)."""
    parents: list[tuple[Any, Any]] = [(doc, k) for k in doc]
    params = doc.get(4)
    if isinstance(params, dict):
        parents += [(params, k) for k in params]
        for value in params.values():
            if isinstance(value, dict):
                parents += [(value, k) for k in value]
            if isinstance(value, list):
                parents += [(value, i) for i in range(len(value))]
                parents += [(p, k) for p in value if isinstance(p, dict) for k in p]
    parent, key = data.draw(st.sampled_from(parents))
    what = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if what == "replace":
        parent[key] = data.draw(cbor_values | st.sampled_from(Action).map(str))
    elif what == "delete":
        del parent[key]
    elif isinstance(parent, dict):
        new_key = data.draw(st.integers(-1, 11) | st.sampled_from(["beeps", "immediate", "x"]))
        parent[new_key] = data.draw(cbor_values)
    else:
        parent.append(data.draw(cbor_values))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(commands(st.just(VIN)), st.data())
def test_mutated_commands_are_refused_or_conform(cmd: Command, data: st.DataObject) -> None:
    """Change one node of a valid command and sign it again: refused with a reason, or valid."""
    doc = doc_of(sign_command(cmd, KEY))
    del doc[9]
    mutate(doc, data)
    if data.draw(st.booleans()):
        unsigned = {k: v for k, v in doc.items() if k != 9}
        doc[9] = hmac.new(KEY, cbor2.dumps(unsigned, canonical=True), hashlib.sha256).digest()
    raw = cbor2.dumps(doc, canonical=True)
    try:
        decoded, _, _ = decode_command(raw)
    except DownlinkError as exc:
        assert exc.reason in REFUSAL_REASONS
    else:
        assert command_conforms(raw)
        assert sign_command(decoded, KEY) == raw
    with NonceCache(":memory:") as nonces:
        v = CommandVerifier(VIN, KEY, nonces, clock_ms=lambda: cmd.issued_at_ms)
        try:
            v.verify(raw)
        except Refusal as refusal:
            assert refusal.reason in REFUSAL_REASONS
            assert refusal.failure_cause is REFUSAL_CAUSES[refusal.reason]
            assert decode_status(encode_status(refusal.status(VIN, 0))).detail
        else:
            assert command_conforms(raw)


@settings(max_examples=300)
@given(commands(st.just(VIN)), st.data())
def test_any_single_byte_change_is_refused(cmd: Command, data: st.DataObject) -> None:
    raw = bytearray(sign_command(cmd, KEY))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    with NonceCache(":memory:") as nonces:
        v = CommandVerifier(VIN, KEY, nonces, clock_ms=lambda: cmd.issued_at_ms)
        with pytest.raises(Refusal) as info:
            v.verify(bytes(raw))
        assert info.value.reason in REFUSAL_REASONS
        assert len(nonces) == 0  # nothing unauthentic is remembered


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(commands(st.just(VIN)), st.data())
def test_the_precheck_of_a_sleeping_box_passes_only_what_verify_may_accept(
    cmd: Command, data: st.DataObject
) -> None:
    """Garbage, forgeries, other vehicles, replays, expired and stale commands never pass it
    (so they spend no wake-up), it remembers nothing, and what it passes verify accepts."""
    raw = sign_command(cmd, KEY)
    choice = data.draw(st.sampled_from(["as is", "byte", "expired", "replay", "stale"]))
    now = cmd.issued_at_ms
    if choice == "byte":
        changed = bytearray(raw)
        i = data.draw(st.integers(0, len(raw) - 1))
        changed[i] = data.draw(st.integers(0, 255).filter(lambda b: b != changed[i]))
        raw = bytes(changed)
    elif choice == "expired":
        now = cmd.expires_at_ms + CLOCK_SKEW_MS
    with NonceCache(":memory:") as nonces:
        v = CommandVerifier(VIN, KEY, nonces, clock_ms=lambda: now)
        if choice == "replay":
            nonces.remember(cmd.nonce, cmd.expires_at_ms + CLOCK_SKEW_MS, now_ms=now)
        if choice == "stale":  # a later command was accepted: the order can only grow
            later = data.draw(st.integers(cmd.order, 2**64 - 1))  # orders are uint64
            nonces.remember(b"\x01" * 16, now + 1, now_ms=now, order=later)
        remembered = len(nonces)
        try:
            v.precheck(raw)
        except Refusal as refusal:
            assert choice != "as is"
            assert refusal.reason in REFUSAL_REASONS
        else:
            assert choice == "as is"
            assert len(nonces) == remembered and v.queued == ()
            assert v.verify(raw) == cmd


# ---------------------------------------------------------------------------------------------
# The box's checks


def test_a_valid_command_is_accepted_and_queued(verifier: CommandVerifier) -> None:
    cmd = verifier.verify(RAW)
    assert cmd == command()
    assert verifier.queued == (cmd.command_id,)
    assert verifier.nonces.last_order == 7
    assert verifier.nonces.seen(cmd.nonce)
    assert verifier.release(cmd.command_id)
    assert not verifier.release(cmd.command_id)
    assert not verifier.queued


def test_forged_commands_are_refused(verifier: CommandVerifier) -> None:
    forged = sign_command(command(), vehicle_key(b"not the master secret", VIN))
    refusal = refusal_of(verifier, forged)
    assert (refusal.reason, refusal.failure_cause) == ("bad_signature", "MissingRights")
    assert refusal.command_id == command().command_id
    # a forgery is judged before its contents: no hint whether they would pass
    bad_content = signed_doc({4: {"beeps": 99}}, key=bytes(32))
    assert refusal_of(verifier, bad_content).reason == "bad_signature"
    assert refusal_of(verifier, signed_doc({9: DELETE})).reason == "unsigned"
    assert len(verifier.nonces) == 0
    assert verifier.verify(RAW) == command()


def test_a_command_for_another_vehicle_is_refused(verifier: CommandVerifier) -> None:
    # signed with this vehicle's key, addressed to another
    assert refusal_of(verifier, sign_command(command(vin=OTHER_VIN), KEY)).reason == "wrong_vin"
    # signed for the other vehicle with its own key
    other = sign_command(command(vin=OTHER_VIN), vehicle_key(SECRET, OTHER_VIN))
    assert refusal_of(verifier, other).reason == "bad_signature"


def test_validity_window_with_skew(clock: Clock, verifier: CommandVerifier) -> None:
    expires = T0 + 600_000
    cases = [
        (T0 - CLOCK_SKEW_MS - 1, "not_yet_valid", FailureCause.GENERAL_ERROR),
        (expires + CLOCK_SKEW_MS, "expired", FailureCause.VEHICLE_CONNECTION_TIMEOUT),
        (expires + 10 * MAX_VALIDITY_MS, "expired", FailureCause.VEHICLE_CONNECTION_TIMEOUT),
    ]
    for n, (now, reason, cause) in enumerate(cases):
        clock.now_ms = now
        refusal = refusal_of(verifier, sign_command(command(nonce=bytes([n]) * 16), KEY))
        assert (refusal.reason, refusal.failure_cause) == (reason, cause)
    for n, now in enumerate([T0 - CLOCK_SKEW_MS, expires + CLOCK_SKEW_MS - 1]):
        clock.now_ms = now
        cmd = command(nonce=bytes([n + 10]) * 16, order=100 + n)
        assert verifier.verify(sign_command(cmd, KEY)) == cmd
    assert verifier.nonces.last_order == 101  # refused commands do not move the order


def test_replays_are_refused(clock: Clock, verifier: CommandVerifier) -> None:
    verifier.verify(RAW)
    verifier.release(command().command_id)
    refusal = refusal_of(verifier, RAW)
    assert (refusal.reason, refusal.failure_cause) == ("replayed", "WrongCommand")
    assert refusal.command_id == command().command_id
    # the same nonce in a new command (new id, higher order) is a replay too
    again = sign_command(command(command_id=bytes(16), order=8), KEY)
    assert refusal_of(verifier, again).reason == "replayed"
    # an authentic command is judged once: its retransmission is a replay whatever the verdict
    clock.now_ms = T0 + 10 * MAX_VALIDITY_MS
    late = sign_command(command(nonce=bytes(16), order=9), KEY)
    assert refusal_of(verifier, late).reason == "expired"
    clock.now_ms = T0
    assert refusal_of(verifier, late).reason == "replayed"


def test_stale_orders_are_refused(verifier: CommandVerifier) -> None:
    verifier.verify(RAW)
    for n, order in enumerate((7, 6, 0)):
        stale = command(nonce=bytes([n]) * 16, order=order)
        refusal = refusal_of(verifier, sign_command(stale, KEY))
        assert (refusal.reason, refusal.failure_cause) == ("stale_order", "WrongCommand")
    cmd = command(nonce=bytes([9]) * 16, order=2**64 - 1)
    assert verifier.verify(sign_command(cmd, KEY)) == cmd
    assert verifier.nonces.last_order == 2**64 - 1


def test_a_full_queue_refuses_until_a_command_finishes(clock: Clock) -> None:
    with NonceCache(":memory:") as nonces:
        v = CommandVerifier(VIN, KEY, nonces, clock_ms=clock, max_queue=2)
        ids = []
        for order in (1, 2):
            cmd = command(command_id=bytes([order]) * 16, nonce=bytes([order]) * 16, order=order)
            ids.append(v.verify(sign_command(cmd, KEY)).command_id)
        third = sign_command(command(nonce=bytes([3]) * 16, order=3), KEY)
        refusal = refusal_of(v, third)
        assert (refusal.reason, refusal.failure_cause) == (
            "queue_full",
            "TooManyRequestInShortTime",
        )
        assert v.release(ids[0])
        fourth = command(nonce=bytes([4]) * 16, order=4)
        assert v.verify(sign_command(fourth, KEY)) == fourth
        assert v.queued == (ids[1], fourth.command_id)


def test_content_refusals_come_after_the_signature(verifier: CommandVerifier) -> None:
    assert refusal_of(verifier, signed_doc({3: "navigate"})).reason == "unknown_action"
    assert refusal_of(verifier, signed_doc({4: {"beeps": 0}})).reason == "bad_params"
    assert refusal_of(verifier, signed_doc({6: T0})).reason == "malformed"
    refusal = refusal_of(verifier, b"\xff")
    assert (refusal.reason, refusal.command_id) == ("not_cbor", b"")
    assert refusal_of(verifier, signed_doc({1: b"short"})).command_id == b""


def test_every_refusal_reason_is_produced(clock: Clock, verifier: CommandVerifier) -> None:
    seen: set[str] = set()
    for name, raw, _ in DECODE_REFUSALS:
        seen.add(refusal_of(verifier, raw).reason)
        if name == "no signature":
            assert refusal_of(verifier, raw).failure_cause is FailureCause.MISSING_RIGHTS
    seen.add(refusal_of(verifier, sign_command(command(), bytes(32))).reason)
    seen.add(refusal_of(verifier, sign_command(command(vin=OTHER_VIN), KEY)).reason)
    clock.now_ms = T0 + MAX_VALIDITY_MS
    seen.add(refusal_of(verifier, sign_command(command(nonce=bytes(16)), KEY)).reason)
    clock.now_ms = T0 - MAX_VALIDITY_MS
    seen.add(refusal_of(verifier, sign_command(command(nonce=bytes([1]) * 16), KEY)).reason)
    clock.now_ms = T0
    for n in range(8):
        queued = command(command_id=bytes([n]) * 16, nonce=bytes([n + 10]) * 16, order=10 + n)
        verifier.verify(sign_command(queued, KEY))
    for late in (command(nonce=bytes([2]) * 16, order=99), command(nonce=bytes([3]) * 16, order=1)):
        seen.add(refusal_of(verifier, sign_command(late, KEY)).reason)  # queue full, stale
    seen.add(refusal_of(verifier, sign_command(command(nonce=bytes([3]) * 16), KEY)).reason)
    assert seen == REFUSAL_REASONS


def test_refusals_become_status_messages(verifier: CommandVerifier) -> None:
    verifier.verify(RAW)
    refusal = refusal_of(verifier, RAW)
    msg = decode_status(encode_status(refusal.status(VIN, T0)))
    assert msg == StatusMessage(
        command().command_id,
        VIN,
        RemoteStatus.FAILED,
        FailureCause.WRONG_COMMAND,
        T0,
        "replayed: this command's nonce was seen before",
    )
    assert refusal_reason(msg.detail) == "replayed"
    assert refusal_reason("") is None
    assert refusal_reason("DoorsOpen: the driver's door") is None
    long = Refusal("malformed", FailureCause.WRONG_COMMAND, "x" * 500, b"")
    status = long.status(VIN, 0)
    assert len(status.detail) == MAX_DETAIL_CHARS
    assert decode_status(encode_status(status)) == status
    assert isinstance(long, DownlinkError) and isinstance(long, TcuError)


def test_verifier_settings_are_checked() -> None:
    with NonceCache(":memory:") as nonces:
        args: tuple[Any, ...]
        kwargs: Any
        for args, kwargs in [
            ((VIN, KEY[:16]), {}),
            ((VIN.lower(), KEY), {}),
            ((VIN, KEY), {"max_queue": 0}),
            ((VIN, KEY), {"skew_ms": -1}),
        ]:
            with pytest.raises(ConfigError):
                CommandVerifier(args[0], args[1], nonces, **kwargs)


# ---------------------------------------------------------------------------------------------
# The nonce cache


def test_replays_are_refused_after_a_reboot(tmp_path: Path) -> None:
    path = tmp_path / "box" / "nonces.db"
    clock = Clock()
    with NonceCache(path) as nonces:
        CommandVerifier(VIN, KEY, nonces, clock_ms=clock).verify(RAW)
    with NonceCache(path) as nonces:  # the box rebooted: a new verifier, an empty queue
        v = CommandVerifier(VIN, KEY, nonces, clock_ms=clock)
        assert refusal_of(v, RAW).reason == "replayed"
        stale = sign_command(command(nonce=bytes(16), order=7), KEY)
        assert refusal_of(v, stale).reason == "stale_order"
        fresh = command(nonce=bytes([1]) * 16, order=8)
        assert v.verify(sign_command(fresh, KEY)) == fresh
    with NonceCache(path) as nonces:
        assert nonces.last_order == 8
        assert len(nonces) == 3


def test_nonces_are_forgotten_after_their_time(tmp_path: Path) -> None:
    path = tmp_path / "nonces.db"
    with NonceCache(path) as nonces:
        nonces.remember(b"a" * 16, 1_000, now_ms=0)
        nonces.remember(b"b" * 16, 2_000, now_ms=0, order=3)
        nonces.remember(b"b" * 16, 1_500, now_ms=0, order=2)  # keeps the later time, order 3
        assert nonces.last_order == 3
        nonces.remember(b"c" * 16, 3_000, now_ms=1_001)
        assert not nonces.seen(b"a" * 16)
        assert nonces.seen(b"b" * 16) and nonces.seen(b"c" * 16)
        assert nonces.prune(2_000) == 0
        assert nonces.prune(2_001) == 1
        assert not nonces.seen(b"b" * 16)
    with NonceCache(path) as nonces:
        assert len(nonces) == 1
        assert nonces.last_order == 3


def test_the_verifier_keeps_a_nonce_past_its_command(clock: Clock) -> None:
    with NonceCache(":memory:") as nonces:
        v = CommandVerifier(VIN, KEY, nonces, clock_ms=clock)
        v.verify(RAW)
        forget_at = command().expires_at_ms + CLOCK_SKEW_MS + NONCE_MARGIN_MS
        assert nonces.prune(forget_at) == 0
        assert nonces.prune(forget_at + 1) == 1


def test_the_cache_is_bounded() -> None:
    with NonceCache(":memory:", max_entries=3) as nonces:
        for n, keep in enumerate([50, 10, 40, 30, 20]):
            nonces.remember(bytes([n]) * 16, keep, now_ms=0)
        assert len(nonces) == 3
        # when full, the nonce due soonest makes room (10 for the fourth, 30 for the fifth)
        assert [nonces.seen(bytes([n]) * 16) for n in range(5)] == [True, False, True, False, True]
        nonces.remember(b"z" * 16, 2**70, now_ms=0)  # beyond SQLite's integers: kept for good
        assert nonces.seen(b"z" * 16)


def test_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        NonceCache(tmp_path / "x", max_entries=0)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError):
        NonceCache(tmp_path / "file" / "nonces.db")
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        NonceCache(tmp_path / "junk.db")
    nonces = NonceCache(":memory:")
    nonces.close()
    nonces.close()
    with pytest.raises(LifecycleError):
        nonces.seen(bytes(16))
    with pytest.raises(LifecycleError):
        nonces.remember(bytes(16), 1, now_ms=0)


def test_the_cache_shares_a_file_with_the_flash_store(tmp_path: Path) -> None:
    from firmware_sim.flash import FlashStore  # noqa: PLC0415

    path = tmp_path / "flash.db"
    with FlashStore(path) as flash:
        flash.boot()
        with NonceCache(path) as nonces:
            nonces.remember(bytes(16), 10, now_ms=0, order=2**64 - 1)
            assert nonces.last_order == 2**64 - 1
        assert flash.boot().boot == 2
