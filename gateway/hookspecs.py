"""Every hook a plugin can implement: the whole extension surface of llmgate, by phase of a gateway's life.

Each spec says, beside its signature, how the gateway calls it:

- `firstresult`: the first implementation that returns something other than None answers, and later
  ones are not called (a cache hit, a chosen variant, a tenant); otherwise every implementation runs
  and the caller gets each plugin's non-None result.
- `timed`: it runs while a caller waits, so each async implementation gets its plugin's `timeout_ms`;
  untimed hooks (start-up, a drain at shutdown, the operator surface) take what they need.
- `reverse`: called in reverse plugin order (shutdown undoes start-up).

Calling convention (pluggy has no async hooks, so the gateway calls implementations itself, with
`gateway.hooks.call(name, **kwargs)`): an implementation may be a plain function or an `async def`;
the gateway awaits what it returns. Each implementation runs in isolation: one that raises, or that
exceeds its budget, is logged and skipped, unless its plugin is configured `fail_closed: true`, in
which case the request fails with a 503; a fault in a hook that guards access (`authenticate`,
`authorize`) always fails the request so: a crashing key check never lets a caller through.
Raising a `gateway.errors.GatewayError` is never a fault: it is how a plugin refuses a request (a
key, a quota, a policy) and the caller receives that error.

Implementations run in the order the config's `plugins:` section lists their plugins, then the
unlisted ones in registration order (`tryfirst`/`trylast` apply among those).
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("llmgate")
hookimpl = pluggy.HookimplMarker("llmgate")

STARTUP = "start-up and shutdown"
REQUEST = "the request path"
OBSERVERS = "observers"
OPERATOR = "the operator surface"
PHASES = (STARTUP, REQUEST, OBSERVERS, OPERATOR)

# hook name -> its phase, in file order (the manual's hook reference is generated from this).
SPECS: dict[str, str] = {}
# Hooks that run while a caller waits: each plugin's `timeout_ms` applies to their async implementations.
TIMED: set[str] = set()
# Hooks called in reverse plugin order.
REVERSED: set[str] = set()
# Hooks that guard access: an implementation that fails refuses the request, whatever `fail_closed` says.
GUARDS: set[str] = set()


def spec(
    phase: str, *, firstresult: bool = False, timed: bool = False, reverse: bool = False, guard: bool = False
) -> Callable:
    """Declare a hook in `phase`, and how the gateway calls it (see the module docstring)."""
    assert phase in PHASES, phase

    def declare(function: Callable) -> Callable:
        SPECS[function.__name__] = phase
        if timed:
            TIMED.add(function.__name__)
        if reverse:
            REVERSED.add(function.__name__)
        if guard:
            GUARDS.add(function.__name__)
        return hookspec(firstresult=firstresult)(function)

    return declare


# --- start-up and shutdown -----------------------------------------------------------------------


@spec(STARTUP)
def register_backend_kinds():
    """Return {kind: Backend subclass} for backend kinds this plugin provides.

    Called once at start-up; a config's `backends.<name>.kind` selects one."""


@spec(STARTUP)
def register_evaluators():
    """Return a list of evaluator objects for offline and online evaluation.

    Each has a `name`, `higher_is_better`, a gate `tolerance` (None: not gated) and
    `evaluate(case, answer, exchange) -> float | None`; see evaluators/metrics.py."""


@spec(STARTUP, firstresult=True)
def register_tracer(gateway):
    """Return an OpenTelemetry `Tracer` for the gateway's spans; the first non-None result wins.

    Called once as the app is built. With none, tracing is off and costs nothing. With one, each
    request gets a SERVER span (continuing the caller's `traceparent`), each hook implementation
    and each backend attempt a child span, and backends send `traceparent` upstream."""


@spec(STARTUP)
def config_problems(config):
    """Return a list of problems ("plugins.<name>.<key>: what is wrong") this plugin finds in the config.

    Called when a gateway is built (so `llmgate check-config` reports them) and before a reload is
    accepted; any problem refuses the config. Check references to backends and routes here."""


@spec(STARTUP)
def startup(gateway):
    """Set up what the plugin needs for the gateway's lifetime: queues, workers, connections.

    Runs before the server accepts requests."""


