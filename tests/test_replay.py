"""Replay of real captures: in simulated time into a box and the gateway, in wall-clock time
onto python-can's virtual bus (SocketCAN vcan0 where the kernel has it), and ``tcusim replay``.
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import can
import cantools
import pytest
from contract import conforms

from can_dbc.capture import read_capture
from can_dbc.catalog import default_catalog
from can_dbc.decoder import CompiledDecoder
from can_dbc.errors import CaptureError
from can_dbc.mapping import load_mapping
from can_dbc.network import NETWORKS_DIR
from firmware_sim import cli
from firmware_sim.box import Tcu
from firmware_sim.clock import SimScheduler
from firmware_sim.config import TcuConfig, UplinkConfig, parse_broker_url
from firmware_sim.errors import ConfigError, LifecycleError
from firmware_sim.payload import Trigger, decode_uplink
from firmware_sim.replay import LOOP_GAP_S, Replayer
from gateway.ingest import GatewayThread

DATA = Path(__file__).parent / "data"
SUBARU_DBC = DATA / "subaru_sample_can_spec.dbc"
SUBARU_LOG = DATA / "subaru_can_sample.log"
TESLA_LOG = DATA / "tesla_candump_Manual_SOC_DogMode_CabinTemp.log"
ASC = DATA / "pycan_logfile.asc"
BLF = DATA / "pycan_test_CanFdMessage64.blf"
TRC = DATA / "pycan_test_CanMessage_V2_1.trc"
CATALOG = default_catalog()
WAIT = 30.0

Frame = tuple[int, bool, bool, bool, bytes]  # id, extended, remote, FD, data


def key(msg: can.Message) -> Frame:
    return (
        msg.arbitration_id,
        msg.is_extended_id,
        msg.is_remote_frame,
        msg.is_fd,
        bytes(msg.data),
    )


def half_gzip(path: Path) -> bytes:
    """The first half of ``path`` gzipped: a .gz cut short."""
    data = gzip.compress(path.read_bytes())
    return data[: len(data) // 2]


def vcan_missing() -> str | None:
    """Why SocketCAN's vcan0 cannot be used here, or None when it can."""
    if not hasattr(socket, "AF_CAN"):
        return "this Python has no AF_CAN: SocketCAN/vcan is not available"
    try:
        with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as s:
            s.bind(("vcan0",))
    except OSError as exc:
        return f"the kernel gives no AF_CAN socket on vcan0 ({exc}): SocketCAN/vcan cannot be used"
    return None


