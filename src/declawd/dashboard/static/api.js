// Calls to the declawd API with the session cookie. State-changing calls carry the
// session's CSRF token; a 401 means the session ended, and sends the UI back to sign-in.

let csrfToken = null;
const signedOutListeners = [];

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || "";
  }
}

export function setCsrf(token) {
  csrfToken = token;
}

export function onSignedOut(fn) {
  signedOutListeners.push(fn);
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`;
  let code = "";
  try {
    const body = await res.json();
    if (body && typeof body.message === "string") message = body.message;
    if (body && typeof body.code === "string") code = body.code;
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(res.status, message, code);
}

// api("GET", "/sandboxes") → parsed JSON; {raw: true} → the Response (for file bodies).
export async function api(method, path, body, { raw = false, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && method !== "HEAD" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const res = await fetch(path, init);
  if (!res.ok) {
    const err = await errorOf(res);
    if (res.status === 401 && !quiet401) signedOutListeners.forEach((fn) => fn(err));
    throw err;
  }
  if (raw) return res;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

export const enc = encodeURIComponent;
