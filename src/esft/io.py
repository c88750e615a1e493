"""Atomic file writes and JSON-lines helpers.

Every artifact is written to a temporary file in the same directory and renamed into place, so a
crash never leaves a half-written output that a later stage (or Snakemake) would take for complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, IO

from esft.errors import EsftError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `path` when closed without error."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_csv(path: str | os.PathLike, df: Any) -> None:
    """A pandas DataFrame as CSV without its index, replacing `path` only once complete."""
    with atomic_open(path) as fh:
        df.to_csv(fh, index=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


@contextmanager
def input_file(path: str | os.PathLike, expected: str) -> Iterator[None]:
    """Turn a missing or unreadable input file into one line naming it and what was expected there.

    Wrap only the reading of a file the user (or an earlier stage) gave: elsewhere an OSError is a bug."""
    try:
        yield
    except FileNotFoundError:
        raise EsftError(f"{path}: no such file (expected {expected})") from None
    except IsADirectoryError:
        raise EsftError(f"{path}: is a directory (expected {expected})") from None
    except UnicodeDecodeError as err:
        raise EsftError(f"{path}: not UTF-8 text at byte {err.start} (expected {expected})") from None


def read_json(path: str | os.PathLike, expected: str = "a JSON file") -> Any:
    with input_file(path, expected), open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise EsftError(f"{path}:{err.lineno}: not valid JSON ({err.msg}; expected {expected})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike, expected: str = "a JSON-lines file") -> list[dict]:
    """The objects of a JSON-lines file, blank lines skipped; a line that is not a JSON object is an error
    naming the file and line."""
    rows = []
    with input_file(path, expected), open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EsftError(f"{path}:{lineno}: not valid JSON ({err.msg}; expected {expected})") from None
            if not isinstance(row, dict):
                raise EsftError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_csv(path: str | os.PathLike, expected: str = "a CSV table"):
    """A pandas DataFrame of a CSV file an earlier stage wrote; missing or empty is one line naming it."""
    import pandas as pd

    with input_file(path, expected):
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise EsftError(f"{path}: empty (expected {expected})") from None
        except pd.errors.ParserError as err:
            raise EsftError(f"{path}: not a CSV table ({str(err).strip()}; expected {expected})") from None


def read_parquet(path: str | os.PathLike, expected: str = "a parquet table"):
    """A pandas DataFrame of a parquet file an earlier stage wrote; missing or not parquet is one line."""
    import pandas as pd
    import pyarrow

    with input_file(path, expected):
        try:
            return pd.read_parquet(path)
        except pyarrow.ArrowInvalid as err:
            raise EsftError(f"{path}: not a parquet file ({err}; expected {expected})") from None


def open_weights(path: str | os.PathLike):
    """`safe_open` of a checkpoint (a context manager): a missing, empty or garbage file is one line naming
    it, not safetensors' "header too small"."""
    from safetensors import SafetensorError, safe_open

    expected = "a weights.safetensors checkpoint"
    if Path(path).is_dir():
        raise EsftError(f"{path}: is a directory (expected {expected})")
    with input_file(path, expected):
        try:
            return safe_open(str(path), "pt")
        except SafetensorError as err:
            raise EsftError(f"{path}: not a safetensors file ({err}; expected {expected})") from None


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Every tensor of a checkpoint file (safetensors' `load_file`, with `open_weights`' errors)."""
    with open_weights(path) as fh:
        return {name: fh.get_tensor(name) for name in fh.keys()}
