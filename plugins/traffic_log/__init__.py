"""The traffic_log plugin (plugin.py) and its `llmgate traffic` commands (commands.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its
commands; the plugin's pydantic and aiohttp load only when the plugin does.
"""
