// The team's sandboxes: state, template, runtime, age, CPU and memory (configured, and the
// latest sample of GET /sandboxes/<id>/metrics), refreshed every few seconds.

import { api, enc } from "./api.js";
import { age, badge, clear, flash, h, table } from "./dom.js";

const REFRESH_MS = 4000;

async function latestSample(id) {
  const start = new Date(Date.now() - 60_000).toISOString();
  try {
    const series = await api("GET", `/sandboxes/${enc(id)}/metrics?start=${enc(start)}`);
    return series.length ? series[series.length - 1] : null;
  } catch {
    return null; // gone between the list and this read: the next refresh drops the row
  }
}

function cpuCell(s, m) {
  const count = s.cpu_count ?? "–";
  if (!m) return `${count} vCPU`;
  return `${count} vCPU · ${m.cpu_usage_percent.toFixed(1)}%`;
}

function memCell(s, m) {
  const limit = s.memory_mb ? `${s.memory_mb} MiB` : "–";
  if (!m) return limit;
  return `${m.memory_usage_mb.toFixed(1)} / ${limit}`;
}

export function sandboxesPage(root) {
  const body = h("div", { id: "sandboxes-body" }, h("p", { class: "muted" }, "Loading…"));
  const stamp = h("span", { class: "muted small" });
  clear(
    root,
    h("div", { class: "pagehead" }, h("h1", {}, "Sandboxes"), stamp),
    h("p", { class: "muted" }, "Live sandboxes of your team (creating, running, paused)."),
    body,
  );
  let stopped = false;
  let timer = null;

  async function refresh() {
    try {
      const all = [];
      let token = null;
      do {
        const q = `limit=100${token ? `&next_token=${enc(token)}` : ""}`;
        const page = await api("GET", `/sandboxes?${q}`);
        all.push(...page.sandboxes);
        token = page.next_token;
      } while (token && all.length < 1000);
      const samples = await Promise.all(
        all.map((s) => (s.state === "running" || s.state === "paused" ? latestSample(s.sandbox_id) : null)),
      );
      if (stopped) return;
      if (!all.length) {
        clear(body, h("p", { id: "no-sandboxes", class: "muted" }, "No live sandboxes."));
      } else {
        const rows = all.map((s, i) =>
          h(
            "tr",
            { dataset: { sandboxId: s.sandbox_id, state: s.state } },
            h("td", {}, h("a", { href: `#/sandboxes/${enc(s.sandbox_id)}`, class: "mono" }, s.sandbox_id)),
            h("td", {}, badge(s.state)),
            h("td", {}, s.alias || s.template_id || "–"),
            h("td", {}, s.runtime || "–"),
            h("td", { title: s.started_at || "" }, age(s.started_at)),
            h("td", { class: "num" }, cpuCell(s, samples[i])),
            h("td", { class: "num" }, memCell(s, samples[i])),
          ),
        );
        clear(
          body,
          table(["Sandbox", "State", "Template", "Runtime", "Age", "CPU", "Memory (MiB)"], rows, {
            id: "sandboxes-table",
          }),
        );
      }
      stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (!stopped) flash(err.message);
    } finally {
      if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
    }
  }
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
