"""Durable local writing: SQLite on a thread of its own with batched writes (sqlite.py), and the
spill file that keeps records while a database refuses them (spill.py)."""
