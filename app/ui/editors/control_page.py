"""What the control-object editors (Routing, Budgets) share: reading the store and the in-app
gateway, telling the result, a refused save, and an audited delete.

A mixin for a page that has ``KIND`` (``"route"`` or ``"budget"``), ``save_bar``, ``banner``,
``result``, ``status_message``, ``confirm``, ``record`` (with ``name`` and ``revision``), ``timer``,
``_runner``, ``_store_getter``, ``_gateway_getter``, ``_busy``, ``_loaded_state`` and ``refresh``.
"""

from __future__ import annotations

import getpass
import time
from typing import Any

from app.core.config import ControlConfig
from app.ui.models import routes_model as rm
from app.ui.models.runner import Runner
from storage.queries.control import StaleRevision


class ControlObjectPage:
    KIND: str = ""

    # -- the store and the gateway in this app -------------------------------------------------
    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        page: Any = self
        page._runner = runner
        page._store_getter = store if callable(store) and not hasattr(store, "engine") else (lambda: store)
        if gateway is not None:
            page._gateway_getter = (
                gateway if callable(gateway) and not hasattr(gateway, "state") else (lambda: gateway)
            )
        page.refresh()
        page.timer.start()

    def _gateway_config(self) -> ControlConfig | None:
        """The in-app gateway's own config when it runs on one (not the store): shown read-only."""
        state = getattr(self._gateway_getter(), "state", None)  # type: ignore[attr-defined]
        if state is not None and getattr(state, "source", "") == "config":
            return state.config  # type: ignore[no-any-return]
        return None

    def _tell(self, text: str) -> None:
        page: Any = self
        page.result.setText(text)
        page.status_message.emit(text)

    # -- saving and deleting ---------------------------------------------------------------------
    def _on_save_error(self, exc: BaseException) -> None:
        page: Any = self
        page._busy = False
        if isinstance(exc, StaleRevision):
            page.banner.show_message(f"Not saved: {exc}.", "error", "Reload")
        elif isinstance(exc, rm.SaveRefused):
            page.banner.show_message(
                "Not saved: with this change the store's configuration would not load in the gateways:\n• "
                + "\n• ".join(exc.problems)
            )
        else:
            page.banner.show_message(f"Not saved: {exc}")
        page.result.setText("")

    def delete_consequence(self, name: str) -> str:
        """What deleting ``name`` does, said in the confirmation (each page says it for its kind)."""
        raise NotImplementedError

    def delete(self) -> None:
        """Delete the loaded object: a reason first, then a confirmation, then one audited transaction."""
        page: Any = self
        rec = page.record
        if rec is None or rec.revision is None or page._busy:
            return
        reason = page.save_bar.required_reason("say why you delete it: the reason goes in the audit log")
        if reason is None:
            return
        kind = self.KIND
        if not page.confirm(
            f"Delete {kind}?", f"Delete {kind} {rec.name}? {self.delete_consequence(rec.name)}", "Delete"
        ):
            return
        store = page._store_getter()
        if page._runner is None or store is None:
            return
        engine, actor, revision = store.engine, getpass.getuser(), rec.revision
        page._busy = True

        def work() -> None:
            rm.delete_row(engine, kind, rec.name, expected_revision=revision, actor=actor, reason=reason)

        def done(_: Any) -> None:
            page._busy = False
            page.save_bar.reason.clear()
            self._tell(f"Deleted {kind} {rec.name} at {time.strftime('%H:%M:%S')}.")
            page.record = None
            page._loaded_state = None
            page.refresh()

        page._runner(work, done, self._on_save_error)
