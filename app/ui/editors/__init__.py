"""Widgets shared by the editors (routing, budgets, ...): a field that shows its own problem,
a banner for problems that belong to no one field (or a stale save, with Reload), and the save
bar that asks for the reason every audited change needs."""

from app.ui.editors.export import export_config, export_table, write_table_csv
from app.ui.editors.fields import FieldError, ProblemBanner, SaveBar, ask_confirmation, mark_invalid

__all__ = [
    "FieldError",
    "ProblemBanner",
    "SaveBar",
    "ask_confirmation",
    "export_config",
    "export_table",
    "mark_invalid",
    "write_table_csv",
]