@pytest.fixture(params=["virtual", "socketcan"])
def bench_bus(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(interface, channel): python-can's virtual bus, and vcan0 where the kernel has it."""
    if request.param == "socketcan":
        reason = vcan_missing()
        if reason:
            pytest.skip(reason)
        return "socketcan", "vcan0"
    return "virtual", f"replay-{request.node.name}"


class Collector(can.Listener):
    """Every frame a bus receives; ``enough`` is set once ``target`` have come."""

    def __init__(self, target: int | None = None) -> None:
        self.frames: list[can.Message] = []
        self.target = target
        self.enough = threading.Event()
        self._grew = threading.Condition()

    def on_message_received(self, msg: can.Message) -> None:
        with self._grew:
            self.frames.append(msg)
            self._grew.notify_all()
        if self.target is not None and len(self.frames) >= self.target:
            self.enough.set()

    def wait_for(self, n: int, timeout: float = WAIT) -> list[can.Message]:
        """The frames once ``n`` have come (fails the test if they do not)."""
        with self._grew:
            assert self._grew.wait_for(lambda: len(self.frames) >= n, timeout), (
                f"{len(self.frames)} of {n} frames received"
            )
            return list(self.frames)


@pytest.fixture
def listen() -> Iterator[Callable[..., Collector]]:
    """Open a receiving bus on (interface, channel) with a :class:`Collector` behind it."""
    opened: list[tuple[can.BusABC, can.Notifier]] = []

    def make(interface: str, channel: str, target: int | None = None) -> Collector:
        bus = can.Bus(interface=interface, channel=channel)
        collector = Collector(target)
        opened.append((bus, can.Notifier(bus, [collector], timeout=0.05)))
        return collector

    yield make
    for bus, notifier in opened:
        notifier.stop()
        bus.shutdown()


@pytest.fixture
def sender() -> Iterator[Callable[[str, str], can.BusABC]]:
    """Open a sending bus, shut down after the test."""
    opened: list[can.BusABC] = []

    def make(interface: str, channel: str) -> can.BusABC:
        bus = can.Bus(interface=interface, channel=channel)
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        bus.shutdown()


def sim_replay(path: Path, **options: Any) -> tuple[Replayer, list[tuple[int, can.Message]]]:
    """Replay ``path`` in simulated time from 0 with no bus; (replayer, [(ms, frame)])."""
    replayer = Replayer(path, None, **options)
    scheduler = SimScheduler(0)
    got: list[tuple[int, can.Message]] = []
    replayer.schedule(scheduler, 0, lambda ms, msg: got.append((ms, msg)))
    scheduler.run_until(3_600_000)
    return replayer, got


# -- the Subaru drive into a box, in simulated time -------------------------------------


def _trace(
    frames: list[can.Message], message: str, signal_name: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """(recorded times, values) of one DBC signal, decoded by cantools (not the box's path)."""
    db = cantools.database.load_file(SUBARU_DBC)
    assert isinstance(db, cantools.database.can.Database)
    m = db.get_message_by_name(message)
    times: list[float] = []
    values: list[float] = []
    for f in frames:
        if f.arbitration_id == m.frame_id and not f.is_extended_id:
            decoded = cast(dict[str, float], m.decode(bytes(f.data), decode_choices=False))
            times.append(f.timestamp)
            values.append(decoded[signal_name] * scale)
    return times, values


def test_subaru_drive_replayed_in_simulated_time_reaches_the_gateway_with_its_timing(
    tmp_path: Path, broker: Any
) -> None:
    vin = "JF1GPAA61LH000401"
    frames, _ = read_capture(SUBARU_LOG)
    t0, t_end = frames[0].timestamp, frames[-1].timestamp
    start_ms = int(t0 * 1000)

    def due_ms(t: float) -> int:  # where the replay puts a frame recorded at t
        return start_ms + round((t - t0) * 1000)

    mapping = load_mapping(NETWORKS_DIR / "subaru.yaml", network_paths=[SUBARU_DBC])
    channel = f"replay-subaru-{vin}"
    replay_bus = can.Bus(interface="virtual", channel=channel)
    box_bus = can.Bus(interface="virtual", channel=channel)
    scheduler = SimScheduler(start_ms)
    box = Tcu(
        TcuConfig(vin=vin, model_year=2020),
        data_dir=tmp_path / "box",
        decoder=CompiledDecoder.for_mapping(mapping),
        scheduler=scheduler,
        uplink=UplinkConfig(broker=parse_broker_url(broker.url), reconnect_min_s=0.05),
        bus=box_bus,
    )
    replayer = Replayer(SUBARU_LOG, replay_bus)
    assert replayer.recorded_start() == t0
    try:
        with GatewayThread(tmp_path / "gateway.sqlite3", broker.url) as gateway:
            box.boot()

            def deliver(now_ms: int, _msg: can.Message) -> None:
                box.poll_bus(now_ms)
                box.pump()

            replayer.schedule(scheduler, start_ms, deliver)
            scheduler.run_until(due_ms(t_end))
            stats = replayer.stats
            assert stats.finished
            assert stats.sent == stats.frames_read == len(frames) == 82558
            assert stats.out_of_order == stats.bad_lines == stats.send_errors == 0
            assert (stats.first_timestamp, stats.last_timestamp) == (t0, t_end)
            assert box.stats.frames == len(frames)
            assert box.decoder.stats.errors == 0
            assert box.core is not None
            box.request_upload()
            expected = box.core.next_seq
            assert box.drain(WAIT), "the box's queue did not drain"
            box.shutdown()
            assert gateway.wait_until(lambda s: s.payload_count(vin) >= expected, WAIT)
            store = gateway.reader()
            payloads = store.payloads(vin)
            assert all(conforms(p.raw) for p in payloads), "a payload breaks uplink.cddl"
            triggers = Counter(decode_uplink(p.raw).trigger for p in payloads)
            # A 2020 car uploads every 10 s: nine times in 90.3 s, then the request at the end.
            assert triggers == {Trigger.PERIODIC: 9, Trigger.REQUEST: 1}

            def stored(name: str) -> list[tuple[int, float]]:
                sid = CATALOG.by_name(name).id
                return [(t, float(v)) for _s, t, v in store.samples(vin, sid)]

            speed = stored("Vehicle.Speed")
            rpm = stored("Vehicle.Powertrain.CombustionEngine.Speed")
            steer = stored("Vehicle.Chassis.SteeringWheel.Angle")
            gear = stored("Vehicle.Powertrain.Transmission.CurrentGear")
            store.close()
    finally:
        replay_bus.shutdown()
        box_bus.shutdown()

    # Fast signals: one sample a second, from a second after the first frame to the last.
    duration_s = t_end - t0
    for series in (speed, rpm, steer):
        sample_times = [t for t, _v in series]
        assert sample_times == sorted(sample_times)
        assert 0 < sample_times[0] - t0 * 1000 <= 1000
        assert sample_times[-1] <= due_ms(t_end)
        assert abs(len(series) - duration_s) <= 1
    # Each sample is the value the capture held at that moment (decoded here by cantools):
    # the last frame due before the sample, or the one due in its very millisecond.
    for series, (message, name, scale, step) in [
        (speed, ("ID_D1", "SPEED", 3.6, 0.1)),
        (rpm, ("ID_140", "RPM", 1.0, 1.0)),
        (steer, ("ID_D0", "STEER_ANGLE", 1.0, 0.1)),
    ]:
        times, values = _trace(frames, message, name, scale)
        dues = [due_ms(t) for t in times]
        for t, v in series:
            i = bisect.bisect_left(dues, t)
            assert i > 0, "a sample before the signal's first frame"
            before, at = values[i - 1], values[bisect.bisect_right(dues, t) - 1]
            assert min(abs(v - before), abs(v - at)) <= step / 2 + 1e-9, (name, t, v)
    speeds = [v for _t, v in speed]
    rpms = [v for _t, v in rpm]
    steers = [v for _t, v in steer]
    assert min(speeds) >= 0 and max(speeds) <= 36.0 * 3.6 + 0.05  # 129.6 km/h at the top
    assert max(speeds) >= 120, "the sampled top speed is close to the capture's"
    assert min(rpms) >= 646 and max(rpms) <= 6030
    assert max(rpms) - min(rpms) >= 3000
    assert min(steers) >= -457.3 - 0.05 and max(steers) <= 42.3 + 0.05
    # The gear is sampled on each change, at the millisecond its frame was due.
    times, gears = _trace(frames, "ID_141", "GEAR")
    changes = [
        (due_ms(t), float(g))
        for i, (t, g) in enumerate(zip(times, gears, strict=True))
        if i == 0 or g != gears[i - 1]
    ]
    assert gear == changes
    assert len(changes) > 5 and {g for _t, g in gear} <= set(map(float, range(8)))


# -- wall clock onto a bus ----------------------------------------------------------------


def test_tesla_capture_at_speed_20_arrives_whole_and_in_order(
    bench_bus: tuple[str, str], listen: Callable[..., Collector], sender: Any
) -> None:
    interface, channel = bench_bus
    frames, _ = read_capture(TESLA_LOG)
    collector = listen(interface, channel)
    replayer = Replayer(TESLA_LOG, sender(interface, channel), speed=20)
    stats = replayer.run()
    assert stats.finished and stats.sent == stats.frames_read == len(frames) == 12138
    got = collector.wait_for(len(frames))
    assert [key(m) for m in got] == [key(m) for m in frames]


def test_id_filters_keep_and_exclude(listen: Callable[..., Collector], sender: Any) -> None:
    frames, _ = read_capture(TESLA_LOG)
    ids = Counter(f.arbitration_id for f in frames)
    assert len(ids) == 6
    kept = {0x243, 0x118}
    n_kept = ids[0x243] + ids[0x118]
    collector = listen("virtual", "replay-keep")
    stats = Replayer(TESLA_LOG, sender("virtual", "replay-keep"), speed=None, ids=kept).run()
    assert (stats.sent, stats.filtered) == (n_kept, len(frames) - n_kept)
    got = collector.wait_for(n_kept)
    assert [key(m) for m in got] == [key(f) for f in frames if f.arbitration_id in kept]

    collector = listen("virtual", "replay-exclude")
    bus = sender("virtual", "replay-exclude")
    stats = Replayer(TESLA_LOG, bus, speed=None, exclude=kept).run()
    assert (stats.sent, stats.filtered) == (len(frames) - n_kept, n_kept)
    got = collector.wait_for(len(frames) - n_kept)
    assert [key(m) for m in got] == [key(f) for f in frames if f.arbitration_id not in kept]

    # Both: the ids given, less those excluded; filtered frames keep the capture's timing.
    _replayer, sent = sim_replay(TESLA_LOG, ids=kept, exclude={0x118})
    assert {m.arbitration_id for _ms, m in sent} == {0x243}
    t0 = frames[0].timestamp
    assert [ms for ms, _m in sent] == [
        round((f.timestamp - t0) * 1000) for f in frames if f.arbitration_id == 0x243
    ]


def test_a_gzipped_capture_replays_as_the_plain_one(
    tmp_path: Path, listen: Callable[..., Collector], sender: Any
) -> None:
    gz = tmp_path / "tesla.log.gz"
    with gzip.open(gz, "wb") as out:
        out.write(TESLA_LOG.read_bytes())
    frames, _ = read_capture(TESLA_LOG)
    collector = listen("virtual", "replay-gz")
    stats = Replayer(gz, sender("virtual", "replay-gz"), speed=None).run()
    assert stats.finished and stats.sent == len(frames)
    assert [key(m) for m in collector.wait_for(len(frames))] == [key(f) for f in frames]


def test_asc_error_frames_skipped_remote_and_fd_frames_sent(
    listen: Callable[..., Collector], sender: Any
) -> None:
    frames, _ = read_capture(ASC)
    collector = listen("virtual", "replay-asc")
    stats = Replayer(ASC, sender("virtual", "replay-asc"), speed=None).run()
    assert stats.frames_read == 20
    assert stats.skipped == {"error frame": 4, "invalid: CAN FD does not support remote frames": 1}
    assert stats.sent == 15
    expected = [f for f in frames if not f.is_error_frame and not (f.is_fd and f.is_remote_frame)]
    got = collector.wait_for(15)
    assert [key(m) for m in got] == [key(f) for f in expected]
    assert sum(m.is_remote_frame for m in got) == 3
    fd = [m for m in got if m.is_fd]
    assert [(m.arbitration_id, len(m.data), m.bitrate_switch) for m in fd] == [
        (0x300, 8, True),
        (0x4EE, 64, False),
    ]
    assert sum(m.is_extended_id for m in got) == 8


def test_blf_fd_frames_python_can_reads_as_remote_are_skipped_with_their_reason() -> None:
    replayer, sent = sim_replay(BLF)
    stats = replayer.stats
    assert sent == []
    assert stats.finished and stats.frames_read == 2
    assert stats.skipped == {"invalid: CAN FD does not support remote frames": 2}
    assert (stats.capture.declared_objects, stats.capture.shortfall) == (2, 0)


def test_trc_frames_keep_extended_ids_remote_frames_and_timing() -> None:
    frames, _ = read_capture(TRC)
    replayer, sent = sim_replay(TRC, speed=10)
    assert replayer.stats.sent == 11 and replayer.stats.skipped_total == 0
    assert [key(m) for _ms, m in sent] == [key(f) for f in frames]
    assert [m.arbitration_id for _ms, m in sent if m.is_extended_id] == [0x100] * 7
    assert sent[-1][1].is_remote_frame and sent[-1][1].dlc == 1
    assert all(m.channel is None for _ms, m in sent), "the recorded channel is not sent"
    t0 = frames[0].timestamp
    assert [ms for ms, _m in sent] == [round((f.timestamp - t0) * 100) for f in frames]
    assert sent[-1][0] == 3140  # 31.4 s recorded, ten times faster


# -- loops --------------------------------------------------------------------------------


def test_a_loop_restarts_after_the_last_frame_with_the_offsets_continuing() -> None:
    frames, _ = read_capture(TRC)
    t0, span = frames[0].timestamp, frames[-1].timestamp - frames[0].timestamp
    period = span + span / (len(frames) - 1)  # one mean frame interval after the last
    replayer = Replayer(TRC, None, loop=True)
    scheduler = SimScheduler(0)
    got: list[tuple[int, can.Message]] = []
    replayer.schedule(scheduler, 0, lambda ms, msg: got.append((ms, msg)))
    scheduler.run_until(round(3 * period * 1000) - 1)  # three passes, to just before a fourth
    stats = replayer.stats
    assert len(got) == 33 and stats.loops == 3 and not stats.finished
    assert [key(m) for _ms, m in got] == [key(f) for f in frames] * 3
    expected = [round((n * period + f.timestamp - t0) * 1000) for n in range(3) for f in frames]
    assert [ms for ms, _m in got] == expected
    assert stats.position_s == pytest.approx(2 * period + span)


def test_a_capture_of_one_instant_loops_every_loop_gap(tmp_path: Path) -> None:
    capture = tmp_path / "instant.log"
    capture.write_text("(5.000000) can0 123#01\n(5.000000) can0 124#02\n")
    replayer = Replayer(capture, None, loop=True)
    scheduler = SimScheduler(0)
    got: list[int] = []
    replayer.schedule(scheduler, 0, lambda ms, _msg: got.append(ms))
    scheduler.run_until(round(2 * LOOP_GAP_S * 1000))
    assert got == [0, 0, 1000, 1000, 2000, 2000]


def test_a_loop_at_a_speed_beyond_the_millisecond_still_moves_time_on() -> None:
    replayer = Replayer(TRC, None, loop=True, speed=1e9)
    scheduler = SimScheduler(0)
    got: list[int] = []
    replayer.schedule(scheduler, 0, lambda ms, _msg: got.append(ms))
    scheduler.run_until(2)
    assert got == [0] * 11 + [1] * 11 + [2] * 11
    assert replayer.stats.loops == 3


def test_an_empty_capture_does_not_loop(tmp_path: Path) -> None:
    capture = tmp_path / "empty.log"
    capture.write_text("not a frame\n")
    replayer = Replayer(capture, None, loop=True)
    replayer.schedule(SimScheduler(0), 0)
    stats = replayer.stats
    assert stats.finished and stats.frames_read == 0 and stats.loops == 0
    assert stats.bad_lines == 1 and stats.capture.bad_line_numbers == [1]


def test_a_wall_clock_loop_runs_until_stopped(
    listen: Callable[..., Collector], sender: Any
) -> None:
    collector = listen("virtual", "replay-loop", target=3 * 11 + 1)
    stop = threading.Event()

    def stop_when_enough() -> None:
        if collector.enough.wait(WAIT):
            stop.set()

    waiter = threading.Thread(target=stop_when_enough)
    waiter.start()
    replayer = Replayer(TRC, sender("virtual", "replay-loop"), speed=None, loop=True)
    stats = replayer.run(stop)
    waiter.join()
    assert stop.is_set() and not stats.finished
    assert stats.loops >= 3 and stats.sent >= 34
    frames, _ = read_capture(TRC)
    got = collector.wait_for(34)
    assert [key(m) for m in got[:33]] == [key(f) for f in frames] * 3


def test_a_stop_ends_the_wait_for_a_far_frame(
    tmp_path: Path, listen: Callable[..., Collector], sender: Any
) -> None:
    capture = tmp_path / "gap.log"
    capture.write_text("(0.000000) can0 123#01\n(3600.000000) can0 123#02\n")  # an hour apart
    collector = listen("virtual", "replay-gap", target=1)
    stop = threading.Event()

    def stop_after_the_first() -> None:
        if collector.enough.wait(WAIT):
            stop.set()

    waiter = threading.Thread(target=stop_after_the_first)
    waiter.start()
    stats = Replayer(capture, sender("virtual", "replay-gap")).run(stop)
    waiter.join()
    assert stats.sent == 1 and not stats.finished


def test_progress_is_reported_with_the_live_counts(sender: Any) -> None:
    seen: list[int] = []
    replayer = Replayer(TRC, sender("virtual", "replay-progress"), speed=None)
    stats = replayer.run(progress=lambda s: seen.append(s.sent), progress_every_s=0.0)
    assert seen == list(range(1, 12)) and stats.sent == 11


# -- what a capture or a bus gets wrong ---------------------------------------------------


def test_bad_lines_and_out_of_order_frames_are_counted_and_the_order_kept(
    tmp_path: Path,
) -> None:
    capture = tmp_path / "odd.log"
    capture.write_text(
        "(10.000000) can0 100#01\n"
        "this is no frame\n"
        "(10.500000) can0 101#02\n"
        "(10.200000) can0 102#03\n"  # recorded before the one above
        "(11.000000) can0 103#04\n"
    )
    replayer, sent = sim_replay(capture)
    stats = replayer.stats
    assert [(ms, m.arbitration_id) for ms, m in sent] == [
        (0, 0x100),
        (500, 0x101),
        (500, 0x102),
        (1000, 0x103),
    ]
    assert (stats.bad_lines, stats.capture.bad_line_numbers, stats.out_of_order) == (1, [2], 1)
    assert (stats.first_timestamp, stats.last_timestamp) == (10.0, 11.0)


def test_send_errors_are_counted_not_fatal(sender: Any) -> None:
    bus = sender("virtual", "replay-closed")
    bus.shutdown()  # a closed bus refuses every frame with a CanError
    stats = Replayer(TRC, bus, speed=None).run()
    assert stats.finished and stats.frames_read == 11
    assert stats.send_errors == 11 and stats.sent == 0
    assert "closed" in stats.last_send_error


def test_missing_unknown_and_corrupt_captures_are_capture_errors(
    tmp_path: Path, sender: Any, listen: Callable[..., Collector]
) -> None:
    bus = sender("virtual", "replay-errors")
    with pytest.raises(CaptureError, match="no such capture file") as caught:
        Replayer(tmp_path / "missing.log", bus)
    assert "missing.log" in str(caught.value)
    with pytest.raises(CaptureError, match="unknown capture format"):
        Replayer(tmp_path / "capture.pcap", bus)

    garbage = tmp_path / "garbage.blf"
    garbage.write_bytes(b"not a BLF file at all " * 20)
    replayer = Replayer(garbage, bus, speed=None)
    with pytest.raises(CaptureError, match=r"garbage\.blf"):
        replayer.run()
    assert replayer.stats.sent == 0 and not replayer.stats.finished

    # A .gz cut in half: the frames before the break are sent, then the replay ends.
    broken = tmp_path / "broken.log.gz"
    broken.write_bytes(half_gzip(TESLA_LOG))
    collector = listen("virtual", "replay-errors")
    replayer = Replayer(broken, bus, speed=None)
    with pytest.raises(CaptureError, match=r"broken\.log\.gz"):
        replayer.run()
    assert 0 < replayer.stats.sent < 12138 and not replayer.stats.finished
    assert len(collector.wait_for(replayer.stats.sent)) == replayer.stats.sent

    # In simulated time the error comes out of the scheduler's run.
    replayer = Replayer(broken, None)
    scheduler = SimScheduler(0)
    replayer.schedule(scheduler, 0)
    with pytest.raises(CaptureError, match=r"broken\.log\.gz"):
        scheduler.run_until(60_000)


def test_bad_arguments_and_a_second_replay_are_refused(sender: Any) -> None:
    bus = sender("virtual", "replay-args")
    for speed in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="speed"):
            Replayer(TRC, bus, speed=speed)
    with pytest.raises(ConfigError, match="ids is empty"):
        Replayer(TRC, bus, ids=set())
    with pytest.raises(ConfigError, match="29-bit"):
        Replayer(TRC, bus, exclude={0x2000_0000})
    with pytest.raises(ConfigError, match="needs a speed"):
        Replayer(TRC, None, speed=None).schedule(SimScheduler(0), 0)
    with pytest.raises(ConfigError, match="needs a bus"):
        Replayer(TRC, None).run()
    replayer = Replayer(TRC, bus)
    replayer.schedule(SimScheduler(0), 0)
    with pytest.raises(LifecycleError):
        replayer.run()
    with pytest.raises(LifecycleError):
        replayer.schedule(SimScheduler(0), 0)


# -- tcusim replay ------------------------------------------------------------------------


@pytest.fixture
def tcusim(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``tcusim`` in-process (only the replay subcommand registered); (status, out, err)."""
    monkeypatch.setattr(cli, "_SUBCOMMANDS", ("replay",))

    def run(*argv: str | Path) -> tuple[int, str, str]:
        status = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_cli_replays_onto_an_interface(
    tcusim: Any, bench_bus: tuple[str, str], listen: Callable[..., Collector]
) -> None:
    interface, channel = bench_bus
    frames, _ = read_capture(TESLA_LOG)
    expected = [f for f in frames if f.arbitration_id != 0x243]
    collector = listen(interface, channel)
    argv = ["replay", TESLA_LOG, "--interface", interface, "--channel", channel]
    status, out, err = tcusim(*argv, "--max-speed", "--exclude", "0x243")
    assert (status, err) == (0, "")
    summary = json.loads(out)
    assert out.count("\n") == 1
    assert summary["sent"] == len(expected) and summary["filtered"] == len(frames) - len(expected)
    assert summary["finished"] and summary["loops"] == 0 and summary["bad_lines"] == 0
    assert summary["first_timestamp"] == frames[0].timestamp
    assert summary["last_timestamp"] == frames[-1].timestamp
    assert [key(m) for m in collector.wait_for(len(expected))] == [key(f) for f in expected]


def test_cli_ids_and_speed(tcusim: Any, listen: Callable[..., Collector]) -> None:
    collector = listen("virtual", "replay-cli-ids")
    argv = ["replay", TRC, "--interface", "virtual", "--channel", "replay-cli-ids"]
    status, out, _err = tcusim(*argv, "--speed", "1000", "--id", "0x100,0", "--id", "1796")
    assert status == 0
    summary = json.loads(out)
    assert (summary["sent"], summary["filtered"]) == (11, 0)
    status, out, _err = tcusim(*argv, "--max-speed", "--id", "0x704")
    summary = json.loads(out)
    assert (summary["sent"], summary["filtered"]) == (1, 10)
    got = collector.wait_for(12)
    assert got[-1].arbitration_id == 0x704 and got[-1].is_remote_frame


def test_cli_loop_ends_cleanly_on_sigterm(tcusim: Any, listen: Callable[..., Collector]) -> None:
    collector = listen("virtual", "replay-cli-loop", target=25)
    pid = os.getpid()
    handler = signal.getsignal(signal.SIGTERM)

    def terminate_when_enough() -> None:
        if collector.enough.wait(WAIT):
            os.kill(pid, signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_enough)
    killer.start()
    argv = ["replay", TRC, "--interface", "virtual", "--channel", "replay-cli-loop"]
    status, out, _err = tcusim(*argv, "--max-speed", "--loop")
    killer.join()
    assert status == 0
    summary = json.loads(out)
    assert summary["loops"] >= 2 and not summary["finished"]
    assert signal.getsignal(signal.SIGTERM) == handler, "the handler is given back"


def test_cli_corrupt_capture_prints_the_summary_and_exits_2(tcusim: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.log.gz"
    broken.write_bytes(half_gzip(TESLA_LOG))
    argv = ["replay", broken, "--interface", "virtual", "--channel", "replay-cli-broken"]
    status, out, err = tcusim(*argv, "--max-speed")
    assert status == 2
    summary = json.loads(out)
    assert summary["sent"] > 0 and "broken.log.gz" in summary["aborted"]
    assert err.splitlines() == [f"tcusim: error: {summary['aborted']}"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--speed", "0"], "--speed 0 must be a positive number"),
        (["--speed", "fast"], "--speed 'fast' is not a number"),
        (["--speed", "nan"], "must be a positive number"),
        (["--speed", "2", "--max-speed"], "exclude each other"),
        (["--id", "zz"], "--id 'zz' is not a CAN id"),
        (["--exclude", "0x20000000"], "29-bit"),
        (["--bitrate", "500000"], "--bitrate means nothing on the virtual interface"),
        (["--channel", ""], "needs --interface and --channel"),
    ],
)
def test_cli_bad_options_are_one_error_line(tcusim: Any, options: list[str], message: str) -> None:
    argv = ["replay", TRC, "--interface", "virtual", "--channel", "replay-cli-bad", *options]
    status, out, err = tcusim(*argv)
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("tcusim: error: ")
    assert message in err


def test_cli_missing_capture_and_unknown_interface_are_one_error_line(
    tcusim: Any, tmp_path: Path
) -> None:
    for argv, message in [
        ([tmp_path / "none.log", "--interface", "virtual", "--channel", "x"], "none.log"),
        ([TRC, "--interface", "nosuch", "--channel", "x"], "cannot open CAN interface"),
        ([TRC, "--channel", "x"], "needs --interface"),
    ]:
        status, out, err = tcusim("replay", *argv)
        assert (status, out) == (2, "")
        assert len(err.splitlines()) == 1 and message in err
