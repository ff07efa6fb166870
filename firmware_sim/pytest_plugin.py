"""A pytest plugin: one test file runs in CI on virtual CAN and on a bench on real hardware.

Registered through the ``pytest11`` entry point ``tcusim`` (``-p no:tcusim`` turns it off).
The command line chooses the hardware; the tests do not change (``docs/bench.md``)::

    pytest                                           # CI: a virtual CAN channel per test
    pytest --can-interface socketcan --can-channel can0 --gnss-port /dev/ttyUSB0 \\
           --broker mqtts://user:password@broker:8883

Options (group ``tcusim``): ``--can-interface``, ``--can-channel``, ``--can-bitrate``,
``--gnss-port``, ``--gnss-baud``, ``--broker``, ``--tls-ca``, ``--tcusim-data``. A bad value is
a usage error before any test runs.

Fixtures: ``tcusim_options`` (the options, checked), ``tcusim_local_broker`` and
``tcusim_broker`` (broker URLs), ``tcusim_data`` (a folder per test), ``tcusim_can`` (the CAN
interface and channel of this test), ``tcusim_bus`` (a python-can bus on it),
``tcusim_gateway`` (a started :class:`gateway.ingest.GatewayThread`), ``tcusim_vehicle`` (a
factory of started boxes in wall-clock time) and ``tcusim_scenario`` (runs a scenario in
simulated time). Everything a fixture starts is stopped, joined and closed when its test ends.

The heavy modules (python-can, the gateway, the scenario runner) are imported when a fixture
needs them, so the plugin costs nothing to a test run that does not use it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from firmware_sim.config import BrokerUrl, mask_password, parse_broker_url
from firmware_sim.errors import ConfigError, InterfaceError, TcuError

if TYPE_CHECKING:
    import can

    from can_dbc.mapping import SignalMapping
    from firmware_sim.box import Tcu
    from firmware_sim.clock import WallScheduler
    from firmware_sim.config import TcuConfig
    from firmware_sim.scenario.model import Scenario
    from firmware_sim.scenario.record import RunRecord
    from firmware_sim.sim.drive import Drive
    from firmware_sim.sim.vehicle import SimVehicle
    from gateway.ingest import GatewayThread

__all__ = [
    "CanTarget",
    "ScenarioFactory",
    "TcusimOptions",
    "VehicleFactory",
    "socketcan_missing",
]

log = logging.getLogger(__name__)

VIRTUAL = "virtual"
WAIT_S = 10.0  # the bound of every wait of the fixtures (connect, stop, join)
DEFAULT_MODEL_YEAR = 2017
_YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY123456789"  # VIN character 10, from 1980, every 30 years
_channels = itertools.count()


# -- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcusimOptions:
    """The plugin's command-line options, checked."""

    can_interface: str = VIRTUAL
    can_channel: str | None = None  # None: a virtual channel of its own per test
    can_bitrate: int | None = None
    gnss_port: str | None = None  # None: no GNSS port (the simulated car's when simulating)
    gnss_baud: int = 9600
    broker: str | None = None  # None: a broker started for the session on this machine
    tls_ca: Path | None = None
    data: Path | None = None  # None: each test's tmp_path

    @property
    def virtual(self) -> bool:
        """Whether the CAN interface is python-can's virtual bus."""
        return self.can_interface == VIRTUAL

    @property
    def broker_url(self) -> BrokerUrl | None:
        """The parsed ``--broker``."""
        return parse_broker_url(self.broker) if self.broker is not None else None

    @classmethod
    def from_config(cls, config: pytest.Config) -> TcusimOptions:
        """Read and check the options; :class:`pytest.UsageError` names the bad one."""

        def option(name: str) -> Any:
            return config.getoption(name)

        interface = str(option("tcusim_can_interface")).strip()
        channel = option("tcusim_can_channel")
        bitrate = option("tcusim_can_bitrate")
        broker = option("tcusim_broker")
        tls_ca = option("tcusim_tls_ca")
        data = option("tcusim_data")
        gnss_baud = option("tcusim_gnss_baud")
        if interface != VIRTUAL:
            import can  # noqa: PLC0415  (a tenth of a second: only for a real interface)

            if interface not in can.VALID_INTERFACES:
                raise pytest.UsageError(
                    f"--can-interface {interface!r} is not a python-can interface "
                    f"(known: {', '.join(sorted(can.VALID_INTERFACES))})"
                )
            if not channel:
                raise pytest.UsageError(
                    f"--can-interface {interface} needs --can-channel (e.g. can0, vcan0)"
                )
        if bitrate is not None:
            if interface == VIRTUAL:
                raise pytest.UsageError("--can-bitrate means nothing on the virtual interface")
            if bitrate <= 0:
                raise pytest.UsageError(f"--can-bitrate must be positive, not {bitrate}")
        if gnss_baud <= 0:
            raise pytest.UsageError(f"--gnss-baud must be positive, not {gnss_baud}")
        url = None
        if broker is not None:
            try:
                url = parse_broker_url(broker)
            except ConfigError as exc:  # its message masks the password
                raise pytest.UsageError(f"--broker: {exc}") from None
        if tls_ca is not None:
            if url is None or not url.tls:
                raise pytest.UsageError("--tls-ca is the CA of an mqtts:// --broker: give both")
            tls_ca = Path(tls_ca).expanduser().resolve()
            if not tls_ca.is_file():
                raise pytest.UsageError(f"--tls-ca {tls_ca}: no such file")
        if data is not None:
            data = Path(data).expanduser().resolve()
            if data.exists() and not data.is_dir():
                raise pytest.UsageError(f"--tcusim-data {data}: not a folder")
        return cls(
            can_interface=interface,
            can_channel=channel or None,
            can_bitrate=bitrate,
            gnss_port=option("tcusim_gnss_port") or None,
            gnss_baud=gnss_baud,
            broker=broker,
            tls_ca=tls_ca,
            data=data,
        )

    def describe(self) -> str:
        """One line for the report header (the broker's password masked)."""
        can_text = f"{self.can_interface} " + (
            self.can_channel if self.can_channel else "(a channel per test)"
        )
        broker = mask_password(self.broker) if self.broker else "started for the session"
        gnss = self.gnss_port or "none (the simulated car's when simulating)"
        return f"tcusim: CAN {can_text}, broker {broker}, GNSS {gnss}"


