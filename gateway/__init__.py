"""llmgate: an OpenAI-compatible gateway whose features are plugins."""
