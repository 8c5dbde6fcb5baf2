// The codex-broker dashboard: polls ./state every 2 seconds and draws it.
// Read-only; every text goes in through textContent, never as markup.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#3d6fd8", "#2f8f5b", "#c98a12", "#8e44ad", "#c2413b", "#16a2b8"];

let state = null;
let clockSkew = 0; // the daemon's clock minus this browser's, seconds
let lastOk = 0;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function daemonNow() {
  return Date.now() / 1000 + clockSkew;
}

// "3 d 4 h", "1 h 20 m", "45 s".
function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} m`;
  if (m > 0) return `${m} m`;
  return `${s} s`;
}

function relative(at) {
  const left = at - daemonNow();
  return left >= 0 ? `in ${span(left)}` : `${span(-left)} ago`;
}

function percent(n) {
  return `${Math.round(n * 10) / 10}%`;
}

function paceText(w) {
  if (!w.pace) return "";
  if (w.pace.runs_out_at !== undefined) {
    const early = w.resets_at - w.pace.runs_out_at;
    return early > 0
      ? `on pace to run out ${span(early)} before the reset`
      : "used up until the reset";
  }
  return `on pace: ${percent(w.pace.projected_percent)} by the reset`;
}

function resets(node) {
  const latest = node.dataset.known === "true" ? "" : " at the latest";
  return `resets ${relative(Number(node.dataset.resetsAt))}${latest}`;
}

function countdown(w) {
  const node = el("span", { class: "countdown", "data-resets-at": String(w.resets_at),
    "data-known": String(w.reset_known) });
  node.textContent = resets(node);
  return node;
}

function windowPanel(w) {
  const fill = el("div", { class: w.used_percent >= 90 ? "fill high" : "fill" });
  fill.style.width = `${Math.min(100, w.used_percent)}%`;
  const meter = el("div", { class: "meter" }, fill);
  if (w.pace) {
    const tick = el("div", { class: "elapsed", title: "share of the window gone by" });
    tick.style.left = `${w.pace.elapsed_percent}%`;
    meter.append(tick);
  }
  const short = w.pace && w.pace.runs_out_at !== undefined;
  return el("div", { class: "window", "data-window": w.name },
    el("div", { class: "head" },
      el("span", { class: "name", text: `${w.name}: ${percent(w.used_percent)} used` }),
      countdown(w)),
    meter,
    el("div", { class: short ? "pace short" : "pace", text: paceText(w) }));
}

function accountPanel(a) {
  const rows = [
    ["id", a.id], ["email", a.email || "—"], ["plan", a.plan || "—"],
    ["role", a.role + (a.published ? " · in auth.json" : "")],
    ["token", a.expires_at ? `expires ${relative(a.expires_at)}` : "—"],
  ];
  const list = el("dl");
  for (const [term, value] of rows) {
    list.append(el("dt", { text: term }), el("dd", { class: `f-${term}`, text: value }));
  }
  const card = el("div", { class: "account", "data-account": a.id },
    el("h3", {}, el("span", { class: "label", text: a.name }),
      el("span", { class: `state ${a.state}`, text: a.state.replace(/_/g, " ") })),
    list);
  if (a.state_reason) card.append(el("div", { class: "quiet", text: a.state_reason }));
  if (a.windows.length === 0) card.append(el("div", { class: "quiet", text: "no quota seen yet" }));
  for (const w of a.windows) card.append(windowPanel(w));
  return card;
}

function drawChart(usage, colorOf) {
  const width = 960, height = 180, left = 48, bottom = 20;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "tokens per hour per account" });
  const totals = usage.hours.map((_, i) =>
    usage.series.reduce((sum, s) => sum + s.tokens[i], 0));
  const top = Math.max(1, ...totals);
  const slot = (width - left) / usage.hours.length;
  chart.append(svg("text", { x: 4, y: 12 }));
  chart.lastChild.textContent = top.toLocaleString();
  usage.hours.forEach((hour, i) => {
    let y = height - bottom;
    for (const s of usage.series) {
      const h = (s.tokens[i] / top) * (height - bottom - 16);
      if (h <= 0) continue;
      y -= h;
      const bar = svg("rect", { x: left + i * slot + 1, y, width: slot - 2, height: h,
        fill: colorOf(s.account_id), "data-account": s.account_id });
      const tip = svg("title", {});
      tip.textContent = `${s.account_id}: ${s.tokens[i].toLocaleString()} tokens, ` +
        `${s.requests[i]} requests`;
      bar.append(tip);
      chart.append(bar);
    }
    if (i % 3 === 0) {
      const label = svg("text", { x: left + i * slot, y: height - 6 });
      label.textContent = new Date(hour * 1000).toTimeString().slice(0, 5);
      chart.append(label);
    }
  });
  return chart;
}

function render() {
  document.getElementById("version").textContent = `v${state.version}`;
  const problems = document.getElementById("problems");
  problems.hidden = state.problems.length === 0;
  problems.querySelector("ul").replaceChildren(...state.problems.map((p) =>
    el("li", { "data-code": p.code }, el("span", { text: p.message }),
      el("span", { class: "fix", text: `Fix: ${p.fix}` }))));
  document.getElementById("accounts").replaceChildren(...state.accounts.map(accountPanel));
  const ids = state.accounts.map((a) => a.id);
  const colorOf = (id) => COLORS[Math.max(0, ids.indexOf(id)) % COLORS.length];
  document.getElementById("chart").replaceChildren(drawChart(state.usage, colorOf));
  document.getElementById("legend").replaceChildren(...state.usage.series.map((s) => {
    const swatch = el("span");
    swatch.style.background = colorOf(s.account_id);
    return el("li", {}, swatch, s.account_id);
  }));
  document.querySelector("#journal tbody").replaceChildren(...state.journal.map((e) =>
    el("tr", {}, el("td", { text: e.time }), el("td", { text: e.account }),
      el("td", { text: e.event }), el("td", { text: e.by }))));
}

// Between polls, only the clocks move.
function tick() {
  for (const node of document.querySelectorAll(".countdown")) node.textContent = resets(node);
  const updated = document.getElementById("updated");
  if (lastOk) {
    const age = (Date.now() - lastOk) / 1000;
    updated.textContent = `updated ${span(age)} ago`;
    updated.classList.toggle("stale", age > 10);
  }
}

async function poll() {
  try {
    const answer = await fetch("state", { cache: "no-store", credentials: "omit" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    state = await answer.json();
    clockSkew = state.now - Date.now() / 1000;
    lastOk = Date.now();
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    render();
  } catch (e) {
    document.getElementById("updated").textContent = `cannot reach the daemon (${e.message})`;
  }
  tick();
}

poll();
setInterval(poll, POLL_MS);
setInterval(tick, 1000);
