"""The reject schedule, heartbeat and fail-safe, through the in-process line (`memory` output
and the GPIO output's `memory` backend). Assertions are on order, slots and loose bounds only;
the timing figures belong to scripts/bench_line.py."""

import time

from edge.outputs import LineIO
from edge.runtime.types import Decision

from tests.line_servers import wait_until


def dec(seq, t_capture, reject, encoder=None, part_id=None):
    return Decision(seq=seq, t_capture=t_capture, wall=time.time(), score=0.9 if reject else 0.1,
                    reject=reject, reason="score" if reject else "ok", encoder=encoder, part_id=part_id)


def line(**over):
    cfg = {"timing": {"mode": "delay", "delay_ms": 60, "pulse_ms": 5}, "heartbeat_ms": 20,
           "failsafe": {"drain_ms": 2000}, "outputs": [{"type": "memory"}]}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = dict(cfg[k], **v)
        else:
            cfg[k] = v
    return LineIO(cfg).start()


def kinds(events):
    return [e["kind"] for e in events]


def test_out_of_order_verdicts_fire_in_their_own_slots():
    io = line()
    mem = io.outputs[0]
    t0 = time.monotonic()
    slots = {i: t0 + 0.02 * i for i in range(6)}
    for i, t in slots.items():
        io.expect(i, t)
    for i in (5, 3, 1, 4, 0, 2):                      # verdicts finish out of order
        io.decide(dec(i, slots[i], reject=i % 2 == 1))
    io.close()                                         # drains every pending slot first
    assert mem.pulse_seqs == [1, 3, 5]
    pulses = mem.pulses()
    assert len(pulses) == 3
    for (on, off), seq in zip(pulses, [1, 3, 5]):
        assert on >= slots[seq] + 0.060 - 1e-6            # never early
        assert off is not None and off - on >= 0.005 - 1e-6
    assert io.events() == []
    s = io.stats()
    assert (s["verdicts"], s["rejects"], s["pulses"], s["pending"]) == (6, 3, 3, 0)


def test_missing_verdict_is_rejected_by_default_and_a_late_verdict_is_recorded():
    io = line()
    mem = io.outputs[0]
    t0 = time.monotonic()
    io.expect(7, t0, part_id="A7")
    assert wait_until(lambda: mem.pulse_seqs == [7], 2)
    io.decide(dec(7, t0, reject=False))                # arrives after its slot
    ev = io.events()
    assert kinds(ev) == ["failsafe_reject", "late"]
    assert ev[0]["reason"] == "failsafe:no_verdict" and ev[0]["part_id"] == "A7"
    assert ev[1]["late_ms"] > 0 and ev[1]["action"].startswith("reject:failsafe")
    codes = [v["code"] for v in mem.verdicts]
    assert codes == [3, 4]                              # fail-safe reject, then the late verdict
    io.close()


def test_on_late_ignore_lets_the_part_pass_but_records_it():
    io = line(failsafe={"on_late": "ignore"})
    t0 = time.monotonic()
    io.expect(1, t0)
    assert wait_until(lambda: io.stats()["pending"] == 0, 2)
    io.close()
    assert io.outputs[0].pulse_seqs == []
    assert kinds(io.events()) == ["missed"]


def test_overlapping_pulses_merge_into_one_longer_pulse():
    io = line(timing={"pulse_ms": 30})
    t0 = time.monotonic()
    for i in range(3):
        io.expect(i, t0 + 0.005 * i)
        io.decide(dec(i, t0 + 0.005 * i, True))
    io.close()
    (on, off), = io.outputs[0].pulses()                 # one pulse, held to the last one's end
    assert on >= t0 + 0.060 - 1e-6 and off >= t0 + 0.010 + 0.060 + 0.030 - 1e-6


