"""The budgets plugin (plugin.py), its spend counters (counters.py) and its `llmgate budgets` commands
(commands.py). Empty on purpose: the command line imports commands.py, and with it this file."""
