"""PLACEHOLDER: replaced by the Anthropic Messages backend (work in progress)."""
from .base import Backend


class AnthropicBackend(Backend):
    kind = "anthropic"

    async def complete(self, body):
        raise NotImplementedError

    def stream(self, body):
        raise NotImplementedError
