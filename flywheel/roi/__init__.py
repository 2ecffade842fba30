"""The roi tool: `llmgate roi` (commands.py) and the estimate it prints (estimate.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its commands.
"""
