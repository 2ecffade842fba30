"""The fine-tuning flywheel's offline tools: datasets built from the logged traffic, and whether fine-tuning pays.

Commands, not request-path plugins: each registers its `llmgate` subcommands through the plugin door
(gateway/known_plugins.py), and reads what the plugins stored (the traffic log, the S3 sink, feedback,
the shadow's comparisons) through traffic_source.py. It sits above plugins/, which never imports it.
"""
