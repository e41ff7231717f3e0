"""Participants' text files: every bad input fails with file, line and problem."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.text import (
    STDLIB_TOPICS,
    TextData,
    TextDataError,
    load_text_data,
    stdlib_docstrings,
    write_jsonl,
)

LABELS = ("networking", "mathematics")
LOAD: dict[str, Any] = {"label_names": LABELS, "text_column": "text", "label_column": "label"}


def test_csv_and_jsonl_give_the_same_records_and_hash(tmp_path: Path) -> None:
    csv_file = tmp_path / "a.csv"
    csv_file.write_text(
        'text,label\n"Open a socket, then connect.",networking\n'
        "Return the sine of x.,mathematics\n",
        encoding="utf-8",
    )
    jsonl_file = tmp_path / "b.jsonl"
    jsonl_file.write_text(
        json.dumps({"text": "Open a socket, then connect.", "label": "networking"})
        + "\n\n"  # blank lines are allowed
        + json.dumps({"text": "Return the sine of x.", "label": "mathematics", "id": 7})
        + "\n",
        encoding="utf-8",
    )
    a, b = load_text_data(csv_file, **LOAD), load_text_data(jsonl_file, **LOAD)
    assert a.texts == b.texts == ("Open a socket, then connect.", "Return the sine of x.")
    assert a.labels.tolist() == b.labels.tolist() == [0, 1]
    assert a.sha256() == b.sha256()
    # The label names are part of the manifest: the same file under another label order differs.
    swapped = load_text_data(csv_file, **{**LOAD, "label_names": ("mathematics", "networking")})
    assert swapped.labels.tolist() == [1, 0] and swapped.sha256() != a.sha256()


def test_custom_column_names_and_a_folder_with_one_file(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("body,topic\nhello world,networking\n", encoding="utf-8")
    data = load_text_data(tmp_path, label_names=LABELS, text_column="body", label_column="topic")
    assert data.texts == ("hello world",) and data.labels.tolist() == [0]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "empty.csv: the file is empty"),
        ("blank.jsonl", b"\n  \n", "blank.jsonl: the file is empty"),
        ("header.csv", b"text,label\n", "header.csv: no records after the header"),
        (
            "cols.csv",
            b"body,label\nx,networking\n",
            "cols.csv, line 1: missing column(s) 'text'; the header has 'body', 'label'",
        ),
        (
            "latin1.csv",
            b"text,label\nok,networking\ncaf\xe9,networking\n",
            "latin1.csv, line 3: bytes that are not UTF-8",
        ),
        (
            "label.csv",
            b"text,label\nok,networking\nhm,biology\n",
            "label.csv, line 3: unknown label 'biology'; the policy's labels are "
            "networking, mathematics",
        ),
        ("emptytext.csv", b"text,label\n  ,networking\n", "emptytext.csv, line 2: the text"),
        (
            "fields.csv",
            b"text,label\nok,networking,extra\n",
            "fields.csv, line 2: wrong number of fields",
        ),
        (
            "short.csv",
            b"text,label\nonly-text\n",
            "short.csv, line 2: wrong number of fields",
        ),
        ("bad.jsonl", b'{"text": "a", "label": "networking"}\n{"text": \n', "bad.jsonl, line 2: "),
        ("list.jsonl", b'["a", "networking"]\n', "list.jsonl, line 1: expected a JSON object"),
        ("key.jsonl", b'{"text": "a"}\n', "key.jsonl, line 1: missing key(s) 'label'"),
        (
            "type.jsonl",
            b'{"text": 3, "label": "networking"}\n',
            "type.jsonl, line 1: 'text' must be a string",
        ),
        ("data.txt", b"text,label\n", "data.txt: text data must be a .csv or .jsonl file"),
    ],
)
def test_bad_text_files_name_file_line_and_problem(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TextDataError) as err:
        load_text_data(path, **LOAD)
    assert message in str(err.value)


def test_missing_file_and_ambiguous_folder(tmp_path: Path) -> None:
    with pytest.raises(TextDataError, match=re.escape("nothere.csv: no such file")):
        load_text_data(tmp_path / "nothere.csv", **LOAD)
    with pytest.raises(
        TextDataError, match=re.escape("exactly one .csv or .jsonl file in the folder, found 0")
    ):
        load_text_data(tmp_path, **LOAD)
    (tmp_path / "a.csv").write_text("text,label\nx,networking\n")
    (tmp_path / "b.jsonl").write_text('{"text": "x", "label": "networking"}\n')
    with pytest.raises(TextDataError, match=r"found 2 \(a.csv, b.jsonl\)"):
        load_text_data(tmp_path, **LOAD)


def test_write_jsonl_round_trips_unicode(tmp_path: Path) -> None:
    data = TextData(("naïve café ☕", 'quote " and\nnewline'), np.array([1, 0]), LABELS)
    write_jsonl(tmp_path / "x.jsonl", data, "text", "label")
    back = load_text_data(tmp_path / "x.jsonl", **LOAD)
    assert back.texts == data.texts and back.labels.tolist() == [1, 0]
    assert back.sha256() == data.sha256()


def test_stdlib_corpus_is_real_labelled_docstrings() -> None:
    corpus = stdlib_docstrings()
    assert corpus.label_names == tuple(STDLIB_TOPICS)
    counts = np.bincount(corpus.labels, minlength=len(STDLIB_TOPICS))
    assert len(corpus) > 1000 and counts.min() >= 100 and counts.max() <= 250
    assert len(set(corpus.texts)) == len(corpus)  # no duplicates
    import math
    import socket

    docs = dict(zip(corpus.texts, corpus.labels.tolist(), strict=True))
    socket_doc = " ".join((socket.create_connection.__doc__ or "").strip().split("\n\n")[0].split())
    assert docs[socket_doc] == corpus.label_names.index("networking")
    assert docs[" ".join((math.gcd.__doc__ or "").split("\n\n")[0].split())] == (
        corpus.label_names.index("mathematics")
    )
    assert stdlib_docstrings().sha256() == corpus.sha256()  # deterministic
