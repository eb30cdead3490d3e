"""What tickets cost: CPU per ticket minted and checked, and the bridge's CPU per refused request.

Part 1, in this process (myca_ops.bridge.tickets, as the bridge runs it): CPU per mint, per
redemption of a good ticket, and per refusal of each kind.  Part 2, a real bridge (ticket keys
set, one session): N upgrades of each kind, variants alternating over rounds, and the bridge
process's CPU time per request, side by side with a refusal that checks no ticket at all.

    python bench/ticket_cost.py --requests 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from myca_ops.bridge.tickets import Refusal, Tickets
from myca_ops.lab.processes import bridge

KEY, SITE = "bench-key-" + "b" * 30, "https://myca.example"


def per_op_us(op, n: int) -> float:
    start = time.thread_time()
    for i in range(n):
        op(i)
    return (time.thread_time() - start) * 1e6 / n


def refused(tickets: Tickets, ticket: str) -> None:
    try:
        tickets.redeem(ticket, SITE, None)
    except Refusal:
        return
    raise AssertionError("the ticket was not refused")


def in_process(n: int) -> list[tuple[str, float]]:
    tickets = Tickets((KEY,), 60)
    fresh = [tickets.mint(SITE) for _ in range(n)]
    replayed = tickets.mint(SITE)
    tickets.redeem(replayed, SITE, None)
    head, body, _ = tickets.mint(SITE).split(".")
    altered = f"{head}.{body}.AAAA"
    expired = tickets.mint(SITE, now=time.time() - 600)
    other_key = Tickets(("x" * 40,), 60).mint(SITE)
    rotated = Tickets(("r" * 40, KEY), 60)  # a good ticket checked against the second key
    second = [tickets.mint(SITE) for _ in range(n)]
    return [
        ("mint", per_op_us(lambda i: tickets.mint(SITE), n)),
        ("redeem a good ticket", per_op_us(lambda i: tickets.redeem(fresh[i], SITE, None), n)),
        ("redeem a good ticket by the second key", per_op_us(lambda i: rotated.redeem(second[i], SITE, None), n)),
        ("refuse: replayed", per_op_us(lambda i: refused(tickets, replayed), n)),
        ("refuse: altered signature", per_op_us(lambda i: refused(tickets, altered), n)),
        ("refuse: another key", per_op_us(lambda i: refused(tickets, other_key), n)),
        ("refuse: expired", per_op_us(lambda i: refused(tickets, expired), n)),
        ("refuse: malformed", per_op_us(lambda i: refused(tickets, "not-a-ticket"), n)),
    ]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


async def upgrades(base: str, query: str, origin: str | None, n: int, concurrency: int = 20) -> dict[int, int]:
    """`n` upgrades of /api/chat{query}; the answers by close code or HTTP status."""
    host, port = base.removeprefix("http://").split(":")
    head = f"GET /api/chat{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    head += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    head += f"Origin: {origin}\r\n" if origin else ""
    request = (head + "\r\n").encode()
    answers: dict[int, int] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            status = await reader.readuntil(b"\r\n\r\n")
            code = int(status.split()[1])
            if code == 101:
                frame = await reader.readexactly(4)
                code = int.from_bytes(frame[2:4], "big")
            answers[code] = answers.get(code, 0) + 1
            writer.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return answers


def at_the_bridge(n: int, rounds: int) -> list[tuple[str, float, dict]]:
    tickets = Tickets((KEY,), 60)
    head, body, _ = tickets.mint(SITE).split(".")
    kinds = {
        "no credential, a browser (4401)": ("", SITE),
        "no credential, not a browser (HTTP 401)": ("", None),
        "altered ticket, a browser (4401)": (f"?ticket={head}.{body}.AAAA", SITE),
        "expired ticket, a browser (4401)": (f"?ticket={tickets.mint(SITE, now=time.time() - 600)}", SITE),
    }
    seen: dict[str, list[float]] = {k: [] for k in kinds}
    answers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ticket-cost-") as tmp:
        settings = {"upstream": "ws://127.0.0.1:9/api/chat", "ticket_keys": [KEY], "allowed_origins": [SITE]}
        with bridge(Path(tmp), **settings, max_connections_per_address=10_000) as base:
            pid = bridge_pid(int(base.rsplit(":", 1)[1]))
            for round_ in range(rounds):
                for kind, (query, origin) in kinds.items():
                    print(f"[ticket_cost] round {round_ + 1}: {kind}", file=sys.stderr, flush=True)
                    before = cpu_s(pid)
                    answers[kind] = asyncio.run(upgrades(base, query, origin, n))
                    seen[kind].append((cpu_s(pid) - before) * 1e6 / n)
    return [(kind, statistics.median(values), answers[kind]) for kind, values in seen.items()]


def bridge_pid(port: int) -> int:
    """The bridge process listening on `port` (its command line names its config file by the port)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"bridge-{port}.json".encode() in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    raise RuntimeError(f"no bridge process for port {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'in this process':<44} {'CPU per op':>12}")
    for what, us in in_process(args.requests):
        print(f"{what:<44} {us:>9.1f} us")
    print()
    rows = at_the_bridge(args.requests, args.rounds)
    first = rows[0][1]
    print(f"{'at the bridge':<44} {'CPU per request':>15} {'vs first':>8}  answers")
    for kind, us, answers in rows:
        print(f"{kind:<44} {us:>12.0f} us {us / first:>7.2f}x  {answers}")
    print(f"medians of {args.rounds} rounds of {args.requests} requests per kind; the bridge's own CPU (user + system)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
