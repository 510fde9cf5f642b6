"""Line-output figures: reject timing error (actual minus scheduled fire time) in delay mode
with the in-process line, and write latency to a loopback Modbus server, both at 30 verdicts
per second while other processes keep the CPU busy with numpy matmuls (a stand-in for
inference). Prints the figures; it is not a test.

    .venv/bin/python -m scripts.bench_line [--seconds 15] [--rate 30] [--load N] [--rt 0]
"""

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import random
import socket
import statistics
import time

import numpy as np


def _burn(stop):
    os.environ["OMP_NUM_THREADS"] = "1"
    a = np.random.rand(256, 256).astype(np.float32)
    while not stop.is_set():
        for _ in range(20):
            a = (a @ a) * 1e-3 + 0.5


def _plc(port, ready, rt):
    """A loopback Modbus server in its own process. A PLC is its own device with its own CPU,
    so with --rt it runs at real-time priority: the figure is then the box's side of the
    write (client, kernel loopback), not the stand-in PLC losing its CPU to the load."""
    if rt:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt))
        except OSError:
            pass
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    from pymodbus import datastore as ds
    from pymodbus.server import ModbusTcpServer
    dev_cls = getattr(ds, "ModbusDeviceContext", None) or getattr(ds, "ModbusSlaveContext")
    blk = ds.ModbusSequentialDataBlock
    ctx = ds.ModbusServerContext(dev_cls(co=blk(1, [False] * 64), hr=blk(1, [0] * 256)), single=True)

    async def main():
        srv = ModbusTcpServer(ctx, address=("127.0.0.1", port))
        await srv.serve_forever(background=True)
        ready.set()
        await asyncio.Event().wait()
    asyncio.run(main())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drive(io, seconds, rate, rng):
    """A stand-in pipeline: captures at `rate`, verdicts 15-90 ms later, out of order, every
    part a reject so that every slot fires a pulse. Returns {seq: scheduled fire time}."""
    events, slots, seq = [], {}, 0
    t_next = time.monotonic() + 0.2
    end = t_next + seconds
    from edge.runtime.types import Decision
    while True:
        now = time.monotonic()
        if t_next <= now and t_next < end:
            io.expect(seq, t_next)
            slots[seq] = t_next + io.delay_s
            events.append((t_next + rng.uniform(0.015, 0.090), seq, t_next))
            seq += 1
            t_next += 1.0 / rate
        events.sort()
        while events and events[0][0] <= now:
            _, s, tc = events.pop(0)
            io.decide(Decision(seq=s, t_capture=tc, wall=time.time(), score=0.9, reject=True,
                               reason="score"))
        if t_next >= end and not events:
            return slots
        wake = min([t_next] + [e[0] for e in events[:1]])
        time.sleep(max(0.0, wake - time.monotonic()))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def line_ms(name, xs):
    xs = [x * 1000 for x in xs]
    return (f"{name:<44} n={len(xs):<5d} median {statistics.median(xs):7.3f} ms   "
            f"p99 {pct(xs, 99):7.3f} ms   max {max(xs):7.3f} ms")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    ap.add_argument("--rate", type=float, default=30.0, help="verdicts per second")
    ap.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes")
    ap.add_argument("--delay-ms", type=float, default=120.0)
    ap.add_argument("--spin-ms", type=float, default=None, help="override timing.spin_ms")
    ap.add_argument("--rt", type=int, default=10,
                    help="timing.rt_priority: SCHED_FIFO priority of the scheduler (0: normal)")
    a = ap.parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    from edge.outputs import LineIO

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(a.load)]
    port, ready = _free_port(), ctx.Event()
    plc = ctx.Process(target=_plc, args=(port, ready, a.rt), daemon=True)
    plc.start()
    for p in burners:
        p.start()
    try:
        if not ready.wait(20):
            raise SystemExit("the loopback Modbus server did not start")
        time.sleep(1.0)                                     # let the load settle
        print(f"bench_line: {a.rate:g} verdicts/s for {a.seconds:g} s per run, {a.load} busy numpy "
              f"processes on {os.cpu_count()} CPUs, delay {a.delay_ms:g} ms, pulse 5 ms, "
              f"scheduler and stand-in PLC priority {'SCHED_FIFO ' + str(a.rt) if a.rt else 'normal'}")
        rng = random.Random(1)
        spin = {} if a.spin_ms is None else {"spin_ms": a.spin_ms}

        # 1. timing error, delay mode, in-process line
        io = LineIO({"timing": {"mode": "delay", "delay_ms": a.delay_ms, "pulse_ms": 5, "rt_priority": a.rt, **spin},
                     "heartbeat_ms": 500, "outputs": [{"type": "memory"}]}).start()
        slots = _drive(io, a.seconds, a.rate, rng)
        io.close()
        mem = io.outputs[0]
        ons = [t for t, _ in mem.pulses()]
        errs = [on - slots[s] for on, s in zip(ons, mem.pulse_seqs)]
        assert len(errs) == len(slots), (len(errs), len(slots))
        print(line_ms("reject timing error (edge - scheduled), memory", errs))
        print(f"{'':<44} early fires: {sum(e < 0 for e in errs)}; late events: {io.stats()['late']}")

        # 2. Modbus write latency under the same load (plus the in-process line for timing)
        io = LineIO({"timing": {"mode": "delay", "delay_ms": a.delay_ms, "pulse_ms": 5, "rt_priority": a.rt, **spin},
                     "heartbeat_ms": 500,
                     "outputs": [{"type": "memory"}, {"type": "modbus", "host": "127.0.0.1", "port": port}]}).start()
        slots = _drive(io, a.seconds, a.rate, rng)
        io.close()
        mb = io.outputs[1]
        n_verdicts = io.stats()["verdicts"]
        print(line_ms("Modbus write (one request, round trip)", list(mb.latency)))
        print(line_ms("Modbus submit -> written (queue + write)", list(mb.delay)))
        print(f"{'':<44} {len(mb.latency)} requests for {n_verdicts} verdicts (+pulse edges, heartbeats);"
              f" dropped {mb.dropped}")
        mem = io.outputs[0]
        errs = [on - slots[s] for (on, _), s in zip(mem.pulses(), mem.pulse_seqs)]
        print(line_ms("reject timing error with Modbus also on", errs))
        print("targets: p99 timing error < 2 ms; p99 Modbus write < 5 ms")
    finally:
        stop.set()
        for p in burners:
            p.join(5)
        plc.terminate()
        plc.join(5)


if __name__ == "__main__":
    main()
