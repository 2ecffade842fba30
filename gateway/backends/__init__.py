"""The built-in backend kinds, offered through the same hook a third-party kind would use."""

from ..hookspecs import hookimpl
from .base import Backend, BackendSettings, Timeouts


class BuiltinBackends:
    """openai (any OpenAI-compatible server), anthropic (Messages API), bedrock (Converse)."""

    def __init__(self, settings: dict):
        pass

    @hookimpl
    def register_backend_kinds(self):
        # start-up: the kinds' SDKs (boto3 for bedrock) load with the gateway, not with this package
        from .anthropic import AnthropicBackend
        from .bedrock import BedrockBackend
        from .openai import OpenAIBackend

        return {b.kind: b for b in (OpenAIBackend, AnthropicBackend, BedrockBackend)}


__all__ = ["Backend", "BackendSettings", "Timeouts", "BuiltinBackends"]
