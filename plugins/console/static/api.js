// The admin API, called with the token from this tab's sessionStorage in an Authorization header.
// Failures come back as three kinds the page treats differently: the gateway cannot be reached
// (banner, last data greyed, retry with backoff), the token is refused (sign in again), and the
// gateway refused the request itself (its OpenAI-style error message is shown as it is).

const TOKEN_KEY = "llmgate.console.token";
const NAME_KEY = "llmgate.console.name";
const TIMEOUT_MS = 8000;

export class Unreachable extends Error {}
export class Unauthorized extends Error {}
export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  get name() { return sessionStorage.getItem(NAME_KEY) || ""; },
  signIn(token, name) {
    sessionStorage.setItem(TOKEN_KEY, token);
    if (name) sessionStorage.setItem(NAME_KEY, name); else sessionStorage.removeItem(NAME_KEY);
  },
  signOut() { sessionStorage.removeItem(TOKEN_KEY); },
  /** The audit trail's actor: "console", with the operator's name when they gave one. */
  get actor() { return this.name ? `console:${this.name}` : "console"; },
};

async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}`, "X-LLMgate-Actor": session.actor };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit", signal: abort.signal,
    });
  } catch (err) {
    throw new Unreachable(err.name === "AbortError" ? `no answer within ${TIMEOUT_MS / 1000} s` : "connection failed");
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // a proxy's HTML error page, an empty body: judged by the status below
  }
  if (response.ok) return data;
  const error = (data && data.error) || {};
  if (response.status === 401) throw new Unauthorized(error.message || "the admin token was refused");
  if (response.status === 502 || response.status === 504 || (response.status === 503 && !data)) {
    throw new Unreachable(`the gateway answered ${response.status}`);
  }
  throw new ApiError(response.status, error.message || `${method} ${path}: ${response.status}`, error.param);
}

export const api = {
  get: (path) => call("GET", path),
  post: (path, body) => call("POST", path, body || {}),
};
