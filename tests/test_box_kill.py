"""The whole box process killed with SIGKILL mid-drive, then started again on the same flash.

The child process runs the simulated car and its box in simulated time (paced, so the kill
lands mid-drive) and reports each sample it journaled. Whatever it reported must reach the
gateway exactly once, through the second process if the first one died holding it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

from contract import conforms

from can_dbc.catalog import default_catalog
from firmware_sim.payload import decode_uplink
from gateway.ingest import GatewayThread
from gateway.store import sample_value

CATALOG = default_catalog()
VIN = "VR3UHZKXZLT000501"  # a 2020 car: an upload every 10 simulated seconds
START_MS = 1_767_340_800_000
WAIT = 30.0

CHILD = textwrap.dedent(
    """
    import sys, time
    from firmware_sim.clock import SimScheduler
    from firmware_sim.config import TcuConfig
    from firmware_sim.core import JournalSamples
    from firmware_sim.sim.drive import city_drive
    from firmware_sim.sim.session import SimulatedCar

    vin, data_dir, broker_url, start_ms, seconds = sys.argv[1:6]

    def report(action):
        if isinstance(action, JournalSamples):
            for s in action.samples:
                print("J", s.signal_id, s.t_ms, s.mantissa, flush=True)

    car = SimulatedCar(TcuConfig(vin=vin, model_year=2020), city_drive(10),
                       SimScheduler(int(start_ms)), data_dir=data_dir, broker_url=broker_url,
                       observers=[report])
    car.start()
    for _ in range(int(seconds)):
        car.run_for(1)
        time.sleep(0.01)  # pace the simulated clock so that a kill lands mid-drive
    for s in car.box.core.pending_samples():  # kept in the flash for a later upload
        print("P", s.signal_id, s.t_ms, s.mantissa, flush=True)
    sys.exit(0 if car.close(drain_timeout=30) else 3)
    """
)


Samples = list[tuple[int, int, int]]


def start_child(
    script: Path, data_dir: Path, broker_url: str, start_ms: int, seconds: int
) -> tuple[subprocess.Popen[str], Samples, Samples, threading.Thread]:
    """Start a box process; it fills the journaled and the still-kept samples it reports."""
    proc = subprocess.Popen(
        [sys.executable, str(script), VIN, str(data_dir), broker_url, str(start_ms), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    reported: Samples = []
    kept: Samples = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, *fields = line.split()
            sid, t, mantissa = (int(x) for x in fields)
            if kind == "J":
                reported.append((sid, t, mantissa))
            else:
                kept.append((sid, t, mantissa))

    reader = threading.Thread(target=read)
    reader.start()
    return proc, reported, kept, reader


def as_values(samples: list[tuple[int, int, int]]) -> Counter[tuple[int, int, float | int]]:
    return Counter((sid, t, sample_value(m, CATALOG.by_id(sid).exp)) for sid, t, m in samples)


def flash_contents(path: Path) -> list[tuple[int, int, int]]:
    """Samples in the dead box's flash: its journal and the uploads it had not seen acked."""
    with sqlite3.connect(path) as db:
        samples = [tuple(r) for r in db.execute("SELECT signal_id, t_ms, mantissa FROM journal")]
        for (raw,) in db.execute("SELECT payload FROM outbox"):
            u = decode_uplink(bytes(raw))
            for s in u.series:
                samples.extend(
                    (s.signal_id, u.base_time_ms + t, m)
                    for t, m in zip(s.times, s.mantissas, strict=True)
                )
    return samples  # type: ignore[return-value]


def test_kill_9_mid_drive_loses_nothing_and_doubles_nothing(tmp_path: Path, broker: object) -> None:
    script = tmp_path / "box.py"
    script.write_text(CHILD)
    data_dir = tmp_path / "box"
    url = broker.url  # type: ignore[attr-defined]
    with GatewayThread(tmp_path / "gateway.sqlite3", url) as gateway:
        first, reported_1, _, reader_1 = start_child(script, data_dir, url, START_MS, 600)
        try:
            assert gateway.wait_until(lambda s: s.payload_count(VIN) >= 6, WAIT)
            # Freeze the box at a moment its flash holds something, and kill it there.
            deadline = time.monotonic() + WAIT
            while True:
                os.kill(first.pid, signal.SIGSTOP)
                if flash_contents(data_dir / "flash.sqlite3") or time.monotonic() > deadline:
                    break
                os.kill(first.pid, signal.SIGCONT)
                time.sleep(0.003)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            reader_1.join(WAIT)
        assert first.returncode == -signal.SIGKILL
        left_in_flash = flash_contents(data_dir / "flash.sqlite3")

        second, reported_2, kept_2, reader_2 = start_child(
            script, data_dir, url, START_MS + 3_600_000, 60
        )
        assert second.wait(120) == 0, "the second boot did not drain its queue"
        reader_2.join(WAIT)

        assert gateway.wait_until(
            lambda s: s.payload_count(VIN) >= 1 + max(p.seq for p in s.payloads(VIN)), WAIT
        )
        store = gateway.reader()
        rows = store.payloads(VIN)
        assert [p.seq for p in rows] == list(range(len(rows))), "a sequence number is missing"
        assert {p.boot for p in rows} == {1, 2}
        assert all(conforms(p.raw) for p in rows), "a payload breaks uplink.cddl"
        at_gateway = Counter((sid, t, v) for sid, t, v in store.samples(VIN))
        store.close()

    assert reported_1, "the first process collected nothing before it was killed"
    assert all(n == 1 for n in at_gateway.values()), "a sample was stored twice"
    # What the killed process reported journaled is at the gateway, once.
    assert not as_values(reported_1) - at_gateway
    # What it left in its flash was delivered by the second process.
    assert left_in_flash and not as_values(left_in_flash) - at_gateway
    # The second process's samples are there too, but for those it keeps for a later upload.
    assert as_values(reported_2) - at_gateway == as_values(kept_2)