_OPTIONS = pytest.StashKey[TcusimOptions]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``tcusim`` option group."""
    group = parser.getgroup("tcusim", "tcusim: the box on virtual or real interfaces")
    group.addoption(
        "--can-interface",
        dest="tcusim_can_interface",
        metavar="NAME",
        default=VIRTUAL,
        help="python-can interface of the box and tcusim_bus: virtual (default), socketcan, "
        "pcan, slcan, ...",
    )
    group.addoption(
        "--can-channel",
        dest="tcusim_can_channel",
        metavar="CHANNEL",
        default=None,
        help="CAN channel, e.g. can0 or vcan0 (needed for a real interface; "
        "default on virtual: a channel of its own per test)",
    )
    group.addoption(
        "--can-bitrate",
        dest="tcusim_can_bitrate",
        metavar="BITS_PER_S",
        type=int,
        default=None,
        help="bitrate, for interfaces that set it (not socketcan: use ip link)",
    )
    group.addoption(
        "--gnss-port",
        dest="tcusim_gnss_port",
        metavar="PORT",
        default=None,
        help="GNSS serial device or pyserial URL, e.g. /dev/ttyUSB0 "
        "(default: none; the simulated car's GNSS when simulating)",
    )
    group.addoption(
        "--gnss-baud",
        dest="tcusim_gnss_baud",
        metavar="BAUD",
        type=int,
        default=9600,
        help="GNSS baud rate (default 9600)",
    )
    group.addoption(
        "--broker",
        dest="tcusim_broker",
        metavar="URL",
        default=None,
        help="MQTT broker, mqtt://[user:password@]host:port or mqtts://... for TLS "
        "(default: Mosquitto on a free port for the session, the embedded broker without it)",
    )
    group.addoption(
        "--tls-ca",
        dest="tcusim_tls_ca",
        metavar="FILE",
        default=None,
        help="CA certificate of an mqtts:// --broker (default: the system's CAs)",
    )
    group.addoption(
        "--tcusim-data",
        dest="tcusim_data",
        metavar="DIR",
        default=None,
        help="folder for the boxes' flash and the gateway databases, a subfolder per test, "
        "emptied when the test starts and kept after it (default: tmp_path)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check the options once, before any test runs."""
    config.stash[_OPTIONS] = TcusimOptions.from_config(config)


