from __future__ import annotations

import asyncio
import threading

import pytest

from app.runtime import Runtime, RuntimeNotRunning, RuntimeState


def test_runtime_runs_coroutines_on_its_own_named_thread() -> None:
    with Runtime() as rt:
        assert rt.state is RuntimeState.RUNNING

        async def where() -> str:
            return threading.current_thread().name

        assert rt.run(where(), timeout=5) == "controlroom-runtime"
    assert rt.state is RuntimeState.STOPPED


def test_stop_cancels_pending_work_and_joins_the_thread() -> None:
    rt = Runtime()
    rt.start()
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = threading.Event()

    async def mark_then_forever() -> None:
        started.set()
        await forever()

    rt.submit(mark_then_forever())
    assert started.wait(5)
    rt.stop()
    assert cancelled.is_set()
    assert rt.state is RuntimeState.STOPPED
    assert not any(t.name == "controlroom-runtime" for t in threading.enumerate())
    rt.stop()  # a second stop is harmless


def test_submit_to_a_stopped_runtime_is_a_clear_error() -> None:
    rt = Runtime()

    async def nothing() -> None:
        return None

    with pytest.raises(RuntimeNotRunning):
        rt.submit(nothing())


def test_errors_come_back_to_the_caller() -> None:
    with Runtime() as rt:

        async def boom() -> None:
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            rt.run(boom(), timeout=5)
