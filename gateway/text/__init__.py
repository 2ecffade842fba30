"""Text tools any layer may use: sentence embeddings (loading, and building the int8 model), PII scrubbing."""
