// The controls: every change asks for confirmation in a dialog that says what will happen,
// then POSTs to the admin API (the same endpoints as the CLI) and shows the audit event it made.

import { $, h, replace } from "./dom.js";
import { api, ApiError, Unauthorized, Unreachable } from "./api.js";
import * as f from "./format.js";

const enc = encodeURIComponent;

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

/** What each button asks for and does, given the route's current status. */
function plan(action, data, status) {
  const route = data.route;
  const rollout = status.rollout?.routes?.[route] || { percents: {} };
  const candidate = data.candidate;
  const current = rollout.percents?.[candidate] || 0;
  const reason = (required) => h("input", { id: "confirm-reason", type: "text", maxlength: 300, required,
                                             placeholder: required ? "required: why" : "optional" });
  const path = (tail) => `/admin/routes/${enc(route)}/${tail}`;
  switch (action) {
    case "percent": {
      const input = h("input", { id: "confirm-percent", type: "number", min: 0, max: 100, step: "any",
                                 value: current, required: true, inputmode: "decimal" });
      return {
        title: `Set ${candidate}'s share on ${route}`,
        text: () => `${candidate}: ${f.percent(current)} → ${f.percent(Number(input.value))} of ${route}'s users. `
          + "Raising takes users from the baseline only; lowering gives them back.",
        fields: [field("Percent of users", input), field("Reason", reason(false))],
        live: input,
        send: (v) => api.post(path("rollout"), { candidate, percent: Number(v.percent), reason: v.reason || undefined }),
      };
    }
    case "promote":
      return {
        title: `Promote ${candidate} on ${route}`, danger: true,
        text: () => `Every user of ${route} goes to ${candidate} (other candidates to 0%). `
          + "To keep it, make it the baseline in the config.",
        fields: [field("Reason", reason(false))],
        send: (v) => api.post(path("promote"), { candidate, reason: v.reason || undefined }),
      };
    case "rollback":
      return {
        title: candidate ? `Roll back ${candidate} on ${route}` : `Roll back every candidate of ${route}`, danger: true,
        text: () => `${candidate || "All candidates"} → 0%: ${candidate ? "its" : "their"} users return to the baseline and `
          + "stay there, canaries included, until someone gives a percent again.",
        fields: [field("Reason", reason(true), "recorded in the audit event and sent to webhooks")],
        send: (v) => api.post(path("rollback"), { reason: v.reason, candidate }),
      };
    case "kill": {
      const on = data.on === "true";
      return {
        title: on ? `Kill switch ON for ${route}` : `Kill switch off for ${route}`, danger: on,
        text: () => on ? `Every request of ${route} goes to its baseline until the switch is turned off.`
          : `${route}'s candidates get their percents again.`,
        fields: [field("Reason", reason(false))],
        send: (v) => api.post(path("kill"), { on, reason: v.reason || undefined }),
      };
    }
    case "schedule-start": {
      const candidates = Object.keys(status.routes[route].candidates || {});
      const select = h("select", { id: "confirm-candidate" }, candidates.map((c) => h("option", { value: c }, c)));
      const steps = h("input", { id: "confirm-steps", type: "text", value: "5, 25, 50, 100", required: true,
                                 pattern: "[0-9., ]+" });
      const hold = h("input", { id: "confirm-hold", type: "number", min: 0, value: 300, required: true });
      return {
        title: `Start a staged rollout on ${route}`,
        text: () => `${select.value} gets the first step at once; each next step after ${hold.value} s `
          + "if its analysis passes. A failed analysis rolls it back.",
        fields: [field("Candidate", select), field("Steps (percent)", steps), field("Hold per step (seconds)", hold),
                 field("Reason", reason(false))],
        live: steps,
        send: (v) => api.post(path("schedule"), {
          candidate: v.candidate, hold_seconds: Number(v.hold), reason: v.reason || undefined,
          steps: v.steps.split(/[ ,]+/).filter(Boolean).map(Number),
        }),
      };
    }
    case "schedule-pause":
    case "schedule-resume":
    case "schedule-abort": {
      const verb = action.slice("schedule-".length);
      const schedule = status.auto_rollback?.schedules?.[route] || {};
      const what = {
        pause: "The schedule stays at its current step until resumed.",
        resume: "The current step's hold and analysis start again.",
        abort: `${schedule.candidate} is rolled back to 0% and the schedule ends.`,
      }[verb];
      return {
        title: `${verb[0].toUpperCase()}${verb.slice(1)} ${route}'s schedule`, danger: verb === "abort",
        text: () => what, fields: [field("Reason", reason(false))],
        send: (v) => api.post(path(`schedule/${verb}`), { reason: v.reason || undefined }),
      };
    }
    default:
      return null;
  }
}

