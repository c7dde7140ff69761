"""A second OS process for the concurrency tests: appends exchanges to one session.

    python tests/_writer.py URL SESSION_ID NAME COUNT

Starts a repository on URL, prints ``ready``, waits for a line on stdin (so that the test can
release several writers at the same moment), then appends COUNT exchanges ``NAME-i`` /
``NAME-i-answer`` (i = 0 .. COUNT-1) to SESSION_ID and prints ``done``.
"""

from __future__ import annotations

import asyncio
import sys

from convostore import SessionRepository, StoreConfig


async def main(url: str, session_id: str, name: str, count: int) -> None:
    repository = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0))
    async with repository:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for i in range(count):
            await repository.add_turn(session_id, f"{name}-{i}", f"{name}-{i}-answer")
    print("done", flush=True)


if __name__ == "__main__":
    url, session_id, name, count = sys.argv[1:5]
    asyncio.run(main(url, session_id, name, int(count)))
