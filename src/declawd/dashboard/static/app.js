// The dashboard's entry: session check, sign-in, the header and a hash router
// (#/sandboxes, #/sandboxes/<id>, #/templates, #/keys). Each page returns a cleanup
// function that stops its timers and streams when the user navigates away.

import { api, onSignedOut, setCsrf } from "./api.js";
import { clear, flash, h } from "./dom.js";
import { keysPage } from "./keys.js";
import { sandboxPage } from "./sandbox.js";
import { sandboxesPage } from "./sandboxes.js";
import { templatesPage } from "./templates.js";

const main = document.getElementById("main");
let session = null;
let cleanup = null;

function showSession(s) {
  session = s;
  setCsrf(s ? s.csrf_token : null);
  document.getElementById("nav").hidden = !s;
  document.getElementById("who").hidden = !s;
  document.getElementById("who-team").textContent = s
    ? `team ${s.team_name || s.team_id} · key ${s.key_prefix || s.key_id}…`
    : "";
}

function signInPage(root, message) {
  const key = h("input", {
    id: "signin-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "dcw_…",
    required: true,
  });
  const error = h("p", { id: "signin-error", class: "error", hidden: !message }, message || "");
  const form = h(
    "form",
    { id: "signin", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h(
      "p",
      { class: "muted" },
      "Paste an API key of your team. It is exchanged for a session cookie; the key itself is not kept in the browser.",
    ),
    h("label", { for: "signin-key" }, "API key"),
    key,
    h("button", { type: "submit", id: "signin-submit" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      const s = await api("POST", "/dashboard/session", { api_key: key.value.trim() }, { quiet401: true });
      key.value = "";
      showSession(s);
      if (!location.hash || location.hash === "#/signin") location.hash = "#/sandboxes";
      else route();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  });
  clear(root, form);
  key.focus();
  return null;
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  if (!session) {
    signInPage(main);
    return;
  }
  const parts = (location.hash.replace(/^#\/?/, "") || "sandboxes").split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === parts[0]);
  }
  clear(main);
  if (parts[0] === "sandboxes" && parts[1]) cleanup = sandboxPage(main, parts[1]);
  else if (parts[0] === "templates") cleanup = templatesPage(main, parts[1]);
  else if (parts[0] === "keys") cleanup = keysPage(main, session);
  else cleanup = sandboxesPage(main);
}

onSignedOut((err) => {
  if (!session) return;
  showSession(null);
  if (cleanup) cleanup();
  cleanup = null;
  signInPage(main, err.message);
});

document.getElementById("signout").addEventListener("click", async () => {
  try {
    await api("DELETE", "/dashboard/session");
  } catch (err) {
    flash(err.message);
  }
  showSession(null);
  if (cleanup) cleanup();
  cleanup = null;
  signInPage(main, "Signed out.");
});

window.addEventListener("hashchange", route);

(async () => {
  try {
    showSession(await api("GET", "/dashboard/session", undefined, { quiet401: true }));
  } catch {
    showSession(null);
  }
  route();
})();
