// DOM building without innerHTML: every value from the API becomes a text node, so
// nothing a sandbox writes (file names, command lines, audit fields) is ever parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function age(iso) {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

export function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().slice(11, 23);
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows),
  );
}

let flashTimer = null;
export function flash(message, kind = "error") {
  const el = document.getElementById("flash");
  el.className = kind;
  el.textContent = message;
  el.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => {
    el.hidden = true;
  }, 8000);
}

// A button that asks for a second click before it acts (no window.confirm dialogs).
export function confirmButton(label, confirmLabel, action, { id, danger = true } = {}) {
  const wrap = h("span", { class: "confirm" });
  const main = h("button", { type: "button", id, class: danger ? "danger" : "" }, label);
  const yes = h("button", { type: "button", id: id && `${id}-confirm`, class: "danger" }, confirmLabel);
  const no = h("button", { type: "button", class: "quiet" }, "Cancel");
  const ask = h("span", { class: "ask", hidden: true }, yes, no);
  main.addEventListener("click", () => {
    main.hidden = true;
    ask.hidden = false;
  });
  no.addEventListener("click", () => {
    main.hidden = false;
    ask.hidden = true;
  });
  yes.addEventListener("click", async () => {
    yes.disabled = true;
    try {
      await action();
    } finally {
      yes.disabled = false;
      main.hidden = false;
      ask.hidden = true;
    }
  });
  wrap.append(main, ask);
  return wrap;
}
