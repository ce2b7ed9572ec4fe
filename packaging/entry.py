"""The frozen `controlroom` executable starts here (PyInstaller needs a script, not an entry point)."""

import sys

import app.cli

if __name__ == "__main__":
    sys.exit(app.cli.main())
