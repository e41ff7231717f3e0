"""Labelled text for the BERT path: participants' files and the embedded corpus.

A participant points its client at a CSV or JSONL file (or a folder holding
exactly one) with a text column and a label column. The label *names* are
fixed by the policy, so every institution maps them to the same class
indices. Every problem is reported with the file, the line and what is
wrong, before any round starts.

The embedded demo corpus is real text that ships with every Python: the
docstrings of standard-library modules, classes and functions, labelled by
the topic area of the module they document (see :data:`STDLIB_TOPICS`).
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import inspect
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from common.errors import UserError

__all__ = [
    "STDLIB_TOPICS",
    "TextData",
    "TextDataError",
    "load_text_data",
    "stdlib_docstrings",
    "write_jsonl",
]

TEXT_SUFFIXES = (".csv", ".jsonl")


class TextDataError(UserError, ValueError):
    """A text data file is missing, malformed or does not match the policy."""


@dataclass(frozen=True)
class TextData:
    """Texts with integer labels in ``[0, len(label_names))``."""

    texts: tuple[str, ...]
    labels: NDArray[np.int64]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: NDArray[np.int64]) -> TextData:
        return TextData(
            tuple(self.texts[int(i)] for i in index), self.labels[index], self.label_names
        )

    def sha256(self) -> str:
        """Content hash (label names, then each label and text): the dataset's manifest key."""
        digest = hashlib.sha256()
        digest.update(json.dumps(list(self.label_names)).encode())
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(json.dumps([self.label_names[int(label)], text]).encode() + b"\n")
        return digest.hexdigest()


def load_text_data(
    path: str | Path, *, label_names: Sequence[str], text_column: str, label_column: str
) -> TextData:
    """Read and validate a participant's labelled text.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` file (header row naming the columns), a ``.jsonl`` file
        (one JSON object per line), or a folder holding exactly one of them.
    label_names : sequence of str
        The policy's label set; label ``label_names[i]`` becomes class ``i``.
    text_column, label_column : str
        Column (CSV) or key (JSONL) names.

    Raises
    ------
    TextDataError
        Naming the file, the line (1-based, as an editor shows it) and the
        problem: missing file or columns, empty file, bytes that are not
        UTF-8, invalid JSON, an unknown label or an empty text.
    """
    file = _resolve(Path(path))
    raw = file.read_bytes()
    text = _decode(file, raw)
    if not text.strip():
        raise TextDataError(f"{file}: the file is empty")
    index = {name: i for i, name in enumerate(label_names)}
    rows = (
        _csv_rows(file, text, text_column, label_column)
        if file.suffix == ".csv"
        else (_jsonl_rows(file, text, text_column, label_column))
    )
    texts: list[str] = []
    labels: list[int] = []
    for line, body, label in rows:
        if label not in index:
            raise TextDataError(
                f"{file}, line {line}: unknown label {label!r}; the policy's labels are "
                + ", ".join(label_names)
            )
        if not body.strip():
            raise TextDataError(f"{file}, line {line}: the text in {text_column!r} is empty")
        texts.append(body)
        labels.append(index[label])
    if not texts:
        raise TextDataError(f"{file}: no records after the header")
    return TextData(tuple(texts), np.asarray(labels, dtype=np.int64), tuple(label_names))


def _resolve(path: Path) -> Path:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in TEXT_SUFFIXES and p.is_file())
        if len(found) != 1:
            raise TextDataError(
                f"{path}: expected exactly one .csv or .jsonl file in the folder, "
                f"found {len(found)}" + (f" ({', '.join(p.name for p in found)})" if found else "")
            )
        return found[0]
    if not path.exists():
        raise TextDataError(f"{path}: no such file")
    if path.suffix not in TEXT_SUFFIXES:
        raise TextDataError(f"{path}: text data must be a .csv or .jsonl file")
    return path


