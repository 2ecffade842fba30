"""PLACEHOLDER: replaced by the Bedrock Converse backend (work in progress)."""
from .base import Backend


class BedrockBackend(Backend):
    kind = "bedrock"

    async def complete(self, body):
        raise NotImplementedError

    def stream(self, body):
        raise NotImplementedError
