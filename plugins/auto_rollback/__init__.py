"""The auto_rollback plugin (plugin.py), its windows and analysis (windows.py, analysis.py) and its
`llmgate schedule` commands (commands.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its
commands; the plugin's pydantic and aiohttp load only when the plugin does.
"""
