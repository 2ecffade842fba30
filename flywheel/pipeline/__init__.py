"""The flywheel pipeline: from logged traffic to a promoted fine-tuned model, unattended.

plugin.py runs it (the `flywheel` plugin), gate.py is its offline gate and `llmgate replay`,
commands.py the `llmgate models` and `llmgate replay` commands (light to import).
"""