def pytest_report_header(config: pytest.Config) -> str | None:
    """What the box runs on."""
    options = config.stash.get(_OPTIONS, None)
    return options.describe() if options is not None else None


# -- the CAN interface -----------------------------------------------------------------------


def socketcan_missing() -> str | None:
    """Why SocketCAN cannot be used on this machine, or ``None`` when it can."""
    family = getattr(socket, "AF_CAN", None)
    if family is None:
        return "this Python has no AF_CAN: SocketCAN cannot be used here"
    try:
        with socket.socket(family, socket.SOCK_RAW, socket.CAN_RAW):
            pass
    except OSError as exc:
        return (
            f"the kernel has no AF_CAN ({exc.strerror or exc}): "
            "SocketCAN (can0, vcan0) cannot be used on this machine"
        )
    return None


@dataclass(frozen=True)
class CanTarget:
    """The CAN interface and channel of one test; :meth:`open` opens another bus on it."""

    interface: str
    channel: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def open(self) -> can.BusABC:
        """A new python-can bus on the channel (:class:`InterfaceError` if it cannot open)."""
        from firmware_sim.runner import open_bus  # noqa: PLC0415

        return open_bus(self.interface, self.channel, **self.options)


def _test_name(node: pytest.Item, limit: int) -> str:
    """A file-name-safe name of a test, unique by a hash when it had to be cut."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", node.nodeid).strip("_.")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(node.nodeid.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}-{digest}"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tcusim_options(pytestconfig: pytest.Config) -> TcusimOptions:
    """The plugin's options, checked."""
    return pytestconfig.stash[_OPTIONS]


@pytest.fixture(scope="session")
def tcusim_local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a broker on this machine for the session (Mosquitto where installed).

    ``tcusim_broker`` is this one unless ``--broker`` names another; scenarios always run here.
    """
    from gateway.broker import start_test_broker  # noqa: PLC0415

    broker = start_test_broker(tmp_path_factory.mktemp("tcusim-broker"))
    try:
        yield broker.url
    finally:
        broker.close()


@pytest.fixture(scope="session")
def tcusim_broker(tcusim_options: TcusimOptions, request: pytest.FixtureRequest) -> str:
    """The URL of the broker the boxes and the gateway use: ``--broker`` or the local one."""
    if tcusim_options.broker is not None:
        return tcusim_options.broker
    url: str = request.getfixturevalue("tcusim_local_broker")
    return url


@pytest.fixture
def tcusim_data(tcusim_options: TcusimOptions, request: pytest.FixtureRequest) -> Path:
    """This test's folder for flash and databases: ``tmp_path``, or a subfolder of
    ``--tcusim-data`` named after the test, emptied now and kept afterwards."""
    if tcusim_options.data is None:
        tmp: Path = request.getfixturevalue("tmp_path")
        return tmp
    folder = tcusim_options.data / _test_name(request.node, 100)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def tcusim_can(tcusim_options: TcusimOptions, request: pytest.FixtureRequest) -> CanTarget:
    """The CAN interface and channel of this test.

    On the virtual interface without ``--can-channel`` the channel is this test's own. The test
    is skipped where SocketCAN is asked for and the kernel has no ``AF_CAN``.
    """
    o = tcusim_options
    if o.can_interface == "socketcan":
        reason = socketcan_missing()
        if reason is not None:
            pytest.skip(reason)
    channel = o.can_channel
    if channel is None:
        channel = f"tcusim-{next(_channels)}-{_test_name(request.node, 60)}"
    options = {"bitrate": o.can_bitrate} if o.can_bitrate is not None else {}
    return CanTarget(o.can_interface, channel, options)


@pytest.fixture
def tcusim_bus(tcusim_can: CanTarget) -> Iterator[can.BusABC]:
    """A python-can bus on this test's interface and channel (the boxes listen there too)."""
    bus = tcusim_can.open()
    try:
        yield bus
    finally:
        bus.shutdown()


