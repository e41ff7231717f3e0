"""Page and API latency of ``fedcommons audit serve`` on a large ledger, and its memory.

Grows a SQLite ledger to ``--entries`` entries with ``bench/ledger_throughput.py``'s
builder (participants, datasets, runs, rounds, updates, charges, signed tree
heads), issues a token, starts the real ``fedcommons audit serve`` process on
loopback and sends ``--requests`` GETs to each page and API call from
``--clients`` concurrent keep-alive connections (a small load generator in
this file: ``wrk`` is not installed here). Reports each endpoint's first
(cold) request, its p50/p95 under load, and
the server's resident memory (VmRSS after the load, VmHWM its peak).

Usage::

    python bench/dashboard.py                       # 100,000 entries
    python bench/dashboard.py --entries 20000 --requests 50
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ledger_throughput import LedgerBuilder  # noqa: E402
from record import write_record  # noqa: E402

from fedcommons.startup import free_port  # noqa: E402
from ledger import Ledger  # noqa: E402
from ledger.tokens import issue_token  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dashboard.json"
PATHS = ["/", "/runs", "/runs/1", "/entries/{mid}", "/api/overview", "/api/runs",
         "/api/runs/1", "/api/entries/{mid}"]  # fmt: skip


def _load(port: int, path: str, token: str, requests: int, clients: int) -> list[float]:
    """``requests`` GETs of ``path`` over ``clients`` keep-alive connections; seconds each."""
    times: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    per_client = max(1, requests // clients)

    def client() -> None:
        try:
            one_client()
        except (OSError, RuntimeError, http.client.HTTPException) as err:
            errors.append(err)

    def one_client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(per_client):
            started = time.perf_counter()
            connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status}")
        connection.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return times


def _memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024  # MiB
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'ledger.db'}"
        ledger = Ledger(url)
        started = time.perf_counter()
        LedgerBuilder(ledger, participants=20, rounds_per_run=50).grow_to(args.entries)
        print(f"ledger of {args.entries} entries built in {time.perf_counter() - started:.0f} s")
        with ledger.session() as session:
            token = issue_token(session, "bench", timedelta(hours=1))
        ledger.close()
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "fedcommons.cli", "audit", "serve", "--ledger", url,
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        rows: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    _load(port, "/api/runs", token, 1, 1)
                    break
                except (ConnectionError, OSError, http.client.HTTPException):
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.3)
            memory_idle = _memory(server.pid)
            for template in PATHS:
                path = template.format(mid=args.entries // 2)
                (first,) = _load(port, path, token, 1, 1)  # cold: nothing cached yet
                _load(port, path, token, args.clients, args.clients)  # warm
                times = sorted(_load(port, path, token, args.requests, args.clients))
                row = {
                    "path": path,
                    "requests": len(times),
                    "p50_ms": 1000 * statistics.median(times),
                    "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
                    "max_ms": 1000 * times[-1],
                    "first_ms": 1000 * first,
                }
                rows.append(row)
                print(f"{path:24s} first {row['first_ms']:7.1f} ms  p50 {row['p50_ms']:7.1f} ms  "
                      f"p95 {row['p95_ms']:7.1f} ms")  # fmt: skip
            memory = _memory(server.pid)
            print(f"server memory: idle {memory_idle}, after the load {memory} (MiB)")
        finally:
            server.terminate()
            server.wait(timeout=20)
    write_record(
        args.out,
        entries=args.entries,
        clients=args.clients,
        rows=rows,
        memory_mib={"idle": memory_idle, "after": memory},
    )


if __name__ == "__main__":
    main()
