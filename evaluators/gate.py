"""The offline gate's default thresholds.

A module of their own: the command's --min-* defaults (offline_commands.py, light to import) and
the Gate itself (offline.py) read them here, so neither imports the other.
"""

MIN_WIN_RATE = 0.7
MIN_LOWER_BOUND = 0.5
MIN_JUDGED = 0.8
