"""'Verify now': the full ``audit verify`` in a background thread, one job at a time."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import Ledger, LedgerError
from ledger.verify import LedgerTampered, verify_ledger

__all__ = ["VerifyJobs"]


@dataclass
class Job:
    id: str
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    state: str = "running"  # running, intact, not-intact, error
    detail: str = ""
    result: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.monotonic()
        return {"id": self.id, "state": self.state, "detail": self.detail,
                "seconds": round(end - self.started, 2), "result": self.result}  # fmt: skip


class VerifyJobs:
    """Runs ``verify_ledger`` on ``ledger`` in a thread; a running job is shared, not repeated."""

    def __init__(self, ledger: Ledger, operator: Ed25519PublicKey | None) -> None:
        self.ledger, self.operator = ledger, operator
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self) -> Job:
        with self._lock:
            for job in self._jobs.values():
                if job.state == "running":
                    return job
            job = Job(uuid.uuid4().hex)
            self._jobs = {k: v for k, v in list(self._jobs.items())[-9:]}  # keep the last ten
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def _run(self, job: Job) -> None:
        try:
            report = verify_ledger(self.ledger, self.operator, workers=1)
            job.result = asdict(report)
            job.state, job.detail = "intact", report.summary()
        except LedgerTampered as err:
            job.state, job.detail = "not-intact", str(err)
            job.result = {"seq": err.seq, "kind": err.kind, "detail": err.detail}
        except LedgerError as err:
            job.state, job.detail = "error", str(err)
        except Exception as err:
            job.state, job.detail = "error", f"{type(err).__name__}: {err}"
        finally:
            for secret in {self.ledger.url, self.ledger.shown}:  # no URL reaches a page
                job.detail = job.detail.replace(secret, "the ledger")
            job.finished = time.monotonic()
