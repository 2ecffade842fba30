"""The rollout plugin (plugin.py), its snapshot file (snapshot.py) and its `llmgate rollout`,
`rollback` and `promote` commands (commands.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its
commands; the plugin's pydantic and aiohttp load only when the plugin does.
"""
