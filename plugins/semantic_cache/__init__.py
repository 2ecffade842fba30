"""The semantic_cache plugin (plugin.py), its index, guards and sharing (index.py, guards.py,
sharing.py) and its `llmgate cache` commands (commands.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its
commands; the plugin's pydantic, aiohttp and embeddings load only when the plugin does.
"""
