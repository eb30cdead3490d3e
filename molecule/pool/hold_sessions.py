"""Through the bridge: hold every slot of the pool; a caller more waits in HAProxy's queue and
is served when one hangs up; one more, with every slot held past the queue time, is refused.

    python hold_sessions.py URL TOKEN SLOTS QUEUE_SECONDS     (prints JSON)
"""

import asyncio
import json
import sys
import time

from myca_ops.voice.probe import Refused, chat_session

URL, TOKEN, SLOTS, QUEUE_S = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])


async def caller(answered: asyncio.Event, hang_up: asyncio.Event, out: dict) -> None:
    """Open a session and hold it until `hang_up`; `out` gets the wait and, if refused, the close."""
    t0 = time.perf_counter()
    try:
        async with chat_session(URL, timeout=QUEUE_S + 10, token=TOKEN):
            out.update(waited_s=round(time.perf_counter() - t0, 2), served=True)
            answered.set()
            await hang_up.wait()
    except Refused as exc:
        out.update(waited_s=round(time.perf_counter() - t0, 2), served=False, close_code=exc.code, reason=exc.reason)
        answered.set()


async def main() -> dict:
    held = [(asyncio.Event(), asyncio.Event(), {}) for _ in range(SLOTS)]
    tasks = [asyncio.create_task(caller(*h)) for h in held]
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a, _, _ in held)), 60)

    extra = (asyncio.Event(), asyncio.Event(), {})  # one more than the slots: queued
    tasks.append(asyncio.create_task(caller(*extra)))
    await asyncio.sleep(1.0)
    queued = not extra[0].is_set()
    held[0][1].set()  # the first caller hangs up: its slot goes to the one waiting
    await asyncio.wait_for(extra[0].wait(), QUEUE_S + 10)

    late = (asyncio.Event(), asyncio.Event(), {})  # every slot held again: waits past the queue time
    tasks.append(asyncio.create_task(caller(*late)))
    await asyncio.wait_for(late[0].wait(), QUEUE_S + 10)
    for _, hang_up, _ in [*held, extra, late]:
        hang_up.set()
    await asyncio.gather(*tasks)
    return {
        "held": [out for _, _, out in held],
        "queued_while_full": queued,
        "queued": extra[2],
        "past_the_queue": late[2],
    }


print(json.dumps(asyncio.run(main())))
