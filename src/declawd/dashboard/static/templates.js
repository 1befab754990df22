// Templates visible to the team (its own and the built-ins) and, for one of them, its
// builds with their whole logs (a build in progress is followed until it ends).

import { api, enc } from "./api.js";
import { badge, bytes, clear, flash, h, table, when } from "./dom.js";

function buildsView(root, id) {
  let stopped = false;
  let timer = null;
  const box = h("div", { id: "template-builds" }, h("p", { class: "muted" }, "Loading builds…"));
  root.append(h("section", { class: "card" }, h("h2", { class: "mono" }, `Builds of ${id}`), box));

  async function load() {
    try {
      const out = await api("GET", `/dashboard/templates/${enc(id)}/builds`);
      if (stopped) return;
      if (!out.builds.length) {
        clear(
          box,
          h(
            "p",
            { class: "muted" },
            out.builtin ? "A built-in template: built on this node at start-up, no build log kept." : "No build recorded.",
          ),
        );
        return;
      }
      clear(
        box,
        out.builds.map((b) =>
          h(
            "details",
            { open: b === out.builds[0], dataset: { buildId: b.build_id, status: b.status } },
            h("summary", {}, h("span", { class: "mono" }, b.build_id), " ", badge(b.status), ` started ${when(b.created_at)}`, b.finished_at ? `, finished ${when(b.finished_at)}` : ""),
            h("pre", { class: "log" }, b.logs.length ? b.logs.join("\n") : "(no output yet)"),
          ),
        ),
      );
      if (out.builds.some((b) => b.status === "building")) timer = setTimeout(load, 3000);
    } catch (err) {
      clear(box, h("p", { class: "error" }, err.message));
    }
  }
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function templatesPage(root, selected) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  clear(root, h("div", { class: "pagehead" }, h("h1", {}, "Templates")), body);
  let stopBuilds = null;
  (async () => {
    try {
      const out = await api("GET", "/templates");
      const rows = out.templates.map((t) =>
        h(
          "tr",
          { dataset: { templateId: t.template_id }, class: t.template_id === selected ? "selected" : "" },
          h("td", {}, h("a", { href: `#/templates/${enc(t.template_id)}` }, t.alias || "(no alias)")),
          h("td", { class: "mono small" }, t.template_id),
          h("td", {}, badge(t.state)),
          h("td", {}, t.builtin ? "built-in" : "team"),
          h("td", { class: "num" }, bytes(t.size_bytes)),
          h("td", { class: "num" }, t.build_seconds != null ? `${t.build_seconds.toFixed(1)} s` : "–"),
          h("td", {}, when(t.created_at)),
          h("td", { class: "small error" }, t.error || ""),
        ),
      );
      const disk = out.disk || {};
      clear(
        body,
        table(["Alias", "Id", "State", "Owner", "Size", "Build", "Created", "Error"], rows, { id: "templates-table" }),
        disk.layers_bytes !== undefined ? h("p", { class: "muted small" }, `Layer cache: ${disk.layers} layers, ${bytes(disk.layers_bytes)}`) : null,
      );
      if (selected) stopBuilds = buildsView(body, selected);
    } catch (err) {
      flash(err.message);
    }
  })();
  return () => {
    if (stopBuilds) stopBuilds();
  };
}
