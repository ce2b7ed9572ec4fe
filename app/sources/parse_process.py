"""Reading files in a parser process: bulk ingest on both cores.

``controlroom ingest`` of a large file is CPU-bound in two halves of about
equal size: reading and checking the JSON lines, and writing the rows
(binding them, SQLite's own work, rollups).  One Python process can only do
them one after the other (the GIL), so :func:`read_files_in_child` runs the
first half in a forked child: it reads the files with :func:`read_file` and
computes each row batch's rollups (:func:`storage.queries.rollups.rollup_of_rows`),
and the parent only rebuilds the rows and writes them through the pipeline
(``tests/bench/test_bench_ingest.py`` measures both halves).

The parent stays the one writer: positions, rows, rollups and quarantine are
committed together as before, so a crash of either process loses nothing
committed and duplicates nothing.  Rows cross as ``marshal`` data, the
fastest format CPython reads back (1.0-1.3 us a row against 1.3-1.6 for
msgpack and pickle, measured); rejected records, positions and rollups as pickle.

Only where ``fork`` is the platform's way (Linux): the child must start in
milliseconds, with the parent's modules already imported, and macOS and
Windows spawn a fresh interpreter instead.  Elsewhere :func:`parallel_available`
is false and the files are read in the caller's thread, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Generator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app.sources.base import Batch
from app.sources.formats import LineFormat
from app.sources.jsonl import read_file
from app.sources.pipeline import RowBatch, pack_rows
from storage.queries.rollups import rollup_of_rows

#: Files smaller than this in all are read in the caller's thread: a fork is not worth it.
PARALLEL_MIN_BYTES = 8 << 20

# Message kinds, child -> parent.
_ROWS, _BATCH, _ERROR, _DONE, _CRASH = "rows", "batch", "error", "done", "crash"


def parallel_available() -> bool:
    """True where a parser process can be forked (Linux)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _encode(batch: Batch) -> bytes:
    if isinstance(batch, RowBatch):
        try:
            rows = pack_rows(batch.rows)
        except ValueError:  # a value marshal does not take (never from our reader): pickle it all
            pass
        else:
            try:
                rollup = rollup_of_rows(batch.rows) if batch.rows else None
            except Exception:  # rows the writer will refuse or sum itself: it recomputes from what it stores
                rollup = None
            return pickle.dumps(
                (_ROWS, rows, len(batch.rows), batch.rejected, batch.positions, rollup), protocol=5
            )
    return pickle.dumps((_BATCH, batch), protocol=5)


def _child(
    conn: Connection,
    *,
    paths: Sequence[Path],
    fmt: LineFormat | str | None,
    batch_lines: int,
    max_line_bytes: int,
    parent: int,
) -> None:
    """The parser process: every file's batches, in order, then ``done``; never returns."""
    # Ctrl-C is the parent's to handle: it stops reading, and this process ends on the closed pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    # Nothing to say on the parent's terminal (failures go through the pipe), and its output
    # pipes must close when the parent dies, not when this process notices.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    gc.disable()  # batches hold no reference cycles; the process lives for one ingest
    code = 0
    try:
        for path in paths:
            try:
                for batch in read_file(path, fmt, batch_lines=batch_lines, max_line_bytes=max_line_bytes):
                    conn.send_bytes(_encode(batch))
            except (OSError, ValueError) as exc:  # unreadable file, unknown format, bad mapping file
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                conn.send_bytes(pickle.dumps((_ERROR, str(path), why)))
        conn.send_bytes(pickle.dumps((_DONE,)))
    except (BrokenPipeError, ConnectionResetError):  # the parent stopped reading
        code = 1
    except BaseException:
        code = 1
        with contextlib.suppress(OSError):
            conn.send_bytes(pickle.dumps((_CRASH, traceback.format_exc())))
    finally:
        with contextlib.suppress(OSError):
            conn.close()
        # No atexit handlers, no finalizers: they belong to the parent (its store, its threads).
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux's PR_SET_PDEATHSIG), e.g. killed mid-ingest."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


class ParserProcessFailed(RuntimeError):
    """The parser process died or raised: a bug, reported with the child's traceback."""


def read_files_in_child(
    paths: Sequence[Path],
    fmt: LineFormat | str | None,
    *,
    batch_lines: int,
    max_line_bytes: int,
) -> Generator[Batch | str, None, None]:
    """Every batch of every file, in :func:`app.sources.jsonl.read_file`'s order; ``"PATH: why"`` for a file that fails.

    Row batches also carry their rollups.  Closing the iterator early stops
    the child.  Raises :class:`ParserProcessFailed` when the child dies.
    """
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child,
        args=(send,),
        kwargs={
            "paths": list(paths),
            "fmt": fmt,
            "batch_lines": batch_lines,
            "max_line_bytes": max_line_bytes,
            "parent": os.getpid(),
        },
        name="controlroom-ingest-parser",
        daemon=True,
    )
    proc.start()
    send.close()
    try:
        while True:
            try:
                message: tuple[Any, ...] = pickle.loads(recv.recv_bytes())
            except EOFError:
                proc.join(5)
                raise ParserProcessFailed(
                    f"the parser process ended early (exit code {proc.exitcode})"
                ) from None
            kind = message[0]
            if kind == _ROWS:
                _, rows, n, rejected, positions, rollup = message
                yield RowBatch.packed(rows, n, rejected, positions, rollup)
            elif kind == _BATCH:
                yield message[1]
            elif kind == _ERROR:
                yield f"{message[1]}: {message[2]}"
            elif kind == _DONE:
                return
            else:
                raise ParserProcessFailed(f"the parser process failed:\n{message[1]}")
    finally:
        recv.close()
        proc.join(5)
        if proc.is_alive():  # pragma: no cover - it ends on the closed pipe
            proc.kill()
            proc.join()


__all__ = ["PARALLEL_MIN_BYTES", "ParserProcessFailed", "parallel_available", "read_files_in_child"]
