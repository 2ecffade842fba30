"""The usage plugin (plugin.py), where its aggregates live (store.py), how a query is read and grouped
(report.py) and its `llmgate usage` command (commands.py). Empty on purpose: the command line imports
commands.py, and with it this file."""
