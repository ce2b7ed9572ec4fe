"""How a model gets its data: a runner calls a blocking function and hands back the answer.

Models never query on the GUI thread in the app: :func:`bridge_runner` runs the
function in a worker thread of the runtime (through the one bridge, style.md
item 4) and the callbacks arrive on the GUI thread.  Tests use :func:`run_now`,
which calls everything synchronously, so a model can be tested without a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from app.ui.bridge import Bridge


class Runner(Protocol):
    def __call__(
        self,
        work: Callable[[], Any],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
    ) -> None: ...


def run_now(
    work: Callable[[], Any], on_result: Callable[[Any], None], on_error: Callable[[BaseException], None]
) -> None:
    """Run ``work`` here and now (tests, and work that is known to be instant)."""
    try:
        result = work()
    except Exception as exc:  # handed to the caller, who shows it
        on_error(exc)
        return
    on_result(result)


def bridge_runner(bridge: Bridge) -> Runner:
    """Run blocking work in a thread of the runtime loop; callbacks come back on the GUI thread."""

    def run(
        work: Callable[[], Any], on_result: Callable[[Any], None], on_error: Callable[[BaseException], None]
    ) -> None:
        async def in_thread() -> Any:
            return await asyncio.to_thread(work)

        bridge.run(in_thread(), on_result, on_error)

    return run