@spec(STARTUP)
def config_reloaded(gateway, config):
    """The config was replaced (SIGHUP). Re-read settings; enabling or disabling plugins needs a restart."""


@spec(STARTUP, reverse=True)
def shutdown(gateway):
    """Drain and close what `startup` made. Runs in reverse order, after in-flight requests end."""


# --- the request path, in order ------------------------------------------------------------------


@spec(REQUEST, firstresult=True, timed=True, guard=True)
def authenticate(request):
    """Return the tenant (a team name) the caller of an HTTP `request` acts as; raise a GatewayError
    (a 401) to refuse a caller without valid credentials.

    The first step of every API request, before its body is read: a caller without a valid key costs
    the gateway its headers and nothing more. Read the key with `gateway.context.caller_key(request)`
    (`Authorization: Bearer` or `x-api-key`). With no implementation, callers have no tenant and
    nothing is scoped by tenant; the result becomes `ctx.tenant`."""


@spec(REQUEST, timed=True, guard=True)
def authorize(ctx):
    """Refuse (raise a GatewayError, a 403) a caller that may not make this request.

    Runs once the caller is authenticated (`ctx.tenant`) and the body names its route
    (`ctx.route_name`), before `before_route`: no plugin can answer a request that is not allowed."""


@spec(REQUEST, timed=True)
def guard_request(ctx):
    """Rewrite or refuse an allowed request before any other plugin or backend sees it (a PII guard).

    Runs after `authorize` and before `before_route`, for every dialect and embeddings: edit
    `ctx.body` (the chat form, or the embeddings body) in place, or raise a GatewayError to refuse.
    What it leaves is all the cache, the traffic log, shadows, judges and the backend ever see."""


@spec(REQUEST, timed=True)
def answer_filter(ctx):
    """Return a `gateway.filters.AnswerFilter` that rewrites this request's answer before the caller
    sees it (redaction), or None.

    Asked once per request, just before the first byte of an answer (a backend's or a plugin's) is
    written. The filter sees the whole answer, or each chunk of a stream in order (it may hold text
    back across chunks and release it at the end); what it returns is what the caller, the traffic
    log and the cache get. It may raise a GatewayError to end the answer with an error instead."""


@spec(REQUEST, timed=True)
def visible_routes(request, routes):
    """Return the names among `routes` that the caller of an HTTP `request` may learn about and use.

    Consulted for GET /v1/models and for the list a 404 for an unknown model names, so a caller never
    hears of another tenant's routes; raise a GatewayError (a 401) to refuse a caller without valid
    credentials. Return None to leave the list alone; each non-None result narrows it further."""


@spec(REQUEST, firstresult=True, timed=True)
def before_route(ctx):
    """Look at a validated request before any backend is chosen; may answer it.

    Return a chat.completion dict to answer the request yourself (a cache hit): the first
    non-None result wins and later implementations are not called. Set `ctx.served_by` to name
    what answered (defaults to the plugin's name). Raise a GatewayError to refuse the request."""


@spec(REQUEST, firstresult=True, timed=True)
def choose_variant(ctx):
    """Return the name of the backend that should serve `ctx`; the first non-None result wins.

    With no answer the route's baseline serves. `ctx.route` holds the route's settings."""


@spec(REQUEST)
def before_answer_end(ctx):
    """Make what must outlive the answer durable before the caller sees it end (the traffic log's
    `durability: acknowledged`); may wait, but cannot refuse or change the answer.

    Called once the answer is complete and just before its last bytes go out: for a JSON answer
    (an error's too) before any of it is written, for a stream before its final events and its end.
    `ctx` is the finished exchange: `response` (assembled for streams), `status`, `error`,
    `finished_at`, `cost_usd`; `after_response` follows as always. Not timed, because a commit under
    load can outlast a plugin's `timeout_ms`: an implementation bounds its own wait. What one raises
    (a GatewayError and `fail_closed` included) is logged and the answer still ends. A caller gone
    before this point never reaches it; one whose write fails after it may reach it again with an
    error answer, so an implementation that keeps something notes it in `ctx.state`."""


@spec(REQUEST, timed=True)
def after_response(ctx):
    """Observe a finished exchange: `ctx.response` (assembled for streams), `ctx.error`, timings, usage.

    Runs after the last byte went to the caller, still on the request's task: put work on a
    bounded queue and return; never wait on slow work here."""