@pytest.fixture
def tcusim_gateway(
    tcusim_broker: str, tcusim_options: TcusimOptions, tcusim_data: Path
) -> Iterator[GatewayThread]:
    """A started gateway on a fresh SQLite database, subscribed to every box's uploads.

    Its MQTT client id is its own, and its persistent session is removed from the broker
    when the test ends, so nothing is queued for it afterwards.
    """
    from gateway.ingest import GatewayThread  # noqa: PLC0415

    client_id = f"tcusim-test-gateway-{uuid.uuid4().hex[:12]}"
    gateway = GatewayThread(
        tcusim_data / "gateway.sqlite3",
        tcusim_broker,
        client_id=client_id,
        tls_ca=tcusim_options.tls_ca,
    )
    gateway.start(connect_timeout=WAIT_S)
    try:
        yield gateway
    finally:
        gateway.stop()
        _forget_session(parse_broker_url(tcusim_broker), client_id, tcusim_options.tls_ca)


def _forget_session(broker: BrokerUrl, client_id: str, tls_ca: Path | None) -> None:
    """Remove a persistent MQTT session: connect with its id and a clean session, then leave."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode  # noqa: PLC0415

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=str(tls_ca) if tls_ca else None)
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    try:
        client.connect(broker.host, broker.port, keepalive=10)
        deadline = time.monotonic() + WAIT_S
        while not connected.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        if connected.is_set():
            client.disconnect()
            client.loop(timeout=0.05)
        else:
            log.warning("the session %s was left on %s: no CONNACK", client_id, broker)
    except OSError as exc:
        log.warning("the session %s was left on %s: %s", client_id, broker, exc)
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
        for name in ("_sockpairR", "_sockpairW"):  # paho's wake-up pair
            end = getattr(client, name, None)
            if end is not None:
                end.close()


def _vin_for(model_year: int) -> str:
    """A valid VIN of that model year with a random serial number."""
    if not 1980 <= model_year <= 2100:
        raise ConfigError(f"model_year {model_year} is out of range 1980..2100")
    code = _YEAR_CODES[(model_year - 1980) % 30]
    return f"VR3UHZKXZ{code}T{uuid.uuid4().int % 1_000_000:06d}"


class VehicleFactory:
    """``tcusim_vehicle(...)``: a started box on the test's CAN interface, broker and GNSS.

    Each box runs :func:`firmware_sim.runner.run_wall_clock` in a thread of its own; the test
    may read its counters (``box.stats``, ``box.decoder.stats``, ``box.flash.depth``) and talks
    to it through the bus (``tcusim_bus``), as a bench does. :meth:`close` stops every box.
    """

    def __init__(
        self, options: TcusimOptions, can_target: CanTarget, broker_url: str, data: Path
    ) -> None:
        self.options = options
        self.can = can_target
        self.broker_url = broker_url
        self.data = data
        self.boxes: list[Tcu] = []
        self.simulated: dict[str, SimVehicle] = {}  # VIN -> the simulated car, when simulating
        self._stacks: list[contextlib.ExitStack] = []
        self._errors: list[BaseException] = []
        self._gnss_owner: str | None = None

    def __call__(
        self,
        vin: str | None = None,
        *,
        model_year: int | None = None,
        services: Sequence[str] = ("connected_car",),
        simulate: bool = False,
        drive: Drive | None = None,
        mapping: SignalMapping | None = None,
        connect_timeout: float | None = WAIT_S,
        **config: Any,
    ) -> Tcu:
        """Boot a box and start its wall-clock runner; return it once it is connected.

        ``vin`` defaults to a random one of ``model_year`` (default 2017); ``model_year``
        defaults to the VIN's. ``simulate=True`` also starts the simulated car (on the
        virtual interface only; elsewhere the test is skipped) on the same bus and clock,
        driving ``drive`` (default: a ten-minute city drive) and, without ``--gnss-port``,
        writing its GNSS fixes to the box. Other keywords are :class:`TcuConfig` fields.
        ``connect_timeout=None`` does not wait for the broker.
        """
        if simulate and not self.options.virtual:
            pytest.skip(
                "simulate=True puts simulated ECUs on the bus: virtual interface only, "
                f"not {self.options.can_interface}"
            )
        from firmware_sim.config import TcuConfig  # noqa: PLC0415

        settings = {
            "vin": vin or _vin_for(model_year or DEFAULT_MODEL_YEAR),
            "model_year": model_year,
            "services": list(services),
            **config,
        }
        tcu_config = TcuConfig.from_mapping(settings)
        stack = contextlib.ExitStack()
        try:
            box = self._start(stack, tcu_config, simulate, drive, mapping)
        except BaseException:
            stack.close()
            raise
        self._stacks.append(stack)
        self.boxes.append(box)
        uplink = box.uplink
        if connect_timeout is None or uplink is None or uplink.wait_connected(connect_timeout):
            return box
        refused = f": refused ({uplink.refused})" if uplink.refused else ""
        raise InterfaceError(
            f"box {tcu_config.vin} did not connect to {mask_password(self.broker_url)} "
            f"within {connect_timeout:g} s{refused}"
        )

    def _start(
        self,
        stack: contextlib.ExitStack,
        tcu_config: TcuConfig,
        simulate: bool,
        drive: Drive | None,
        mapping: SignalMapping | None,
    ) -> Tcu:

        from can_dbc.decoder import CompiledDecoder  # noqa: PLC0415
        from firmware_sim.box import Tcu  # noqa: PLC0415
        from firmware_sim.clock import WallScheduler  # noqa: PLC0415
        from firmware_sim.config import UplinkConfig  # noqa: PLC0415
        from firmware_sim.gnss import GnssReader, GnssSource  # noqa: PLC0415
        from firmware_sim.sim.drive import city_drive  # noqa: PLC0415
        from firmware_sim.sim.physics import VehicleState  # noqa: PLC0415
        from firmware_sim.sim.vehicle import SimSerial, SimVehicle  # noqa: PLC0415

        vin = tcu_config.vin
        o = self.options
        mapping = mapping or _car_mapping()
        scheduler = WallScheduler()
        bus = self.can.open()
        stack.callback(bus.shutdown)
        sim_gnss = None
        sim = None
        if simulate:
            car_bus = self.can.open()
            stack.callback(car_bus.shutdown)
            if o.gnss_port is None:
                sim_gnss = SimSerial()
                stack.callback(sim_gnss.close)
            sim = SimVehicle(
                mapping,
                VehicleState(),
                drive or city_drive(10.0),
                car_bus,
                scheduler,
                gnss=GnssSource(sim_gnss) if sim_gnss is not None else None,
            )
        gnss = None
        if o.gnss_port is not None:
            if self._gnss_owner is not None:
                raise ConfigError(
                    f"the GNSS port {o.gnss_port} is already read by box {self._gnss_owner}: "
                    "one box a test reads it"
                )
            gnss = GnssReader(o.gnss_port, baudrate=o.gnss_baud)
            gnss.open()
            stack.callback(gnss.close)
            self._gnss_owner = vin
            stack.callback(setattr, self, "_gnss_owner", None)
        elif sim_gnss is not None:
            gnss = GnssReader(sim_gnss)
        box = Tcu(
            tcu_config,
            data_dir=self.data / f"box-{len(self.boxes)}-{vin}",
            decoder=CompiledDecoder.for_mapping(mapping),
            scheduler=scheduler,
            uplink=UplinkConfig(
                broker=parse_broker_url(self.broker_url),
                ca_file=str(o.tls_ca) if o.tls_ca is not None else None,
            ),
            bus=bus,
            gnss=gnss,
        )
        box.boot()
        stack.callback(box.shutdown)
        if sim is not None:
            sim.start()
            self.simulated[vin] = sim
        stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(box, scheduler, stop), name=f"tcusim-box-{vin}", daemon=True
        )
        thread.start()
        stack.callback(self._join, thread, stop)
        return box

    def _run(self, box: Tcu, scheduler: WallScheduler, stop: threading.Event) -> None:
        from firmware_sim.runner import run_wall_clock  # noqa: PLC0415

        try:
            run_wall_clock(box, scheduler, stop=stop)
        except BaseException as exc:
            log.exception("the runner of box %s stopped on an error", box.config.vin)
            self._errors.append(exc)

    @staticmethod
    def _join(thread: threading.Thread, stop: threading.Event) -> None:
        stop.set()
        thread.join(WAIT_S)
        if thread.is_alive():
            raise TcuError(f"{thread.name} did not stop within {WAIT_S:g} s")

    def close(self) -> None:
        """Stop every box's runner, shut the boxes down, close their buses and ports.

        Raises the first error a runner stopped on, so a test whose box failed fails.
        """
        stacks, self._stacks = self._stacks, []
        with contextlib.ExitStack() as all_stacks:
            for stack in stacks:
                all_stacks.push(stack)
        if self._errors:
            error = self._errors[0]
            raise TcuError(f"a box's runner stopped on an error: {error!r}") from error


@functools.cache
def _car_mapping() -> SignalMapping:
    """The project's car network and mapping, loaded once."""
    from can_dbc.network import load_car_network  # noqa: PLC0415

    return load_car_network().mapping


