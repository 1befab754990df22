// One sandbox: its record, kill/pause/resume, its policy, the live audit (an EventSource on
// /sandboxes/<id>/audit/stream, allowed and denied as they happen), its commands and a
// read-only file browser.

import { api, enc } from "./api.js";
import { age, badge, bytes, clear, clock, confirmButton, flash, h, table, when } from "./dom.js";

const MAX_AUDIT_ROWS = 2000;
const MAX_SHOWN_FILE = 256 * 1024;

function where(e) {
  const host = e.name || e.address || "";
  if (e.kind === "http" && e.url) return `${e.method || ""} ${e.url}`.trim();
  if (e.kind === "command") return e.command_line || "";
  if (e.kind === "file") return `${e.operation || ""} ${e.path || ""}`.trim();
  return e.port ? `${host}:${e.port}` : host;
}

function extra(e) {
  const out = [];
  if (e.kind === "dns" && e.address) out.push(e.address);
  if (e.kind === "connection" && e.name && e.address) out.push(e.address);
  if (e.protocol) out.push(e.protocol);
  if (e.status !== undefined) out.push(`status ${e.status}`);
  if (e.exit_code !== undefined) out.push(`exit ${e.exit_code}`);
  if (e.user) out.push(`as ${e.user}`);
  if (e.bytes !== undefined) out.push(bytes(e.bytes));
  return out.join(" · ");
}

function auditRow(e) {
  return h(
    "tr",
    { class: `verdict-${e.verdict}`, dataset: { verdict: e.verdict, kind: e.kind, name: e.name || "" } },
    h("td", { class: "mono small", title: e.time }, clock(e.time)),
    h("td", {}, e.kind),
    h("td", {}, badge(e.verdict)),
    h("td", { class: "mono wrap" }, where(e)),
    h("td", {}, e.reason || ""),
    h("td", { class: "small muted" }, extra(e)),
  );
}

function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

function policyView(policy) {
  const net = policy.network || {};
  const list = (items) => (items && items.length ? items.join(", ") : "–");
  const enabled = Object.entries(policy)
    .filter(([k, v]) => k !== "network" && v && typeof v === "object" && v.enabled)
    .map(([k]) => k);
  return [
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "allow_out"),
      h("dd", { class: "mono", id: "policy-allow" }, list(net.allow_out)),
      h("dt", {}, "deny_out"),
      h("dd", { class: "mono", id: "policy-deny" }, list(net.deny_out)),
      h("dt", {}, "sections enabled"),
      h("dd", {}, enabled.length ? enabled.join(", ") : "none"),
    ),
    h(
      "details",
      {},
      h("summary", {}, "Whole policy (GET /sandboxes/…/security)"),
      h("pre", { id: "policy-json" }, JSON.stringify(policy, null, 2)),
    ),
  ];
}

function fileBrowser(id) {
  const crumbs = h("div", { class: "crumbs mono", id: "files-path" });
  const listing = h("div", { id: "files-list" });
  const viewer = h("div", { id: "file-view" });

  async function show(path) {
    clear(viewer);
    clear(crumbs);
    const parts = path.split("/").filter(Boolean);
    crumbs.append(h("a", { href: "#", onclick: (ev) => (ev.preventDefault(), show("/")) }, "/"));
    parts.forEach((p, i) => {
      const to = "/" + parts.slice(0, i + 1).join("/");
      crumbs.append(h("a", { href: "#", onclick: (ev) => (ev.preventDefault(), show(to)) }, p), "/");
    });
    clear(listing, h("p", { class: "muted" }, "Loading…"));
    try {
      const entries = await api("GET", `/sandboxes/${enc(id)}/files/list?path=${enc(path)}`);
      entries.sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type === "dir" ? -1 : 1));
      const rows = entries.map((e) =>
        h(
          "tr",
          { dataset: { path: e.path, type: e.type } },
          h(
            "td",
            { class: "mono" },
            h(
              "a",
              {
                href: "#",
                onclick: (ev) => {
                  ev.preventDefault();
                  if (e.type === "dir") show(e.path);
                  else view(e);
                },
              },
              e.type === "dir" ? `${e.name}/` : e.name,
            ),
            e.symlink_target ? h("span", { class: "muted" }, ` → ${e.symlink_target}`) : null,
          ),
          h("td", { class: "num" }, e.type === "dir" ? "" : bytes(e.size)),
          h("td", { class: "mono small" }, e.mode ? e.mode.toString(8) : ""),
        ),
      );
      clear(listing, rows.length ? table(["Name", "Size", "Mode"], rows) : h("p", { class: "muted" }, "Empty directory."));
      return true;
    } catch (err) {
      clear(listing, h("p", { class: "error" }, err.message));
      return false;
    }
  }

  async function view(entry) {
    clear(viewer, h("p", { class: "muted" }, `Reading ${entry.path}…`));
    try {
      const res = await api("GET", `/sandboxes/${enc(id)}/files?path=${enc(entry.path)}`, undefined, { raw: true });
      const reader = res.body.getReader();
      const chunks = [];
      let size = 0;
      while (size < MAX_SHOWN_FILE) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        size += value.length;
      }
      const truncated = size >= MAX_SHOWN_FILE;
      if (truncated) await reader.cancel();
      const data = new Uint8Array(size);
      let at = 0;
      for (const c of chunks) {
        data.set(c, at);
        at += c.length;
      }
      const shown = data.subarray(0, MAX_SHOWN_FILE);
      const binary = shown.includes(0);
      const text = binary ? `(binary file, ${bytes(entry.size)}: not shown)` : new TextDecoder().decode(shown);
      clear(
        viewer,
        h("h3", { class: "mono" }, entry.path),
        truncated ? h("p", { class: "muted" }, `First ${bytes(MAX_SHOWN_FILE)} shown.`) : null,
        h("pre", { id: "file-content" }, text),
      );
    } catch (err) {
      clear(viewer, h("p", { class: "error" }, err.message));
    }
  }

  return { el: h("div", {}, crumbs, listing, viewer), show };
}

