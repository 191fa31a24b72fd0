"""Legacy threads: a pool of worker threads sharing one client.

    python examples/legacy_threads.py [URL]

Every ``Client`` method is thread-safe. One client (one connection) serves the whole
pool; each worker blocks in ``send_and_wait`` on its own message while the others go on.
Messages from one thread reach the server in the order that thread sent them.
Without URL it starts wsync's test server (needs ``pip install 'wsync[server]'``).
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import wsync

WORKERS = 8
JOBS = 40


def main(url: str) -> None:
    with wsync.Client(url) as client:

        def job(n: int) -> str:
            # Blocking, like the code of a legacy app: each call waits for its own answer.
            request = f"job {n} from {threading.current_thread().name}"
            response = client.send_and_wait(request, timeout=10)
            assert response.content == request  # an echo server answers with the request
            return response.content

        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="worker") as pool:
            results = list(pool.map(job, range(JOBS)))

        print(f"{len(results)} jobs answered by {WORKERS} threads over one connection")
        print("first:", results[0])
        print("stats:", client.stats())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from wsync.testing import ProtocolServer

        with ProtocolServer() as server:
            main(server.url)
