"""Table models for the pages (style.md item 3): one ``QAbstractTableModel`` per list the operator reads.

Each model takes plain functions for its data, so tests drive it synchronously
with a real store and no window.
"""
