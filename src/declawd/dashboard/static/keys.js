// The team's API keys: list (prefixes only), create (the key is shown once), revoke.

import { api, enc } from "./api.js";
import { badge, clear, confirmButton, flash, h, table, when } from "./dom.js";

export function keysPage(root) {
  const list = h("div", { id: "keys-list" }, h("p", { class: "muted" }, "Loading…"));
  const fresh = h("div", { id: "new-key", hidden: true });
  const name = h("input", { id: "new-key-name", placeholder: "label (optional)", maxlength: 64 });
  const form = h(
    "form",
    { id: "new-key-form", class: "row" },
    name,
    h("button", { type: "submit", id: "new-key-submit" }, "Create key"),
  );
  clear(
    root,
    h("div", { class: "pagehead" }, h("h1", {}, "API keys")),
    h("p", { class: "muted" }, "Keys of your team. Each is shown once, when it is created; only its prefix is kept visible."),
    h("section", { class: "card" }, form, fresh),
    h("section", { class: "card" }, list),
  );

  async function load() {
    try {
      const out = await api("GET", "/keys");
      const rows = out.keys.map((k) =>
        h(
          "tr",
          { dataset: { keyId: k.key_id, state: k.state } },
          h("td", { class: "mono" }, `${k.prefix}…`),
          h("td", {}, k.name || ""),
          h("td", { class: "mono small" }, k.key_id),
          h("td", {}, when(k.created_at)),
          h("td", {}, badge(k.state), k.current ? h("span", { class: "muted" }, " (this session)") : null),
          h(
            "td",
            {},
            k.state === "active" && !k.current
              ? confirmButton(
                  "Revoke",
                  "Yes, revoke",
                  async () => {
                    try {
                      await api("DELETE", `/keys/${enc(k.key_id)}`);
                      flash(`Revoked ${k.prefix}…`, "ok");
                    } catch (err) {
                      flash(err.message);
                    }
                    load();
                  },
                  { id: `revoke-${k.key_id}` },
                )
              : k.revoked_at
                ? `revoked ${when(k.revoked_at)}`
                : "",
          ),
        ),
      );
      clear(list, table(["Prefix", "Name", "Id", "Created", "State", ""], rows, { id: "keys-table" }));
    } catch (err) {
      flash(err.message);
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const k = await api("POST", "/keys", { name: name.value.trim() });
      name.value = "";
      const value = h("input", { id: "new-key-value", class: "mono", readonly: true, value: k.key, size: 48 });
      clear(
        fresh,
        h("p", {}, "New key — copy it now, it will not be shown again:"),
        value,
        h("button", {
          type: "button",
          onclick: async () => {
            value.select();
            try {
              await navigator.clipboard.writeText(k.key);
              flash("Copied.", "ok");
            } catch {
              flash("Select the key and copy it (the clipboard is not available here).", "ok");
            }
          },
        }, "Copy"),
      );
      fresh.hidden = false;
      load();
    } catch (err) {
      flash(err.message);
    }
  });
  load();
  return null;
}