# --- observers: told what happened, off the request path -----------------------------------------


@spec(OBSERVERS)
def record_score(route, variant, name, value):
    """A plugin that measured an answer's quality (a judge score, user feedback) reports it here.

    Window-keeping plugins (auto_rollback) count it per route and variant, higher meaning better;
    only observes. Report with `await gateway.hooks.call("record_score", route=..., variant=...,
    name=..., value=...)`; an implementation only adds to counters, so it may also be called
    synchronously through `gateway.pm.hook.record_score(...)`."""


@spec(OBSERVERS)
def shadow_compared(comparison):
    """The shadow plugin recorded a comparison of a primary answer with a shadow's (off the request path).

    `comparison` is the stored row (`request_id`, `route`, `primary_backend`, `shadow_backend`,
    `primary_answer`, `shadow_answer`: None when the shadow failed or `bodies` is off, ...) plus
    the request's `messages`. An evaluator scores it off this call (enqueue and return: the shadow
    worker waits for implementations) and writes the score, higher meaning the shadow did better,
    with `await gateway.plugin(Shadow).set_judge_score(request_id, shadow_backend, score)` (`plugins.shadow.plugin`)."""


@spec(OBSERVERS)
def rollout_changed(event):
    """A rollout change was recorded (`event["kind"]`: rollout, rollback, promote, kill, canary, ...).

    `event` is the audit event as stored (route, actor, before, after, reason). Only observes
    (a metric, a notification); called on the replica that made the change."""


# --- the operator surface: commands, endpoints, status, metrics ----------------------------------


@spec(OPERATOR)
def register_commands(commands):
    """Add subcommands to the `llmgate` command line; `commands` is argparse's subparsers object.

    A command's parser names its handler with `set_defaults(handler=fn)`; `fn(args)` returns the exit
    code. Implement this at module level: the command line imports each known plugin's module (the
    entry points'; a built-in's command module, gateway.known_plugins.COMMAND_MODULES), not its class,
    and needs no config to list the commands. Every command imports that module before it starts, so
    keep it light: import heavy dependencies inside the handlers. A command that changes state takes
    `gateway.cli.add_reason_arg(parser)` and records the reason in the audit trail."""


@spec(OPERATOR)
def register_routes(gateway):
    """Return a list of aiohttp RouteDefs to add to the server (an admin API, a feedback endpoint).

    Admin routes must check the admin token with `gateway.require_admin(request)`."""


@spec(OPERATOR)
def user_requests(user, team):
    """Return the request ids of the exchanges one end user (`user`, as the rollout knows them: the
    request's `user`, `metadata.user_id`, `safety_identifier` or `x-llmgate-user`) has in this plugin's
    store, for an erasure (POST /admin/erase); the ids of every plugin go to `erase_user`. `team` (a
    tenant) narrows it to that team's exchanges (a user id is a team's own: another team's "alice" is
    someone else); None: every team's."""


@spec(OPERATOR)
def erase_user(user, request_ids, team):
    """Delete everything this plugin stores of the end user `user` and of the exchanges `request_ids`
    (a data-protection request); return {store name: rows removed}. Runs off the request path. With
    `team` set, only what is that team's: rows found by the user alone (not by request id) must be the
    team's too."""


@spec(OPERATOR)
def readiness(gateway):
    """Return {check name: problem text or None} to add to GET /readyz.

    A problem marks the gateway degraded (it still serves); only the core's own checks make it 503."""


@spec(OPERATOR)
def admin_status(gateway):
    """Return {section: JSON-able data} for GET /admin/status (and so `llmgate status` and the console).

    Called per status request, off the request path; keep it to what the plugin holds in memory."""


@spec(OPERATOR)
def collect_metrics(gateway):
    """Return a list of `(name, help, labels, value)` figures this plugin holds, for GET /metrics.

    Called at each scrape, off the request path: read what is in memory (queue depths, drop
    counts) and return. `name` is Prometheus-style (`llmgate_shadow_queue_depth`); one ending in
    `_total` is exposed as a counter, any other as a gauge. `labels` is a dict whose values come
    from a bounded set (route, backend, plugin names): never a tenant, user, key or request id."""
