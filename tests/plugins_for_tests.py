"""Plugins the tests load by import path, each showing one part of the hook contract."""

import asyncio

from gateway.chat import completion, usage
from gateway.errors import RateLimited
from gateway.hookspecs import hookimpl


class Answerer:
    """Answers requests whose last message is 'cached?' itself (a cache hit, say)."""

    def __init__(self, settings):
        self.reply = settings.get("reply", "from the plugin")

    @hookimpl
    async def before_route(self, ctx):
        if ctx.body["messages"][-1]["content"] == "cached?":
            return completion(
                "chatcmpl-plugin", "plugin", {"role": "assistant", "content": self.reply}, "stop", usage(1, 3)
            )


class Chooser:
    """Sends users whose name starts with 'c' to the backend named in its settings."""

    def __init__(self, settings):
        self.backend = settings["backend"]

    @hookimpl
    def choose_variant(self, ctx):
        return self.backend if (ctx.body.get("user") or "").startswith("c") else None


class Raiser:
    @hookimpl
    def before_route(self, ctx):
        raise RuntimeError("this plugin is broken")

    @hookimpl
    def choose_variant(self, ctx):
        raise KeyError("broken too")

    @hookimpl
    def after_response(self, ctx):
        raise ValueError("and here")


class BrokenGuard:
    """A key check that crashes: it must refuse, never let the caller through."""

    @hookimpl
    def authenticate(self, request):
        if request.headers.get("x-break") == "authenticate":
            raise RuntimeError("the key store answered garbage")
        return None

    @hookimpl
    def authorize(self, ctx):
        if ctx.headers.get("x-break") == "authorize":
            raise KeyError("no such team")


class Sleeper:
    @hookimpl
    async def before_route(self, ctx):
        await asyncio.sleep(5)


class Refuser:
    @hookimpl
    def before_route(self, ctx):
        if ctx.body.get("user") == "over-quota":
            raise RateLimited("team quota exhausted", headers={"Retry-After": "7"})


class Observer:
    seen: list = []

    @hookimpl
    def after_response(self, ctx):
        Observer.seen.append((ctx.request_id, ctx.served_by, ctx.status, ctx.response))


class Recorder:
    """Records the order plugins are called in."""

    calls: list = []

    def __init__(self, settings):
        self.name = settings["name"]

    @hookimpl
    def before_route(self, ctx):
        Recorder.calls.append(self.name)


class Lifecycle:
    """Records its start-up and shutdown; `requires` (from its settings) names plugins it cannot work without."""

    calls: list = []

    def __init__(self, settings):
        self.name = settings["name"]
        self.requires = tuple(settings.get("requires", ()))

    @hookimpl
    def startup(self, gateway):
        Lifecycle.calls.append(("startup", self.name))

    @hookimpl
    def shutdown(self, gateway):
        Lifecycle.calls.append(("shutdown", self.name))


class Stateful:
    """Keeps working data in `ctx.state` between its hooks, and a note in `ctx.annotations`."""

    seen: list = []

    @hookimpl
    def before_route(self, ctx):
        ctx.state["stateful"] = {"secret-ish": "working data"}
        ctx.annotations["stateful"] = "a note for the log"

    @hookimpl
    def after_response(self, ctx):
        Stateful.seen.append((ctx.state.get("stateful"), ctx.generation.config is not None))
