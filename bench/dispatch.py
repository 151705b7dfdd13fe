"""How many queue_task calls per second the storer daemon takes, journal durable.

A real daemon (XML-RPC on loopback, SQLite journal with synchronous=FULL, the
submission's status written atomically) answers queue_task for N distinct saved
submissions from C client threads. Its dispatcher is not started: this measures the
accepting path only (what a burst of uploads before a deadline costs), not testers.

Ends with one line: ``queue_task_per_s=... calls=... clients=... p50_ms=... p95_ms=...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.util import HELLO_C, write_course, zip_bytes  # noqa: E402
from vmchecker import config, rpc, submit  # noqa: E402
from vmchecker.storer.daemon import StorerDaemon  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vmck-bench-dispatch-") as tmp:
        root = Path(tmp)
        course = config.load_course(write_course(root, extra={"assignments": {"defaults": {"min_interval": 0}}}))
        archive = zip_bytes({"hello.c": HELLO_C})
        print(f"storing {args.calls} submissions...", flush=True)
        subs = [submit.submit(course, "1-hello", f"u{i:05d}", archive, skip_time_checks=True)
                for i in range(args.calls)]
        daemon = StorerDaemon(root / "global.yaml", listen="127.0.0.1:0", state_dir=root / "state")
        server = threading.Thread(target=daemon.server.serve_forever, daemon=True)
        server.start()
        client = rpc.Client(f"http://127.0.0.1:{daemon.port}/")
        latencies: list[float] = []
        lock = threading.Lock()

        def work(part: list) -> None:
            for sub in part:
                start = time.perf_counter()
                client.queue_task(course.id, sub.assignment, sub.account, sub.name)
                with lock:
                    latencies.append(time.perf_counter() - start)

        parts = [subs[i::args.clients] for i in range(args.clients)]
        threads = [threading.Thread(target=work, args=(p,)) for p in parts]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        daemon.server.shutdown()
        daemon.server.server_close()
        queued = daemon.journal.counts()
        daemon.journal.close()
        assert sum(queued.values()) == args.calls, queued
        latencies.sort()
        rate = args.calls / elapsed
        p50 = statistics.median(latencies) * 1000
        p95 = latencies[int(len(latencies) * 0.95) - 1] * 1000
        print(f"{args.calls} queue_task calls from {args.clients} clients in {elapsed:.2f} s")
        print(f"queue_task_per_s={rate:.0f} calls={args.calls} clients={args.clients} "
              f"p50_ms={p50:.1f} p95_ms={p95:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
