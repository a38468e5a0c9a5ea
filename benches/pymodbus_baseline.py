#!/usr/bin/env python3
"""pymodbus baseline for `cargo bench --bench modbus`.

Does what the Rust side does: one AsyncModbusTcpClient, sequential reads of
COUNT holding registers from ADDR on UNIT, for SECONDS, then prints one JSON line
{"reads": n, "seconds": s, "reads_per_s": r, "pymodbus": version}. Any failed
read is an error (exit 1): a baseline that silently counts errors is no baseline.
"""
import argparse
import asyncio
import json
import sys
import time

import pymodbus
from pymodbus.client import AsyncModbusTcpClient


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--addr", type=int, default=0)
    ap.add_argument("--count", type=int, default=125)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--expect-first", type=int, default=None,
                    help="value the first register must hold (checks we read the right block)")
    a = ap.parse_args()

    client = AsyncModbusTcpClient(a.host, port=a.port, timeout=2, retries=0)
    if not await client.connect():
        print(f"pymodbus: cannot connect to {a.host}:{a.port}", file=sys.stderr)
        return 1
    try:
        # One checked read before timing, as the Rust side does.
        rr = await client.read_holding_registers(a.addr, count=a.count, device_id=a.unit)
        if rr.isError() or len(rr.registers) != a.count:
            print(f"pymodbus: bad warm-up read: {rr}", file=sys.stderr)
            return 1
        if a.expect_first is not None and rr.registers[0] != a.expect_first:
            print(f"pymodbus: first register {rr.registers[0]}, expected {a.expect_first}",
                  file=sys.stderr)
            return 1
        n = 0
        start = time.perf_counter()
        deadline = start + a.seconds
        while True:
            rr = await client.read_holding_registers(a.addr, count=a.count, device_id=a.unit)
            if rr.isError() or len(rr.registers) != a.count:
                print(f"pymodbus: read {n} failed: {rr}", file=sys.stderr)
                return 1
            n += 1
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    print(json.dumps({"reads": n, "seconds": elapsed, "reads_per_s": n / elapsed,
                      "pymodbus": pymodbus.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
