"""The shadow plugin (plugin.py) and its `llmgate shadow report` command (commands.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its
commands; the plugin's pydantic and aiohttp load only when the plugin does.
"""