export function sandboxPage(root, id) {
  let stopped = false;
  let source = null;
  let retry = null;
  const seen = new Set();
  const head = h("div", { class: "pagehead" }, h("h1", { class: "mono" }, id));
  const facts = h("dl", { class: "facts", id: "sandbox-facts" });
  const actions = h("div", { class: "actions", id: "sandbox-actions" });
  const policy = h("div", { id: "policy" }, h("p", { class: "muted" }, "Loading…"));
  const auditBody = h("tbody", {});
  const auditStatus = h("span", { class: "muted small", id: "audit-status" }, "connecting…");
  const onlyDenied = h("input", { type: "checkbox", id: "audit-only-denied" });
  const auditTable = h(
    "table",
    { id: "audit-table", class: "audit" },
    h("thead", {}, h("tr", {}, ["Time (UTC)", "Kind", "Verdict", "What", "Reason", ""].map((x) => h("th", {}, x)))),
    auditBody,
  );
  const running = h("div", { id: "commands-running" });
  const history = h("tbody", {});
  const browser = fileBrowser(id);
  let live = true;

  onlyDenied.addEventListener("change", () => auditTable.classList.toggle("only-denied", onlyDenied.checked));

  clear(
    root,
    head,
    h("div", { class: "card" }, facts, actions),
    section("Policy", policy),
    section(
      "Live audit",
      h(
        "p",
        { class: "muted small" },
        "Egress (DNS, connections, inspected requests), commands and file writes, as they happen. ",
        auditStatus,
        " ",
        h("label", { class: "inline" }, onlyDenied, " denied only"),
      ),
      h("div", { class: "scroll" }, auditTable),
    ),
    section(
      "Commands",
      h("h3", {}, "Running"),
      running,
      h("h3", {}, "History (from the audit)"),
      h("div", { class: "scroll short" }, table(["Time (UTC)", "Verdict", "Command", "User", "Exit"], [], { id: "commands-history" })),
    ),
    section("Files (read-only)", browser.el),
  );
  root.querySelector("#commands-history tbody").replaceWith(history);

  function addEvent(e) {
    const key = JSON.stringify(e);
    if (seen.has(key)) return;
    seen.add(key);
    auditBody.prepend(auditRow(e));
    while (auditBody.children.length > MAX_AUDIT_ROWS) auditBody.lastChild.remove();
    if (e.kind === "command") {
      history.prepend(
        h(
          "tr",
          { class: `verdict-${e.verdict}` },
          h("td", { class: "mono small" }, clock(e.time)),
          h("td", {}, badge(e.verdict)),
          h("td", { class: "mono wrap" }, e.command_line || ""),
          h("td", {}, e.user || ""),
          h("td", {}, e.exit_code ?? ""),
        ),
      );
    }
  }

  function openStream() {
    if (stopped) return;
    source = new EventSource(`/sandboxes/${enc(id)}/audit/stream?from_start=1`);
    source.addEventListener("open", () => {
      auditStatus.textContent = "live";
      auditStatus.className = "badge running";
    });
    source.addEventListener("audit", (ev) => {
      try {
        addEvent(JSON.parse(ev.data));
      } catch {
        // a malformed event is skipped; the stream goes on
      }
    });
    source.addEventListener("error", () => {
      // The server ends the stream when the sandbox ends; otherwise reconnect (replayed
      // events are recognised and not shown twice).
      source.close();
      source = null;
      if (stopped) return;
      if (!live) {
        auditStatus.textContent = "ended with the sandbox";
        auditStatus.className = "badge killed";
        return;
      }
      auditStatus.textContent = "reconnecting…";
      auditStatus.className = "muted small";
      retry = setTimeout(async () => {
        await loadRecord();
        openStream();
      }, 1500);
    });
  }

  function renderActions(rec) {
    clear(actions);
    if (!live) return;
    if (rec.state === "running") {
      actions.append(
        h(
          "button",
          {
            type: "button",
            id: "pause-button",
            onclick: async (ev) => {
              ev.target.disabled = true;
              try {
                await api("POST", `/sandboxes/${enc(id)}/pause`);
                flash("Paused.", "ok");
              } catch (err) {
                flash(err.message);
              }
              await loadRecord();
            },
          },
          "Pause",
        ),
      );
    }
    if (rec.state === "paused") {
      actions.append(
        h(
          "button",
          {
            type: "button",
            id: "resume-button",
            onclick: async (ev) => {
              ev.target.disabled = true;
              try {
                await api("POST", `/sandboxes/${enc(id)}/resume`);
                flash("Resumed.", "ok");
              } catch (err) {
                flash(err.message);
              }
              await loadRecord();
            },
          },
          "Resume",
        ),
      );
    }
    actions.append(
      confirmButton(
        "Kill",
        "Yes, kill it",
        async () => {
          try {
            await api("DELETE", `/sandboxes/${enc(id)}`);
            flash(`Killed ${id}.`, "ok");
          } catch (err) {
            flash(err.message);
          }
          await loadRecord();
        },
        { id: "kill-button" },
      ),
    );
  }

  async function loadRecord() {
    try {
      const rec = await api("GET", `/sandboxes/${enc(id)}`);
      live = true;
      clear(
        facts,
        h("dt", {}, "state"),
        h("dd", { id: "sandbox-state" }, badge(rec.state)),
        h("dt", {}, "template"),
        h("dd", {}, rec.alias || "–", " ", h("span", { class: "muted mono" }, rec.template_id || "")),
        h("dt", {}, "runtime"),
        h("dd", {}, rec.runtime || "–"),
        h("dt", {}, "started"),
        h("dd", {}, when(rec.started_at), h("span", { class: "muted" }, ` (${age(rec.started_at)} ago)`)),
        h("dt", {}, "ends"),
        h("dd", {}, rec.state === "paused" ? "paused (timer stopped)" : when(rec.end_at)),
        h("dt", {}, "resources"),
        h("dd", {}, `${rec.cpu_count ?? "–"} vCPU · ${rec.memory_mb ?? "–"} MiB`),
        h("dt", {}, "metadata"),
        h("dd", { class: "mono" }, Object.keys(rec.metadata || {}).length ? JSON.stringify(rec.metadata) : "–"),
      );
      renderActions(rec);
      return rec;
    } catch (err) {
      if (err.status !== 404) {
        flash(err.message);
        return null;
      }
      live = false;
      clear(running, h("p", { class: "muted" }, "The sandbox is not running."));
      clear(browser.el, h("p", { class: "muted" }, "Files can be browsed while the sandbox runs."));
      clear(
        facts,
        h("dt", {}, "state"),
        h("dd", { id: "sandbox-state" }, badge("killed"), h("span", { class: "muted" }, " (or not one of your team's sandboxes)")),
      );
      clear(actions);
      return null;
    }
  }

  async function loadPolicy() {
    try {
      clear(policy, ...policyView(await api("GET", `/sandboxes/${enc(id)}/security`)));
    } catch (err) {
      clear(policy, h("p", { class: "muted" }, err.message));
    }
  }

  async function loadCommands() {
    if (!live) {
      clear(running, h("p", { class: "muted" }, "The sandbox is not running."));
      return;
    }
    try {
      const procs = await api("GET", `/sandboxes/${enc(id)}/commands`);
      clear(
        running,
        procs.length
          ? table(
              ["PID", "Command", "PTY", "Tag"],
              procs.map((p) =>
                h("tr", {}, h("td", { class: "mono" }, p.pid), h("td", { class: "mono wrap" }, p.cmd), h("td", {}, p.is_pty ? "yes" : ""), h("td", {}, p.tag || "")),
              ),
              { id: "commands-table" },
            )
          : h("p", { class: "muted" }, "No command running."),
      );
    } catch (err) {
      clear(running, h("p", { class: "muted" }, err.message));
    }
  }

  let poll = null;
  (async () => {
    const rec = await loadRecord();
    loadPolicy();
    openStream();
    if (rec && rec.state === "running") {
      if (!(await browser.show("/home/user"))) await browser.show("/");
    }
    else clear(browser.el, h("p", { class: "muted" }, "Files can be browsed while the sandbox runs."));
    loadCommands();
    poll = setInterval(() => {
      if (!stopped && live) {
        loadRecord();
        loadCommands();
      }
    }, 5000);
  })();

  return () => {
    stopped = true;
    if (source) source.close();
    clearTimeout(retry);
    clearInterval(poll);
  };
}