@pytest.fixture
def tcusim_vehicle(
    tcusim_options: TcusimOptions, tcusim_can: CanTarget, tcusim_broker: str, tcusim_data: Path
) -> Iterator[VehicleFactory]:
    """A factory of started boxes: ``tcusim_vehicle(vin=..., model_year=..., services=...,
    simulate=False)``; every box is stopped and shut down when the test ends."""
    factory = VehicleFactory(tcusim_options, tcusim_can, tcusim_broker, tcusim_data)
    try:
        yield factory
    finally:
        factory.close()


class ScenarioFactory:
    """``tcusim_scenario(path_or_scenario, **ScenarioRunner options) -> RunRecord``.

    Runs in simulated time against the session's local broker (never a ``--broker``: a
    scenario's gateway takes the gateway's client id), in a fresh folder of ``tcusim_data``.
    A relative path is taken from pytest's root folder.
    """

    def __init__(self, request: pytest.FixtureRequest, data: Path) -> None:
        self._request = request
        self.data = data
        self.records: list[RunRecord] = []

    def __call__(self, scenario: str | Path | Scenario, **options: Any) -> RunRecord:
        """Run the scenario and return its record (``record.passed``, ``record.expectations``)."""
        from firmware_sim.scenario.model import load_scenario  # noqa: PLC0415
        from firmware_sim.scenario.runner import ScenarioRunner  # noqa: PLC0415

        if isinstance(scenario, str | Path):
            path = Path(scenario)
            if not path.is_absolute():
                path = self._request.config.rootpath / path
            scenario = load_scenario(path)
        options.setdefault("data_dir", self.data / f"scenario-{len(self.records)}")
        if "broker_url" not in options:
            own = any(f.kind == "broker_outage" for f in scenario.faults)
            options["broker_url"] = (
                None if own else self._request.getfixturevalue("tcusim_local_broker")
            )
        record = ScenarioRunner(scenario, **options).run()
        self.records.append(record)
        return record


@pytest.fixture
def tcusim_scenario(request: pytest.FixtureRequest, tcusim_data: Path) -> ScenarioFactory:
    """Runs a scenario file or :class:`Scenario` in simulated time and returns its record."""
    return ScenarioFactory(request, tcusim_data)