def test_fault_stops_heartbeat_raises_fault_and_rejects_all_pending():
    io = line(timing={"delay_ms": 150})
    mem = io.outputs[0]
    assert wait_until(lambda: len(mem.heartbeats) >= 3, 2)
    t0 = time.monotonic()
    for i in range(4):
        io.expect(i, t0 + 0.01 * i)
    io.decide(dec(0, t0, reject=False))                 # inspected: follows its verdict
    io.fault("source", "camera unplugged")
    n = len(mem.heartbeats)
    assert wait_until(lambda: io.stats()["pending"] == 0, 3)
    time.sleep(0.1)                                      # five heartbeat periods: none may come
    assert len(mem.heartbeats) <= n + 1                  # (one may have been in flight)
    assert mem.statuses[-1]["fault"] and mem.statuses[-1]["reject_all"] and not mem.statuses[-1]["ready"]
    assert mem.pulse_seqs == [1, 2, 3]
    ev = io.events()
    assert kinds(ev) == ["fault"] + ["failsafe_reject"] * 3
    assert ev[0]["fault"] == "source" and ev[0]["detail"] == "camera unplugged"
    assert ev[1]["reason"] == "failsafe:source"
    io.healthy()
    assert wait_until(lambda: len(mem.heartbeats) >= n + 3, 2)
    assert mem.statuses[-1]["ready"] and not mem.statuses[-1]["fault"]
    assert kinds(io.events()) == ["healthy"]
    io.close()


def test_stop_line_and_gpio_lines_through_the_memory_backend():
    io = line(failsafe={"on_fault": "stop_line"},
              outputs=[{"type": "gpio", "backend": "memory", "reject_line": 17, "heartbeat_line": 18,
                        "fault_line": 19, "stop_line": 20, "ready_line": 21}])
    pins = io.outputs[0].pins
    assert wait_until(lambda: len([e for e in pins.edges if e[1] == 18]) >= 3, 2)
    assert pins.values[21] is True and not pins.values.get(19)
    t0 = time.monotonic()
    io.expect(1, t0)
    io.decide(dec(1, t0, True))
    assert wait_until(lambda: len(pins.pulses(17)) == 1 and pins.pulses(17)[0][1], 2)
    io.fault("engine", "CUDA error")
    assert pins.values[19] and pins.values[20] and not pins.values[21]
    io.close()
    assert all(v is False for v in pins.values.values())


def test_encoder_mode_fires_at_the_pulse_count():
    io = line(timing={"mode": "encoder", "pulses": 100, "encoder": {"source": "memory", "bits": 16}})
    enc, mem = io.encoder, io.outputs[0]
    enc.value = 65500                                   # the counter wraps during the test
    io.expect(1, time.monotonic())                      # encoder read at capture: 65500
    io.expect(2, time.monotonic(), encoder=65530)
    io.decide(dec(2, 0, True))
    io.decide(dec(1, 0, True))
    enc.advance(99)
    time.sleep(0.02)
    assert mem.pulse_seqs == []
    enc.advance(1)                                      # 65600 mod 65536 = 64: part 1 is there
    assert wait_until(lambda: mem.pulse_seqs == [1], 2)
    enc.advance(30)
    assert wait_until(lambda: mem.pulse_seqs == [1, 2], 2)
    assert [v["encoder"] for v in mem.verdicts] == [65530, 65500]
    io.close()


def test_plc_mode_only_writes_verdicts_and_a_deadline_failsafe():
    io = line(timing={"mode": "plc", "delay_ms": 40})
    mem = io.outputs[0]
    t0 = time.monotonic()
    io.expect(1, t0, encoder=1234, part_id="P1")
    io.expect(2, t0, encoder=1300, part_id="P2")
    io.decide(dec(1, t0, True, encoder=1234, part_id="P1"))
    assert wait_until(lambda: io.stats()["pending"] == 0, 2)
    io.close()
    assert mem.pulse_seqs == []                          # the PLC owns delay and pulse
    assert [(v["part_id"], v["encoder"], v["code"]) for v in mem.verdicts] == [("P1", 1234, 2), ("P2", 1300, 3)]


def test_close_drains_pending_pulses():
    io = line(timing={"delay_ms": 50})
    t0 = time.monotonic()
    io.expect(1, t0)
    io.decide(dec(1, t0, True))
    io.close()
    (on, off), = io.outputs[0].pulses()
    assert off is not None
    assert io.outputs[0].statuses[-1]["ready"] is False


def test_a_part_booked_after_its_slot_is_late_not_pulsed():
    io = line()
    old = time.monotonic() - 1.0
    io.expect(1, old)                                  # expect() came a second late
    io.decide(dec(2, old, True))                       # a verdict for a part never expected
    io.close()
    assert io.outputs[0].pulse_seqs == []
    ev = io.events()
    assert [(e["kind"], e["seq"]) for e in ev] == [("late", 1), ("late", 2), ("late", 2)]
    assert io.outputs[0].verdicts[-1]["code"] == 4
