"""Write a benchmark's rows with the command, date and machine that produced them."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["write_record"]


def write_record(path: Path, **payload: Any) -> None:
    """Write ``payload`` as JSON to ``path``, headed by the command line, UTC date and machine."""
    script = Path(sys.argv[0])
    record = {
        "command": " ".join(["python", f"bench/{script.name}", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