function values() {
  const read = (id) => $(`#${id}`)?.value?.trim();
  return { percent: read("confirm-percent"), reason: read("confirm-reason"), candidate: read("confirm-candidate"),
           steps: read("confirm-steps"), hold: read("confirm-hold") };
}

function eventView(event) {
  const rows = Object.entries(event).filter(([k]) => k !== "figures").map(([k, v]) => h("tr", {},
    h("th", { scope: "row" }, k),
    h("td", {}, k === "ts" ? `${f.time(v)} (${v})` : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))));
  return [h("p", { class: "good" }, `Done. Audit event #${event.id} recorded:`),
          h("table", { class: "kv", id: "confirm-event", dataset: { eventId: event.id, kind: event.kind } }, h("tbody", {}, rows))];
}

/**
 * Wire the dialog. `getStatus` returns the latest /admin/status; `after(event)` refreshes the page;
 * `onAuthLost(message)` and `onUnreachable(err)` hand those failures back to the app.
 */
export function setupActions({ getStatus, after, onAuthLost }) {
  const dialog = $("#confirm");
  const ok = $("#confirm-ok");
  const cancel = $("#confirm-cancel");
  const error = $("#confirm-error");
  const result = $("#confirm-result");
  let current = null;

  function close() {
    current = null;
    dialog.close();
  }

  function open(action, data) {
    const status = getStatus();
    if (!status) return;
    current = plan(action, data, status);
    if (!current) return;
    $("#confirm-title").textContent = current.title;
    const describe = () => { $("#confirm-text").textContent = current.text(); };
    describe();
    if (current.live) current.live.addEventListener("input", describe);
    replace($("#confirm-fields"), current.fields);
    error.hidden = true;
    result.hidden = true;
    replace(result);
    ok.hidden = false;
    ok.disabled = false;
    ok.textContent = "Confirm";
    ok.className = current.danger ? "danger solid" : "primary";
    cancel.textContent = "Cancel";
    dialog.dataset.action = action;
    dialog.showModal();
    const first = $("#confirm-fields input, #confirm-fields select");
    if (first) first.focus();
  }

  document.addEventListener("click", (e) => {
    const target = e.target.closest("button[data-action]");
    if (target && !target.closest("dialog")) open(target.dataset.action, { ...target.dataset });
  });
  cancel.addEventListener("click", close);

  $("#confirm-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!current) return close();
    if (!$("#confirm-form").reportValidity()) return;
    ok.disabled = true;
    ok.textContent = "Working…";
    error.hidden = true;
    try {
      const event = await current.send(values());
      replace(result, eventView(event));
      result.hidden = false;
      replace($("#confirm-fields"));
      ok.hidden = true;
      cancel.textContent = "Close";
      cancel.focus();
      current = null;
      after(event);
    } catch (err) {
      ok.disabled = false;
      ok.textContent = "Confirm";
      if (err instanceof Unauthorized) {
        close();
        onAuthLost(err.message);
        return;
      }
      error.textContent = err instanceof Unreachable
        ? `No answer from the gateway (${err.message}): the change may or may not have been made. Check the event history once it is back.`
        : err instanceof ApiError ? `Refused (${err.status}): ${err.message}` : `Failed: ${err.message}`;
      error.hidden = false;
    }
  });
}
