"""Accounts files: parsing, every fault with its line and field, lookups, the demo accounts."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.accounts import (
    DEFAULT_PLAN,
    SCOPES,
    Accounts,
    AccountsError,
    default_accounts,
    hash_secret,
    load_accounts,
    load_accounts_text,
    parse_accounts,
    vehicle_id_of,
    verify_secret,
)
from gateway.errors import GatewayError

ROOT = Path(__file__).resolve().parent.parent
VIN1, VIN2, VIN3 = "VR3UHZKXZHT000101", "VR3UHZKXZHT000102", "VR3UHZKXZHT000103"

GOOD = f"""\
format: tcusim-accounts/1
plans:
  - {{name: small, per_day: 10, per_second: 2}}
users:
  - {{id: alice, email: Alice@example.com, password: alice-pw}}
  - {{id: bob, email: bob@example.com, password_hash: "{hash_secret("bob-pw", iterations=2)}"}}
fleets:
  - {{id: f1, label: Fleet one, vehicles: [{VIN1}, {VIN3}]}}
clients:
  - client_id: app
    secret: app-secret
    kind: b2c
    redirect_uris: [http://127.0.0.1:9/cb]
    plan: small
    scopes: [data:position, data:trip]
  - {{client_id: fleet-app, secret: fleet-secret, kind: b2b, fleet: f1}}
vehicles:
  - {{vin: {VIN1}, brand: Peugeot, label: One, services: [connected_car], owner: alice}}
  - {{vin: {VIN2}, id: car-two, services: [ecall, alerts], owner: alice}}
  - {{vin: {VIN3}}}
"""


def good() -> Accounts:
    return load_accounts_text(GOOD, "good.yaml", iterations=1)


def test_a_good_file_loads_and_answers_every_lookup() -> None:
    accounts = good()
    alice = accounts.user("alice")
    assert alice is not None and alice.check_password("alice-pw")
    assert not alice.check_password("alice-PW")
    assert accounts.user_by_email("alice@EXAMPLE.com") == alice
    bob = accounts.user("bob")
    assert bob is not None and bob.check_password("bob-pw")
    assert accounts.user("carol") is None and accounts.user_by_email("x@y") is None
    app = accounts.client("app")
    assert app is not None and app.kind == "b2c" and app.check_secret("app-secret")
    assert app.scopes == {"data:position", "data:trip"} and app.plan.per_second == 2
    fleet_app = accounts.client("fleet-app")
    assert fleet_app is not None and fleet_app.fleet == "f1"
    assert fleet_app.scopes == frozenset(SCOPES) and fleet_app.plan == DEFAULT_PLAN
    assert accounts.client("nope") is None
    fleet = accounts.fleet("f1")
    assert fleet is not None and fleet.label == "Fleet one"
    assert [v.vin for v in accounts.vehicles_of_fleet("f1")] == [VIN1, VIN3]
    assert accounts.vehicles_of_fleet("f2") == []
    assert [v.vin for v in accounts.vehicles_of_user("alice")] == [VIN1, VIN2]
    assert accounts.vehicles_of_user("bob") == []
    one = accounts.vehicle_by_vin(VIN1)
    assert one is not None and one.id == vehicle_id_of(VIN1) and one.brand == "Peugeot"
    assert accounts.vehicle_by_id(one.id) == one
    two = accounts.vehicle_by_id("car-two")
    assert two is not None and two.services == ("ecall", "alerts")
    three = accounts.vehicle_by_vin(VIN3)
    assert three is not None and three.owner is None and three.services == ("connected_car",)
    assert accounts.plans["small"].per_day == 10
    assert len(accounts.users) == 2 and len(accounts.clients) == 2
    assert len(accounts.fleets) == 1 and len(accounts.vehicles) == 3


def test_secrets_are_hashed_and_never_shown() -> None:
    accounts = good()
    shown = repr(accounts) + repr(accounts.users) + repr(accounts.clients)
    assert "alice-pw" not in shown and "app-secret" not in shown and "pbkdf2" not in shown
    user = accounts.user("alice")
    assert user is not None and user.password_hash.startswith("pbkdf2_sha256$1$")
    assert "alice-pw" not in user.password_hash


def test_hash_secret_and_verify_secret() -> None:
    stored = hash_secret("s3cret", iterations=3)
    assert verify_secret("s3cret", stored)
    assert not verify_secret("s3cret ", stored)
    assert not verify_secret("s3cret", "plain")
    assert hash_secret("s3cret", iterations=3) != stored  # a new salt every time
    with pytest.raises(ValueError, match="iterations"):
        hash_secret("x", iterations=0)


def test_vehicle_ids_are_derived_from_the_vin() -> None:
    assert vehicle_id_of(VIN1) == vehicle_id_of(VIN1) != vehicle_id_of(VIN2)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", vehicle_id_of(VIN1))


def test_with_vehicle_adds_and_replaces_without_changing_the_original() -> None:
    accounts = good()
    new_vin = "VR3UHZKXZHT000199"
    more = accounts.with_vehicle(new_vin, owner="bob", fleet="f1", services=["alerts"])
    assert accounts.vehicle_by_vin(new_vin) is None
    added = more.vehicle_by_vin(new_vin)
    assert added is not None and added.owner == "bob" and added.services == ("alerts",)
    assert more.vehicle_by_id(vehicle_id_of(new_vin)) == added
    assert [v.vin for v in more.vehicles_of_fleet("f1")] == [VIN1, VIN3, new_vin]
    assert [v.vin for v in more.vehicles_of_user("bob")] == [new_vin]
    moved = more.with_vehicle(new_vin, owner="alice", fleet="f1", label="Moved")
    assert [v.vin for v in moved.vehicles_of_fleet("f1")] == [VIN1, VIN3, new_vin]
    assert moved.vehicles_of_user("bob") == []
    assert moved.vehicle_by_vin(new_vin) is not None
    with pytest.raises(AccountsError, match="not a VIN"):
        accounts.with_vehicle("VIN")
    with pytest.raises(AccountsError, match="unknown service 'radio'"):
        accounts.with_vehicle(new_vin, services=["radio"])
    with pytest.raises(AccountsError, match="no fleet 'f9'"):
        accounts.with_vehicle(new_vin, fleet="f9")
    with pytest.raises(AccountsError, match="no user 'zoe'"):
        accounts.with_vehicle(new_vin, owner="zoe")
    with pytest.raises(AccountsError, match="'car-two' given twice"):
        accounts.with_vehicle(new_vin, vehicle_id="car-two")
    with pytest.raises(AccountsError, match="not an id"):
        accounts.with_vehicle(new_vin, vehicle_id="a b")


def _shipped_vins() -> set[str]:
    files = [*ROOT.glob("scenarios/*.yaml"), ROOT / "firmware_sim/scenario/data/demo.yaml"]
    vins = set()
    for path in files:
        vins |= set(re.findall(r"^\s*vin:\s*([A-Z0-9]{17})", path.read_text(), re.MULTILINE))
    return vins


def test_the_demo_accounts_own_every_shipped_vehicle() -> None:
    accounts = default_accounts()
    vins = _shipped_vins()
    assert len(vins) >= 8
    user = accounts.user_by_email("demo@tcusim.local")
    assert user is not None and user.check_password("tcusim-demo")
    assert {v.vin for v in accounts.vehicles_of_user(user.id)} >= vins
    assert {v.vin for v in accounts.vehicles_of_fleet("demo-fleet")} >= vins
    b2c, b2b = accounts.client("demo-app"), accounts.client("demo-fleet-app")
    assert b2c is not None and b2c.kind == "b2c" and b2c.check_secret("demo-app-secret")
    assert b2b is not None and b2b.kind == "b2b" and b2b.check_secret("demo-fleet-secret")
    assert b2b.fleet == "demo-fleet"


def test_default_accounts_take_extra_vins() -> None:
    extra = "VR3UHZKXZHT999999"
    accounts = default_accounts(vins=[extra, "VR3UHZKXZHT000042"])
    vehicle = accounts.vehicle_by_vin(extra)
    assert vehicle is not None and vehicle.owner == "demo"
    assert extra in {v.vin for v in accounts.vehicles_of_fleet("demo-fleet")}
    assert default_accounts().vehicle_by_vin(extra) is None


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (change to GOOD, expected line, expected words of the message)
FAULTS = [
    (("format: tcusim-accounts/1", "format: tcusim-accounts/2"), 1, "format: must be"),
    (("format: tcusim-accounts/1", "format: tcusim-accounts/1\nextra: 1"), 2, "extra: unknown"),
    (("plans:\n  - {name: small, per_day: 10, per_second: 2}\n", "plans: 3\n"), 2, "plans: exp"),
    (("{name: small, per_day: 10,", "{name: small, per_day: 0,"), 3, "per_day: expected a posi"),
    (("per_second: 2}", "per_second: true}"), 3, "per_second: expected a posi"),
    (("{name: small,", "{name: 'a b',"), 3, "plans[0].name: 'a b' is not a valid"),
    (("  - {name: small", "  - 7\n  - {name: small"), 3, "plans[0]: expected a mapping"),
    (("id: alice, email", "id: alice, mail"), 5, "users[0].mail: unknown key"),
    (("id: alice, email: Alice@example.com,", "id: alice,"), 5, "users[0].email: missing"),
    (("Alice@example.com", "alice"), 5, "users[0].email: 'alice' is not a valid"),
    (("Alice@example.com", "BOB@example.com"), 6, "users[1].email: 'bob@example.com' given"),
    (("id: bob,", "id: alice,"), 6, "users[1].id: 'alice' given twice"),
    (("password: alice-pw}", "password: ''}"), 5, "users[0].password: expected a non-empty"),
    (("password: alice-pw}", "password: alice-pw, password_hash: x}"), 5, "exactly one"),
    (("password: alice-pw}", "password_hash: x}"), 5, "password_hash: not a pbkdf2"),
    (("{id: f1, label", "{id: f1, labels"), 8, "fleets[0].labels: unknown key"),
    ((f"vehicles: [{VIN1}, {VIN3}]", "vehicles: [VR3UHZKXZHT000777]"), 8, "no vehicle"),
    ((f"vehicles: [{VIN1}, {VIN3}]", f"vehicles: [{VIN1}, {VIN1}]"), 8, "given twice"),
    ((f"vehicles: [{VIN1}, {VIN3}]", "vehicles: [1]"), 8, "fleets[0].vehicles[0]: not a"),
    (("label: Fleet one", "label: [1]"), 8, "fleets[0].label: expected a string"),
    (("kind: b2c", "kind: b2x"), 12, "clients[0].kind: 'b2x' is not one of b2c, b2b"),
    (("client_id: app\n", "client_id: fleet-app\n"), 16, "clients[1].client_id: 'fleet-app' gi"),
    (("client_id: app\n", "client_id: 'a:b'\n"), 10, "clients[0].client_id: 'a:b' is not"),
    (("    secret: app-secret\n", ""), 10, "clients[0]: give exactly one of"),
    (("[http://127.0.0.1:9/cb]", "[]"), 10, "a b2c client needs at least one"),
    (("[http://127.0.0.1:9/cb]", "['/cb']"), 13, "redirect_uris[0]: not an absolute URI"),
    (("[http://127.0.0.1:9/cb]", "['http://h/cb#x']"), 13, "no fragment"),
    (("    plan: small\n", "    plan: big\n"), 14, "clients[0].plan: no plan 'big'"),
    (("scopes: [data:position,", "scopes: [data:speed,"), 15, "unknown scope 'data:speed'"),
    (("kind: b2c\n", "kind: b2c\n    fleet: f1\n"), 13, "only a b2b client has a fleet"),
    (("kind: b2b, fleet: f1}", "kind: b2b}"), 16, "clients[1].fleet: a b2b client needs"),
    (("kind: b2b, fleet: f1}", "kind: b2b, fleet: f2}"), 16, "clients[1].fleet: no fleet 'f2'"),
    (("kind: b2b, fleet: f1}", "kind: b2b, fleet: f1, redirect_uris: [http://a/b]}"), 16, "only"),
    (
        (f"{{vin: {VIN1}, brand", "{vin: VR3UHZKXZHT00010I, brand"),
        18,
        "vin: 'VR3UHZKXZHT00010I' is",
    ),
    ((f"{{vin: {VIN2}, id", f"{{vin: {VIN1}, id"), 19, f"vehicles[1].vin: {VIN1} given twice"),
    (("id: car-two", f"id: {vehicle_id_of(VIN1)}"), 19, "vehicles[1].id:"),
    (("id: car-two", "id: car two"), 19, "vehicles[1].id: 'car two' is not a valid id"),
    (("services: [ecall, alerts]", "services: [ecall, radio]"), 19, "unknown service 'radio'"),
    (("services: [ecall, alerts]", "services: ecall"), 19, "services: expected a list, got str"),
    (("owner: alice}", "owner: zoe}"), 18, "vehicles[0].owner: no user 'zoe'"),
    (("brand: Peugeot", "brand: 3"), 18, "vehicles[0].brand: expected a string, got int"),
    (("brand: Peugeot", "colour: red"), 18, "vehicles[0].colour: unknown key"),
    (("vehicles:\n  - {vin", "vehicles:\n  - {}\n  - {vin"), 18, "vehicles[0].vin: missing"),
]


@pytest.mark.parametrize(("change", "line", "words"), FAULTS, ids=[f[2] for f in FAULTS])
def test_every_fault_names_file_line_and_field(
    change: tuple[str, str], line: int, words: str
) -> None:
    text = _edit(GOOD, *change)
    with pytest.raises(AccountsError) as caught:
        load_accounts_text(text, "acc.yaml", iterations=1)
    message = str(caught.value)
    assert message.startswith(f"acc.yaml:{line}: "), message
    assert words in message, message
    assert caught.value.line == line and caught.value.source == "acc.yaml"
    assert isinstance(caught.value, GatewayError)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "the file is empty"),
        ("format: [", "not valid YAML"),
        ("- 1\n- 2\n", "document: expected a mapping, got a list"),
        ("users: []\n", "document.format: missing"),
        ("format: tcusim-accounts/1\nformat: x\n", "format: given twice"),
        ("format: tcusim-accounts/1\n1: x\n", "key 1 is not a name"),
        ("format: tcusim-accounts/1\nusers: !!python/object:os.system x\n", "not a value"),
    ],
)
def test_malformed_documents(text: str, words: str) -> None:
    with pytest.raises(AccountsError, match=re.escape(words)):
        load_accounts_text(text, "x.yaml", iterations=1)


def test_load_accounts_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text(GOOD)
    assert load_accounts(path, iterations=1).user("alice") is not None
    with pytest.raises(AccountsError, match="cannot read"):
        load_accounts(tmp_path / "missing.yaml")
    path.write_bytes(b"format: \xff\xfe\n")
    with pytest.raises(AccountsError, match="not UTF-8"):
        load_accounts(path)


def test_accounts_built_in_code_are_checked() -> None:
    accounts = good()
    with pytest.raises(AccountsError, match="users: 'alice' given twice"):
        Accounts(users=[*accounts.users, *accounts.users])
    with pytest.raises(AccountsError, match="no fleet 'f1'"):
        Accounts(clients=accounts.clients, plans=accounts.plans.values(), fleets=[])
    with pytest.raises(AccountsError, match="no vehicle"):
        Accounts(fleets=accounts.fleets)


# -- Hypothesis: any document is either accounts or a clear AccountsError ----------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["b2c", "b2b", VIN1, VIN2, "alice", "f1", "data:trip", "connected_car"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_is_accounts_or_a_clear_error(document: Any) -> None:
    try:
        parse_accounts(document, "fuzz", iterations=1)
    except AccountsError as exc:
        assert str(exc).startswith("fuzz")


BASE = yaml.safe_load(GOOD)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(BASE)[1:]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), documents), min_size=1, max_size=3))
def test_a_valid_document_changed_anywhere_is_accounts_or_a_clear_error(
    changes: list[tuple[tuple[Any, ...], Any]],
) -> None:
    document = copy.deepcopy(BASE)
    for path, value in changes:
        node = document
        try:
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        parse_accounts(document, "fuzz", iterations=1)
    except AccountsError as exc:
        assert str(exc).startswith("fuzz")


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_any_text_is_accounts_or_a_clear_error(text: str) -> None:
    try:
        load_accounts_text(GOOD[:40] + text, "fuzz.yaml", iterations=1)
    except AccountsError as exc:
        assert str(exc).startswith("fuzz.yaml")
