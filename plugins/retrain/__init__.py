"""The retrain plugin (plugin.py), its providers (providers.py), the retrain_trigger plugin (trigger.py)
and the `llmgate retrain` commands (commands.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its
commands; the plugins' pydantic and the providers load only when a plugin or a command runs.
"""
