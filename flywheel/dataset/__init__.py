"""The dataset tool: `llmgate dataset build|validate` (commands.py), the builder (builder.py), the
providers' file formats (formats.py) and near-duplicate search (near_duplicates.py).

Empty on purpose: the command line imports commands.py, and with it this file, to list its commands.
"""
