"""Append-only JSONL logs of per-item outputs, safe to kill at any moment and resume.

Each output is one line, written with a single `write` and made durable with flush + fsync before
the next batch starts, so a killed run loses at most the batch in flight. On reading, a last line
without its newline (the process died mid-write) is ignored; before appending again, the writer
cuts the file back to its last complete line so that no new record is glued onto a fragment.
Records are keyed by item id; when an id appears twice (only possible when files are combined by
hand), the first one wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from evals.errors import RecordFormatError


def complete_length(data: bytes) -> int:
    """Length of the prefix of `data` made of whole, newline-terminated lines."""
    return data.rfind(b"\n") + 1


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of one log in file order; a cut last line is skipped, other damage raises."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records = []
    for number, line in enumerate(data[: complete_length(data)].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordFormatError(f"{path}:{number}: damaged record ({err})") from err
        if not isinstance(record, dict) or "id" not in record:
            raise RecordFormatError(f"{path}:{number}: record without an 'id'")
        records.append(record)
    return records


def read_record_dir(directory: str | Path, pattern: str = "*.jsonl") -> dict[str, dict[str, Any]]:
    """Records of every log in a folder, by id, first occurrence winning (files in name order)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(directory).glob(pattern)):
        for record in read_records(path):
            found.setdefault(str(record["id"]), record)
    return found


class RecordWriter:
    """Appends records to one log, each batch flushed and fsynced before `append` returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_partial_tail()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _cut_partial_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = complete_length(data)
        if keep != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self._handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_records_atomically(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write a whole log through a temporary file and a rename, so readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