def _decode(file: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TextDataError(
            f"{file}, line {line}: bytes that are not UTF-8 ({raw[err.start : err.end]!r}); "
            "save the file as UTF-8"
        ) from None


def _csv_rows(
    file: Path, text: str, text_column: str, label_column: str
) -> list[tuple[int, str, str]]:
    # The file is read whole already, so no field can be longer than it: lift
    # csv's 128 KiB field limit to that (over-long texts are truncated later,
    # at tokenization), and put the process-wide limit back afterwards.
    previous = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        return _csv_records(file, text, text_column, label_column)
    except csv.Error as err:
        raise TextDataError(f"{file}: not a readable CSV file ({err})") from None
    finally:
        csv.field_size_limit(previous)


def _csv_records(
    file: Path, text: str, text_column: str, label_column: str
) -> list[tuple[int, str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in (text_column, label_column) if c not in header]
    if missing:
        raise TextDataError(
            f"{file}, line 1: missing column(s) {', '.join(map(repr, missing))}; "
            f"the header has {', '.join(map(repr, header))}"
        )
    rows = []
    for record in reader:
        line = reader.line_num
        if None in record or any(record.get(c) is None for c in (text_column, label_column)):
            raise TextDataError(f"{file}, line {line}: wrong number of fields")
        rows.append((line, record[text_column], record[label_column].strip()))
    return rows


def _jsonl_rows(
    file: Path, text: str, text_column: str, label_column: str
) -> list[tuple[int, str, str]]:
    rows = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as err:
            raise TextDataError(f"{file}, line {line}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise TextDataError(f"{file}, line {line}: expected a JSON object")
        missing = [c for c in (text_column, label_column) if c not in record]
        if missing:
            keys = ", ".join(map(repr, missing))
            raise TextDataError(f"{file}, line {line}: missing key(s) {keys}")
        body, label = record[text_column], record[label_column]
        if not isinstance(body, str):
            raise TextDataError(f"{file}, line {line}: {text_column!r} must be a string")
        if not isinstance(label, str | int) or isinstance(label, bool):
            raise TextDataError(f"{file}, line {line}: {label_column!r} must be a string")
        rows.append((line, body, str(label).strip()))
    return rows


def write_jsonl(path: Path, data: TextData, text_column: str, label_column: str) -> None:
    """Write ``data`` as JSONL with label names (the format participants supply)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for body, label in zip(data.texts, data.labels, strict=True):
            record = {text_column: body, label_column: data.label_names[int(label)]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


STDLIB_TOPICS: dict[str, tuple[str, ...]] = {
    "networking": (
        "socket", "ssl", "http.client", "http.server", "http.cookiejar", "urllib.request",
        "urllib.parse", "smtplib", "ftplib", "imaplib", "poplib", "socketserver", "ipaddress",
        "xmlrpc.client", "xmlrpc.server",
    ),
    "text-processing": (
        "string", "re", "textwrap", "difflib", "unicodedata", "codecs", "html", "html.parser",
        "locale", "gettext", "shlex", "stringprep",
    ),
    "file-system": (
        "os.path", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "stat",
        "zipfile", "tarfile", "fileinput", "linecache",
    ),
    "mathematics": (
        "math", "cmath", "decimal", "fractions", "statistics", "random", "numbers", "bisect",
        "heapq",
    ),
    "concurrency": (
        "threading", "multiprocessing.pool", "multiprocessing.process",
        "multiprocessing.connection", "concurrent.futures", "asyncio.tasks", "asyncio.events",
        "asyncio.queues", "asyncio.locks", "queue", "sched", "subprocess", "selectors",
    ),
    "data-formats": (
        "json", "csv", "pickle", "sqlite3", "configparser", "plistlib", "xml.etree.ElementTree",
        "xml.dom.minidom", "base64", "binascii", "struct", "marshal",
    ),
}  # fmt: skip
"""Topic area -> standard-library modules whose docstrings carry that label."""

_BUILTIN_MODULES = ("math", "cmath", "unicodedata", "binascii", "marshal")


def stdlib_docstrings(max_per_label: int = 250, min_chars: int = 20) -> TextData:
    """The embedded text corpus: first paragraphs of standard-library docstrings.

    For every module in :data:`STDLIB_TOPICS`, the module's own docstring and
    those of its public classes, methods and functions, labelled with the
    module's topic area. Duplicates (within and across modules) are dropped,
    and each label keeps at most ``max_per_label`` texts (chosen evenly over
    its modules, so no single module dominates). Deterministic for a given
    Python version.
    """
    label_names = tuple(STDLIB_TOPICS)
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[int] = []
    for label, modules in enumerate(STDLIB_TOPICS.values()):
        per_module = [_module_docstrings(name, seen, min_chars) for name in modules]
        chosen: list[str] = []
        while len(chosen) < max_per_label and any(per_module):
            for docs in per_module:  # round-robin over the modules
                if docs and len(chosen) < max_per_label:
                    chosen.append(docs.pop(0))
        texts.extend(chosen)
        labels.extend([label] * len(chosen))
    return TextData(tuple(texts), np.asarray(labels, dtype=np.int64), label_names)


def _module_docstrings(name: str, seen: set[str], min_chars: int) -> list[str]:
    module = importlib.import_module(name)
    found: list[str] = []

    def add(obj: object) -> None:
        doc = inspect.getdoc(obj)
        if not doc:
            return
        paragraph = " ".join(doc.strip().split("\n\n")[0].split())
        if len(paragraph) >= min_chars and paragraph not in seen:
            seen.add(paragraph)
            found.append(paragraph)

    add(module)
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or inspect.ismodule(obj):
            continue
        own = getattr(obj, "__module__", None) == module.__name__ or (
            inspect.isbuiltin(obj) and module.__name__ in _BUILTIN_MODULES
        )
        if not own:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            add(obj)
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_") and inspect.isroutine(member):
                    add(member)
    return found
