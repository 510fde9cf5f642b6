"""Modbus TCP against a real pymodbus server on loopback acting as the PLC: the register and
coil map, start-up errors, a source killed mid-run, and a PLC that goes away and comes back."""

import queue
import subprocess
import sys
import threading
import time

import pytest

from edge.common.errors import EdgeError
from edge.outputs import LineIO
from edge.runtime.types import Decision

from tests.line_servers import free_port, modbus_plc, wait_until  # noqa: F401 (fixture)

REG, COIL = 100, 10          # the map's bases on the test PLC
HB, STATUS, SEQ, CODE, SCORE, PART, ENC, VCOUNT, RCOUNT, FAULT = 0, 1, 2, 4, 5, 6, 8, 10, 11, 12
READY, FAULT_BIT, REJECT, STOP, REJECT_ALL = range(5)


def cfg(port, **timing):
    return {"timing": dict({"mode": "delay", "delay_ms": 60, "pulse_ms": 10}, **timing),
            "heartbeat_ms": 40, "reconnect": {"min_ms": 50, "max_ms": 200},
            "failsafe": {"drain_ms": 2000},
            "outputs": [{"type": "memory"},
                        {"type": "modbus", "host": "127.0.0.1", "port": port, "reg_base": REG,
                         "coil_base": COIL}]}


def dec(seq, tc, reject, **kw):
    return Decision(seq=seq, t_capture=tc, wall=time.time(), score=0.75 if reject else 0.05,
                    reject=reject, reason="score" if reject else "ok", **kw)


def u32(regs, i):
    return (regs[i] << 16) | regs[i + 1]


def test_map_on_the_plc(modbus_plc):
    plc = modbus_plc
    io = LineIO(cfg(plc.port)).start()
    assert wait_until(lambda: plc.read_regs(REG + HB, 1)[0] >= 2, 3)
    assert plc.read_coils(COIL, 5) == [True, False, False, False, False]
    t0 = time.monotonic()
    io.expect(70001, t0, encoder=123456, part_id="4242")
    io.decide(dec(70001, t0, True, encoder=123456, part_id="4242"))
    io.expect(70002, t0 + 0.01)
    io.decide(dec(70002, t0 + 0.01, False))
    io.close()
    r = plc.read_regs(REG, 16)
    assert u32(r, SEQ) == 70002 and r[CODE] == 1 and u32(r, PART) == 70002   # non-numeric id: seq
    assert r[VCOUNT] == 2 and r[RCOUNT] == 1 and r[SCORE] == 50
    # the reject pulse reached the PLC: coil on, then off
    seen = [v for _, v in plc.coil_writes(COIL + REJECT)]
    assert seen.count(True) == 1 and False in seen[seen.index(True):]
    writes = [w for w in plc.writes if w[1] == 16 and w[2] == REG + SEQ]
    first = writes[0][3]
    assert (first[0] << 16 | first[1]) == 70001 and (first[4] << 16 | first[5]) == 4242
    assert (first[6] << 16 | first[7]) == 123456 and first[2] == 2 and first[3] == 750
    assert plc.read_coils(COIL + READY, 1) == [False]                              # closed: not ready


def test_unreachable_plc_is_an_error_naming_host_and_port():
    port = free_port()
    io = LineIO(cfg(port))
    with pytest.raises(EdgeError, match=rf"line.outputs\[1\]: cannot reach Modbus PLC at 127.0.0.1:{port}"):
        io.start()


def test_wrong_register_range_is_an_error_at_start(modbus_plc):
    c = cfg(modbus_plc.port)
    c["outputs"][1]["reg_base"] = 1000                      # the PLC serves 0..199
    with pytest.raises(EdgeError, match=r"line.outputs\[1\].reg_base: the PLC at .* refuses holding "
                                        r"registers 1000..1015"):
        LineIO(c).start()
    c["outputs"][1].update(reg_base=0, coil_base=30)        # coils 0..31
    with pytest.raises(EdgeError, match=r"coil_base: .* refuses coils 30..34"):
        LineIO(c).start()


SOURCE = "import time\nfor i in range(100000):\n    print(i, flush=True)\n    time.sleep(0.02)\n"


