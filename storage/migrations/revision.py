"""Draft a new migration: ``python -m storage.migrations.revision "what changes"``.

Autogenerates against a scratch SQLite store brought to the current head, names
the revision with the next number (0002, 0003, ...), and prints the new file.
Autogenerate is a draft: read it, fix it, and test it on both backends.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from storage.engine import _alembic_config, create_store_engine, migrate


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].strip():
        print('usage: python -m storage.migrations.revision "what changes"', file=sys.stderr)
        return 2
    scripts = ScriptDirectory.from_config(_alembic_config())
    numbers = [int(s.revision) for s in scripts.walk_revisions() if s.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_store_engine(f"sqlite:///{Path(tmp) / 'scratch.sqlite3'}")
        try:
            if numbers:
                migrate(engine)
            with engine.begin() as conn:
                config = _alembic_config(conn)
                config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
                script = command.revision(config, message=argv[0], autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    print(getattr(script, "path", script))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