def test_source_killed_mid_run_faults_stops_heartbeat_and_failsafe_rejects_on_the_plc(modbus_plc):
    """A stand-in pipeline: a source process prints frame numbers, the engine decides each
    frame 50 ms after capture. Killing the source drops the frames still queued for the
    engine, and the pipeline reports the fault; the PLC must see it all."""
    plc = modbus_plc
    io = LineIO(cfg(plc.port, delay_ms=120)).start()
    work, decided, stop = queue.Queue(), [], threading.Event()
    src = subprocess.Popen([sys.executable, "-u", "-c", SOURCE], stdout=subprocess.PIPE, text=True)

    def reader():
        for ln in src.stdout:
            seq, t = int(ln), time.monotonic()
            io.expect(seq, t)
            work.put((seq, t))
        while not work.empty():                        # the source is gone: drop the queue
            work.get_nowait()
        io.fault("source", f"source exited with {src.wait()}")
        stop.set()

    def engine():
        while not stop.is_set():
            try:
                seq, t = work.get(timeout=0.05)
            except queue.Empty:
                continue
            time.sleep(max(0.0, t + 0.05 - time.monotonic()))
            if not stop.is_set():
                io.decide(dec(seq, t, seq % 3 == 0))
                decided.append(seq)

    threads = [threading.Thread(target=f, daemon=True) for f in (reader, engine)]
    for th in threads:
        th.start()
    assert wait_until(lambda: len(decided) >= 8, 5)
    hb_before = plc.read_regs(REG + HB, 1)[0]
    assert hb_before > 0
    src.kill()
    assert stop.wait(5)
    for th in threads:
        th.join(5)
    assert wait_until(lambda: io.stats()["pending"] == 0, 3)
    time.sleep(0.05)
    st = io.stats()
    fs = st["failsafe_rejects"]
    assert fs >= 1, st                                 # the frames the engine never saw
    regs = wait_until(lambda: (lambda r: r if r[CODE] == 3 else None)(plc.read_regs(REG, 16)), 2)
    assert regs, plc.read_regs(REG, 16)
    hb = regs[HB]
    time.sleep(0.2)                                    # five heartbeat periods
    assert plc.read_regs(REG + HB, 1)[0] == hb         # the heartbeat has stopped
    assert plc.read_coils(COIL, 5) == [False, True, False, False, True]   # fault + reject_all
    assert regs[FAULT] == 1 and regs[STATUS] == 0b10010
    n_rej = len([s for s in decided if s % 3 == 0])
    assert regs[RCOUNT] == n_rej + fs
    ons = [v for _, v in plc.coil_writes(COIL + REJECT) if v]
    assert len(ons) >= 1                               # pulses reached the PLC (may merge)
    kinds = [e["kind"] for e in io.events()]
    assert "fault" in kinds and kinds.count("failsafe_reject") == fs
    io.close()


def test_plc_that_goes_away_is_reconnected_and_the_gap_recorded(modbus_plc):
    plc = modbus_plc
    io = LineIO(cfg(plc.port)).start()
    mem = io.outputs[0]
    assert wait_until(lambda: plc.read_regs(REG + HB, 1)[0] >= 1, 3)
    plc.stop()
    t0 = time.monotonic()
    for i in range(10):                                 # verdicts keep coming during the gap
        io.expect(i, t0 + 0.02 * i)
        io.decide(dec(i, t0 + 0.02 * i, i == 9, part_id=str(500 + i)))
        time.sleep(0.02)
    assert wait_until(lambda: io.stats()["gaps"] >= 1, 3)
    plc.start()                                         # back, with its memory wiped
    ev = []
    assert wait_until(lambda: ev.extend(io.events()) or "reconnected" in [e["kind"] for e in ev], 5)
    kinds = [e["kind"] for e in ev]
    assert kinds.index("plc_gap") < kinds.index("reconnected")
    gap = ev[kinds.index("plc_gap")]
    assert gap["output"] == "modbus[1]" and gap["address"] == f"127.0.0.1:{plc.port}"
    assert ev[kinds.index("reconnected")]["gap_s"] > 0
    assert len(mem.verdicts) == 10                     # every verdict still went out and was logged
    assert io.stats()["verdicts"] == 10
    r = plc.read_regs(REG, 16)                          # the state was rewritten on reconnect
    assert u32(r, SEQ) == 9 and u32(r, PART) == 509 and r[CODE] == 2 and r[VCOUNT] == 10
    assert plc.read_coils(COIL + READY, 1) == [True]
    assert wait_until(lambda: plc.read_regs(REG + HB, 1)[0] > r[HB], 2)
    io.close()


def test_registers_only_plc_gets_the_bits_in_the_status_word(modbus_plc):
    plc = modbus_plc
    c = cfg(plc.port)
    c["outputs"][1].update(coils=False, coil_base=0)
    io = LineIO(c).start()
    t0 = time.monotonic()
    io.expect(1, t0)
    io.decide(dec(1, t0, True))
    io.close()
    words = [w[3][0] for w in plc.writes if w[1] == 16 and w[2] == REG + STATUS]
    assert 0b101 in words and words[-1] == 0          # ready+reject during the pulse, then off
    assert not [w for w in plc.writes if w[1] in (5, 15)]
