// Warren's web UI: a client of /api and nothing else. Pure helpers live in lib.js.
import * as L from "./lib.js";

/** Seconds between refreshes (0 = off), chosen in the header and kept in localStorage. */
let refreshSec = L.parseRefresh(localStorage.getItem("warren.refresh"));
const $ = (sel, root = document) => root.querySelector(sel);

// ---------- session ----------

const session = {
  get auth() { return sessionStorage.getItem("warren.auth"); },
  get user() { return sessionStorage.getItem("warren.user") || ""; },
  get tags() { return L.tagList(sessionStorage.getItem("warren.tags") || ""); },
  /** Minutes of inactivity before logging out (management.login_session_timeout, from /api/whoami). */
  get timeoutMin() { return L.sessionTimeoutMin(sessionStorage.getItem("warren.timeout")); },
  save(auth, user, tags, timeoutMin) {
    sessionStorage.setItem("warren.auth", auth);
    sessionStorage.setItem("warren.user", user);
    sessionStorage.setItem("warren.tags", L.tagList(tags).join(","));
    sessionStorage.setItem("warren.timeout", String(L.sessionTimeoutMin(timeoutMin)));
    if (!sessionStorage.getItem("warren.active")) this.touch();
  },
  /** The user did something (a click, a key, a page change): the timeout starts again. */
  touch() { sessionStorage.setItem("warren.active", String(Date.now())); },
  get expired() { return !!this.auth && L.sessionExpired(sessionStorage.getItem("warren.active"), Date.now(), this.timeoutMin); },
  clear() {
    for (const k of ["warren.auth", "warren.user", "warren.tags", "warren.timeout", "warren.active"]) sessionStorage.removeItem(k);
  },
};

/** Log out once the session has been inactive for the timeout (checked every few seconds and on page changes). */
function checkExpiry() {
  if (!session.expired) return false;
  const min = session.timeoutMin;
  session.clear();
  showLogin(L.expiredMessage(min));
  return true;
}

let vhost = sessionStorage.getItem("warren.vhost") || "";

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.reason || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** One API call. `credentials: "omit"` keeps the browser from showing its own login box on a 401. */
async function api(method, path, body, { auth = session.auth, headers = {} } = {}) {
  const init = { method, credentials: "omit", headers: { Authorization: auth, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!r.ok) {
    const e = new ApiError(r.status, data);
    // Bad credentials (the password changed, the user was deleted): back to the login form.
    if (r.status === 401 && data && data.error === "not_authorized" && auth === session.auth) {
      session.clear();
      showLogin("Your session ended: log in again.");
    }
    throw e;
  }
  return data;
}
const GET = (p) => api("GET", p);

// ---------- DOM helpers ----------

/** h("a", {href: "#"}, "text", child...) */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 4000);
}

/** Run an action from a button or form; report success or the API's reason. */
async function act(what, fn) {
  try {
    const r = await fn();
    toast(what);
    return r ?? true;
  } catch (e) {
    toast(`${what} failed: ${e.message}`, true);
    return null;
  }
}

function field(label, input) {
  return h("label", {}, label, input);
}
function check(label, attrs = {}) {
  return h("label", { class: "inline" }, h("input", { type: "checkbox", ...attrs }), label);
}
function formData(form) {
  const o = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    o[el.name] = el.type === "checkbox" ? el.checked : el.value;
  }
  return o;
}
function vhostSelect(name = "vhost", selected = vhost) {
  const s = h("select", { name });
  for (const v of vhostNames) s.append(h("option", { value: v, selected: v === (selected || "/") }, v));
  return s;
}
function table(columns, rows, { sort, onSort, id } = {}) {
  const head = h("tr", {}, columns.map((c) => {
    const cls = [c.num ? "num" : "", c.sort ? "sortable" : "", c.sort && sort && sort.sort === c.sort ? "sorted" : "",
      c.sort && sort && sort.sort === c.sort && sort.sortReverse ? "rev" : ""].join(" ").trim();
    return h("th", { class: cls, "data-sort": c.sort, onclick: c.sort && onSort ? () => onSort(c.sort) : null }, c.title);
  }));
  const body = h("tbody", {}, rows.length ? rows.map((r) => h("tr", { "data-name": r.name ?? null, "data-vhost": r.vhost ?? null },
    columns.map((c) => h("td", { class: (c.num ? "num " : "") + (c.wrap ? "wrap" : "") }, c.cell(r)))))
    : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing here.")));
  return h("div", { class: "table-wrap" }, h("table", { id }, h("thead", {}, head), body));
}
function stat(label, value, id) {
  return h("div", { class: "stat" }, h("b", { id }, value), h("span", {}, label));
}
function rate(o, key) {
  const d = o && o.message_stats && o.message_stats[`${key}_details`];
  return d ? d.rate : 0;
}

// ---------- charts: a small hand-written SVG line chart ----------

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}
/** series: [{label, points: [{t, v}]}]; fmt formats the axis and legend values. */
function chart(title, series, fmt = L.fmtNum, id = null) {
  const W = 600, H = 120, PAD = 40;
  const all = series.flatMap((s) => s.points);
  const now = Date.now();
  const tMax = all.length ? Math.max(...all.map((p) => p.t)) : now;
  const tMin = Math.min(tMax - 60000, ...(all.length ? all.map((p) => p.t) : [tMax - 60000]));
  const vMax = L.niceMax(Math.max(0, ...all.map((p) => p.v)));
  const root = svg("svg", { viewBox: `0 0 ${W + PAD} ${H + 14}`, class: "chart", preserveAspectRatio: "none", role: "img" });
  root.setAttribute("aria-label", title);
  const g = svg("g", { transform: `translate(${PAD},4)` });
  g.append(svg("line", { x1: 0, y1: H, x2: W, y2: H, class: "axis" }), svg("line", { x1: 0, y1: 0, x2: W, y2: 0, class: "axis" }));
  const top = svg("text", { x: -4, y: 8, "text-anchor": "end" });
  top.textContent = fmt(vMax);
  const bottom = svg("text", { x: -4, y: H, "text-anchor": "end" });
  bottom.textContent = "0";
  g.append(top, bottom);
  series.forEach((s, i) => {
    g.append(svg("path", { d: L.linePath(s.points, W, H, tMin, tMax, vMax), class: `s${i + 1}`, "vector-effect": "non-scaling-stroke" }));
  });
  root.append(g);
  const legend = h("div", { class: "legend" }, series.map((s, i) => {
    // The legend shows the API's current figure when given (samples lag by up to 5 s).
    const last = s.now ?? (s.points.length ? s.points[s.points.length - 1].v : 0);
    return h("span", {}, h("i", { class: `s${i + 1}` }), `${s.label} `, h("b", { "data-series": s.label }, fmt(last)));
  }));
  return h("div", { class: "card", id }, h("h2", {}, title), root, legend);
}

/** Series kept by the page between refreshes, for objects whose API reply has no samples. */
const history = new Map();
function track(key, value, t = Date.now()) {
  const s = L.pushPoint(history.get(key) || [], t, value, 60);
  history.set(key, s);
  return s;
}
/**
 * A series from the API's samples when present, else from the page's own history of
 * `current` (the figure itself: a rate, or a length; not the length's rate of change).
 */
function seriesOf(key, details, rateFromCounter = false, current = undefined) {
  if (details && Array.isArray(details.samples) && details.samples.length > 1) {
    return rateFromCounter ? L.samplesToPoints(details.samples, true) : L.samplesToPoints(details.samples);
  }
  return track(key, current ?? (details ? details.rate : 0));
}

// ---------- routing ----------

let timer = null;
let generation = 0;
let vhostNames = ["/"];

function go(page, args = [], query = {}) {
  location.hash = L.buildHash(page, args, query);
}

const PAGES = {
  overview: pageOverview,
  queues: pageQueues,
  exchanges: pageExchanges,
  connections: pageConnections,
  channels: pageChannels,
  consumers: pageConsumers,
  admin: pageAdmin,
};

async function render() {
  clearInterval(timer);
  timer = null;
  const gen = ++generation;
  const route = L.parseHash(location.hash);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === route.page);
  const view = $("#view");
  view.replaceChildren();
  const page = PAGES[route.page];
  if (!page) {
    view.append(h("div", { class: "card notice" }, h("h1", {}, "Not found"), h("p", {}, "There is no such page. "), h("a", { href: "#/overview" }, "Overview")));
    return;
  }
  if (!L.canSee(session.tags, route.page)) {
    view.append(h("div", { class: "card notice", id: "not-authorised" }, h("h1", {}, "Not authorised"),
      h("p", {}, `User ${session.user} (tags: ${session.tags.join(", ") || "none"}) may not see this page.`)));
    return;
  }
  const ctx = {
    route,
    view,
    alive: () => gen === generation,
    every(fn) {
      const tick = async () => {
        if (gen !== generation) return;
        try { await fn(); } catch (e) { if (gen === generation) toast(e.message, true); }
      };
      tick();
      if (refreshSec > 0) timer = setInterval(tick, refreshSec * 1000);
    },
  };
  try {
    await page(ctx);
  } catch (e) {
    if (gen === generation) view.append(h("div", { class: "card error", id: "page-error" }, e.status === 404 ? "Not found." : e.message));
  }
}

// ---------- overview ----------

async function pageOverview(ctx) {
  const counts = h("div", { class: "stats" });
  const charts = h("div", { class: "grid" });
  const nodes = h("div");
  const listeners = h("div");
  const cluster = h("div", { id: "cluster-panel", hidden: true });
  const alarms = h("div", { class: "card error alarm", id: "alarm-banner", hidden: true });
  ctx.view.append(h("h1", {}, "Overview"), alarms, h("div", { class: "card" }, counts), charts,
    h("h2", {}, "Nodes"), nodes, cluster, h("h2", {}, "Listeners"), listeners);
  const q = "?msg_rates_age=60&msg_rates_incr=5&lengths_age=60&lengths_incr=5";
  // A node that is not clustered answers 404 (and a user without the monitoring tag 403):
  // asked once per visit then, not at every refresh.
  let clustered = true;
  const clusterStatus = () => (clustered ? GET("/api/warren/cluster").catch((e) => {
    if (e.status === 404 || e.status === 403) clustered = false;
    return null;
  }) : null);
  ctx.every(async () => {
    const [o, ns0, cs] = await Promise.all([GET("/api/overview" + q), GET("/api/nodes").catch(() => []), clusterStatus()]);
    if (!ctx.alive()) return;
    const ns = L.nodeRows(ns0, cs);
    const ot = o.object_totals || {};
    const qt = o.queue_totals || {};
    counts.replaceChildren(
      stat("connections", L.fmtNum(ot.connections), "count-connections"),
      stat("channels", L.fmtNum(ot.channels), "count-channels"),
      stat("exchanges", L.fmtNum(ot.exchanges), "count-exchanges"),
      stat("queues", L.fmtNum(ot.queues), "count-queues"),
      stat("consumers", L.fmtNum(ot.consumers), "count-consumers"),
      stat("ready", L.fmtNum(qt.messages_ready || 0), "count-ready"),
      stat("unacked", L.fmtNum(qt.messages_unacknowledged || 0), "count-unacked"),
      stat("total", L.fmtNum(qt.messages || 0), "count-messages"),
      stat("version", `${o.product_name || "Warren"} ${o.product_version || ""}`),
    );
    // A resource alarm is said above everything: publishers are blocked while it lasts.
    const on = ns.flatMap((n) => L.nodeAlarms(n).map((a) => `${a} alarm on ${n.name}`));
    alarms.hidden = on.length === 0;
    alarms.replaceChildren(h("b", {}, on.join("; ")), " — connections that publish are blocked until it clears (see Connections).");
    const ms = o.message_stats || {};
    const rateSeries = (key, label) => ({ label, points: seriesOf(`ov.${key}`, ms[`${key}_details`], true, rate(o, key)), now: rate(o, key) });
    charts.replaceChildren(
      chart("Message rates", [rateSeries("publish", "publish"), rateSeries("deliver_get", "deliver/get"), rateSeries("ack", "ack")], L.fmtRate, "chart-rates"),
      chart("Queued messages", [
        { label: "ready", points: seriesOf("ov.ready", qt.messages_ready_details, false, qt.messages_ready || 0), now: qt.messages_ready || 0 },
        { label: "unacked", points: seriesOf("ov.unacked", qt.messages_unacknowledged_details, false, qt.messages_unacknowledged || 0), now: qt.messages_unacknowledged || 0 },
      ], L.fmtNum, "chart-queued"),
    );
    // Other members' figures live on those nodes (the API does not fetch them): "—" here.
    const fig = (f) => (n) => (L.hasFigures(n) ? f(n) : h("span", { class: "muted" }, "—"));
    nodes.replaceChildren(table([
      { title: "Name", cell: (n) => [n.name, n.leader ? " " : "", n.leader ? h("span", { class: "badge ok leader" }, "leader") : ""] },
      { title: "State", cell: (n) => (n.running === false ? h("span", { class: "badge bad" }, "not running") : h("span", { class: "badge ok" }, "running")) },
      { title: "Memory", cell: fig((n) => `${L.fmtBytes(n.mem_used)} of ${L.fmtBytes(n.mem_limit)}`) },
      { title: "Disk free", cell: fig((n) => `${L.fmtBytes(n.disk_free)} (limit ${L.fmtBytes(n.disk_free_limit)})`) },
      { title: "File descriptors", cell: fig((n) => `${L.fmtNum(n.fd_used)} of ${L.fmtNum(n.fd_total)}`) },
      { title: "Uptime", cell: fig((n) => L.fmtDuration((n.uptime || 0) / 1000)) },
      { title: "Alarms", cell: fig((n) => (L.nodeAlarms(n).length
        ? h("span", { class: "badge bad" }, L.nodeAlarms(n).join(", "))
        : h("span", { class: "badge ok" }, "none"))) },
    ], ns, { id: "nodes" }));
    cluster.hidden = !cs;
    if (cs) cluster.replaceChildren(clusterPanel(cs));
    listeners.replaceChildren(table([
      { title: "Protocol", cell: (l) => l.protocol },
      { title: "Address", cell: (l) => l.ip_address },
      { title: "Port", cell: (l) => l.port, num: true },
    ], o.listeners || [], { id: "listeners" }));
  });
}

/** The Cluster panel: name, leader, term, and each member as this node sees it. */
function clusterPanel(cs) {
  const note = cs.replication_known
    ? "Lag: log entries a member lacks, as this node (the leader) tracks it."
    : `Lag is known on the leader only${cs.leader ? ` (${cs.leader})` : ""}: open its UI to see it.`;
  return h("div", {},
    h("h2", {}, "Cluster"),
    h("div", { class: "card" },
      h("p", {}, "Name ", h("b", { id: "cluster-name" }, cs.cluster_name),
        " · leader ", h("b", { id: "cluster-leader" }, cs.leader || "none"),
        " · term ", h("b", { id: "cluster-term" }, L.fmtNum(cs.term)),
        " · applied ", h("b", {}, L.fmtNum(cs.log && cs.log.last_applied_index)),
        " of committed ", h("b", {}, L.fmtNum(cs.log && cs.log.commit_index)),
        commitLatency(cs.log)),
      raftMembers(cs.members, cs.node, "cluster-members"),
      h("p", { class: "muted" }, note)));
}

/** On a group's leader, how long its last entry took to commit (nothing elsewhere). */
function commitLatency(log) {
  const us = log && log.commit_latency_us;
  if (!us) return "";
  return h("span", {}, " · last commit ", h("b", {}, us < 1000 ? `${us} µs` : `${(us / 1000).toFixed(1)} ms`));
}

/** A Raft group's members as this node (`me`) sees them: role, type, state, replication. */
function raftMembers(members, me, id) {
  return table([
    { title: "Member", cell: (m) => [m.name, m.name === me ? h("span", { class: "muted" }, " (this node)") : ""] },
    { title: "Role", cell: (m) => (m.leader ? "leader" : m.type === "learner" ? "learner" : "follower") },
    { title: "Type", cell: (m) => m.type },
    { title: "State", cell: (m) => (m.running ? h("span", { class: "badge ok" }, "running") : h("span", { class: "badge bad" }, "not running")) },
    { title: "Matched index", num: true, cell: (m) => (m.matched_index == null ? "" : L.fmtNum(m.matched_index)) },
    { title: "Lag", cell: (m) => (m.lag > 0 ? h("span", { class: "badge warn" }, L.lagText(m)) : L.lagText(m)) },
  ], members || [], { id });
}

/** A quorum queue's own Raft group (`/api/warren/cluster`'s `quorum_queues` entry). */
function queueGroupCard(g, me) {
  const note = g.replication_known
    ? "Voters count toward a confirm's majority; learners follow so that consumers on their node are served there."
    : `Lag is known on the queue's leader only${g.leader ? ` (${g.leader})` : ""}: open its UI to see it.`;
  return [
    h("h2", {}, "Replication"),
    h("p", {}, "Leader ", h("b", { id: "queue-raft-leader" }, g.leader || "none"),
      " · term ", h("b", {}, L.fmtNum(g.term)),
      " · applied ", h("b", {}, L.fmtNum(g.log && g.log.last_applied_index)),
      " of committed ", h("b", {}, L.fmtNum(g.log && g.log.commit_index)),
      commitLatency(g.log),
      g.raft_state === "stopped" ? h("span", { class: "badge bad" }, ` stopped: ${g.raft_error}`) : ""),
    raftMembers(g.members, me, "queue-raft-members"),
    h("p", { class: "muted" }, note),
  ];
}

// ---------- paged lists ----------

/** A paged, sortable, filterable list whose state lives in the URL hash's query. */
function pagedList(ctx, { page, path, columns, id, defaultSort = "", toolbar = null, onItems = null, fields = null }) {
  const q = ctx.route.query;
  const st = {
    page: Number(q.page) || 1,
    pageSize: Number(q.page_size) || 100,
    name: q.name || "",
    useRegex: q.use_regex === "true",
    sort: q.sort ?? defaultSort,
    sortReverse: q.sort_reverse === "true",
  };
  const hashQuery = () => ({
    page: st.page > 1 ? st.page : "", page_size: st.pageSize !== 100 ? st.pageSize : "", name: st.name,
    use_regex: st.useRegex ? "true" : "", sort: st.sort, sort_reverse: st.sortReverse ? "true" : "",
  });
  const nav = () => go(page, ctx.route.args, hashQuery());
  const filter = h("input", { type: "search", placeholder: "Filter by name", value: st.name, id: `${id}-filter` });
  const regex = h("input", { type: "checkbox", checked: st.useRegex });
  const size = h("select", {}, [20, 50, 100, 200, 500].map((n) => h("option", { value: n, selected: n === st.pageSize }, n)));
  const form = h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); st.name = filter.value; st.useRegex = regex.checked; st.page = 1; nav(); } },
    filter, h("label", { class: "inline" }, regex, "regex"), h("label", { class: "inline" }, "page size", size), h("button", { type: "submit" }, "Filter"));
  size.addEventListener("change", () => { st.pageSize = Number(size.value); st.page = 1; nav(); });
  const info = h("div", { class: "muted", id: `${id}-info` });
  const pager = h("div", { class: "pager" });
  const body = h("div");
  const onSort = (col) => { Object.assign(st, L.nextSort(st.sort, st.sortReverse, col)); st.page = 1; nav(); };
  const box = h("div", { class: "card" }, form, toolbar, info, body, pager);
  let last = null;
  const draw = () => {
    if (!last) return;
    if (onItems) onItems(last.items);
    const cols = typeof columns === "function" ? columns() : columns;
    body.replaceChildren(table(cols, last.items, { sort: st, onSort, id }));
  };
  const load = async () => {
    let r;
    try {
      // Only the fields the shown columns read (the API's `columns`), when they say so.
      const cols = fields ? fields() : "";
      r = await GET(path() + L.listQuery({ ...st, columns: cols }));
    } catch (e) {
      if (!ctx.alive()) return;
      // Objects went away while this page was open: back to the first page.
      if (e.status === 400 && e.message === "page out of range" && st.page > 1) {
        st.page = 1;
        return nav();
      }
      // A bad regex, a refused vhost...: said where the list would be.
      info.className = "error";
      info.textContent = e.message;
      body.replaceChildren();
      pager.replaceChildren();
      return;
    }
    if (!ctx.alive()) return;
    info.className = "muted";
    info.textContent = `${L.fmtNum(r.filtered_count)} of ${L.fmtNum(r.total_count)} shown in ${r.page_count} page(s)` +
      (st.name ? ` (filter "${st.name}")` : "");
    last = r;
    draw();
    pager.replaceChildren(...(r.page_count > 1 ? L.pageLinks(r.page, r.page_count).map((p) => p === "…"
      ? h("span", {}, "…")
      : h("button", { type: "button", "aria-current": p === r.page ? "page" : null, onclick: () => { st.page = p; nav(); } }, p)) : []));
  };
  return { box, load, draw };
}

/**
 * The column groups of a list, picked with checkboxes and kept per user in localStorage
 * (`warren.columns.<list>.<user>`). `redraw` runs after a change; `groups()` is the choice.
 */
function columnPicker(list, redraw) {
  const key = L.columnPrefsKey(session.user, list);
  let groups = L.parseColumnChoice(localStorage.getItem(key), list);
  const el = h("span", { class: "row column-picker", id: list === "queues" ? "column-picker" : `${list}-column-picker` }, "Columns:",
    L.COLUMN_GROUPS[list][0].map(([k, t]) => {
      const box = h("input", { type: "checkbox", id: list === "queues" ? `col-${k}` : `${list}-col-${k}`, checked: groups.includes(k) });
      box.addEventListener("change", () => {
        groups = L.toggleGroup(groups, k, box.checked, list);
        localStorage.setItem(key, JSON.stringify(groups));
        redraw();
      });
      return h("label", { class: "inline" }, box, t);
    }));
  return { el, groups: () => groups };
}

/** A connection's or channel's state as a badge (running, flow, blocked...). */
function stateBadge(state) {
  return h("span", { class: `badge state ${L.stateClass(state)}`.trim(), "data-state": state || "" }, state || "unknown");
}

function vhostPath(kind) {
  return () => (vhost ? L.apiPath(kind, vhost) : `/api/${kind}`);
}

// ---------- queues ----------

function queueLink(q) {
  return h("a", { href: L.buildHash("queues", [q.vhost, q.name]) }, q.name);
}
function features(o) {
  const f = [];
  if (o.durable) f.push("D");
  if (o.auto_delete) f.push("AD");
  if (o.exclusive) f.push("excl");
  for (const k of Object.keys(o.arguments || {})) f.push(k.replace(/^x-/, ""));
  return f.join(" ");
}

// `fields`: what each cell reads, sent as the API's `columns` so a page of queues carries
// only those fields.
const QUEUE_COLUMNS = [
  { title: "Virtual host", sort: "vhost", fields: ["vhost"], cell: (q) => q.vhost },
  { title: "Name", sort: "name", fields: ["name"], cell: queueLink },
  { group: "overview", title: "Type", sort: "type", fields: ["type"], cell: (q) => q.type },
  { group: "overview", title: "Features", fields: ["durable", "auto_delete", "exclusive", "arguments"], cell: features },
  { group: "overview", title: "Policy", sort: "policy", fields: ["policy", "operator_policy"], cell: (q) => [q.policy, q.operator_policy && `op: ${q.operator_policy}`].filter(Boolean).join(" ") },
  { group: "overview", title: "State", sort: "state", fields: ["state"], cell: (q) => q.state },
  { group: "overview", title: "Consumers", sort: "consumers", num: true, fields: ["consumers"], cell: (q) => L.fmtNum(q.consumers) },
  { group: "messages", title: "Ready", sort: "messages_ready", num: true, fields: ["messages_ready"], cell: (q) => h("span", { class: "ready" }, L.fmtNum(q.messages_ready)) },
  { group: "messages", title: "Unacked", sort: "messages_unacknowledged", num: true, fields: ["messages_unacknowledged"], cell: (q) => L.fmtNum(q.messages_unacknowledged) },
  { group: "messages", title: "Total", sort: "messages", num: true, fields: ["messages"], cell: (q) => h("span", { class: "total" }, L.fmtNum(q.messages)) },
  { group: "message_bytes", title: "Ready bytes", sort: "message_bytes_ready", num: true, fields: ["message_bytes_ready"], cell: (q) => h("span", { class: "bytes-ready" }, L.fmtBytes(q.message_bytes_ready ?? 0)) },
  { group: "message_bytes", title: "Unacked bytes", sort: "message_bytes_unacknowledged", num: true, fields: ["message_bytes_unacknowledged"], cell: (q) => L.fmtBytes(q.message_bytes_unacknowledged ?? 0) },
  { group: "message_bytes", title: "Total bytes", sort: "message_bytes", num: true, fields: ["message_bytes"], cell: (q) => L.fmtBytes(q.message_bytes ?? 0) },
  { group: "rates", title: "Incoming", sort: "message_stats.publish_details.rate", num: true, fields: ["message_stats.publish_details"], cell: (q) => L.fmtRate(rate(q, "publish")) },
  { group: "rates", title: "Deliver/get", sort: "message_stats.deliver_get_details.rate", num: true, fields: ["message_stats.deliver_get_details"], cell: (q) => L.fmtRate(rate(q, "deliver_get")) },
  { group: "rates", title: "Ack", sort: "message_stats.ack_details.rate", num: true, fields: ["message_stats.ack_details"], cell: (q) => L.fmtRate(rate(q, "ack")) },
];

async function pageQueues(ctx) {
  if (ctx.route.args.length >= 2) return pageQueue(ctx, ctx.route.args[0], ctx.route.args[1]);
  // The column groups shown: each user's own choice, kept in localStorage.
  const picker = columnPicker("queues", () => list.load());
  // The bulk selection: keys of (vhost, name), kept across refreshes and pages.
  let selection = [];
  let shown = [];
  const count = h("span", { id: "selected-count", class: "muted" });
  const bulkPurge = h("button", { type: "button", class: "danger", id: "bulk-purge" }, "Purge selected");
  const bulkDelete = h("button", { type: "button", class: "danger", id: "bulk-delete" }, "Delete selected");
  const bulkClear = h("button", { type: "button", id: "bulk-clear" }, "Clear selection");
  const updateBar = () => {
    count.textContent = `${selection.length} selected`;
    for (const b of [bulkPurge, bulkDelete, bulkClear]) b.disabled = selection.length === 0;
  };
  const toolbar = h("div", { class: "row toolbar" }, count, bulkPurge, bulkDelete, bulkClear, h("span", { class: "spacer" }), picker.el);
  const keyOf = (q) => L.selectionKey(q.vhost, q.name);
  const selectAll = () => {
    const all = h("input", { type: "checkbox", id: "select-all", title: "Select every queue shown" });
    const state = L.selectionState(selection, shown.map(keyOf));
    all.checked = state === "all";
    all.indeterminate = state === "some";
    all.addEventListener("change", () => { selection = L.setSelected(selection, shown.map(keyOf), all.checked); list.draw(); updateBar(); });
    return all;
  };
  const columns = () => [
    { title: selectAll(), cell: (q) => {
      const b = h("input", { type: "checkbox", class: "select-row", "data-key": keyOf(q), checked: selection.includes(keyOf(q)) });
      b.addEventListener("change", () => { selection = L.setSelected(selection, [keyOf(q)], b.checked); list.draw(); updateBar(); });
      return b;
    } },
    ...L.visibleColumns(QUEUE_COLUMNS, picker.groups()),
  ];
  const list = pagedList(ctx, { page: "queues", path: vhostPath("queues"), id: "queues", columns, toolbar, onItems: (items) => { shown = items; },
    fields: () => L.columnsParam(L.visibleColumns(QUEUE_COLUMNS, picker.groups())) });
  const bulk = async (verb, method, suffix) => {
    const n = selection.length;
    if (!n || !confirm(L.bulkConfirmText(verb, n))) return;
    const targets = selection.map(L.fromSelectionKey);
    const results = await Promise.allSettled(targets.map((t) => api(method, L.apiPath("queues", t.vhost, t.name) + suffix)));
    const failed = results.map((r, i) => [r, targets[i]]).filter(([r]) => r.status === "rejected");
    if (failed.length) {
      toast(`${verb}: ${n - failed.length} of ${n} done; failed: ` + failed.map(([r, t]) => `${t.name} (${r.reason.message})`).join(", "), true);
    } else {
      toast(`${verb}: ${n} queue${n === 1 ? "" : "s"} done`);
    }
    if (verb === "Delete") selection = selection.filter((k, i) => results[i].status === "rejected");
    updateBar();
    await list.load();
  };
  bulkPurge.addEventListener("click", () => bulk("Purge", "DELETE", "/contents"));
  bulkDelete.addEventListener("click", () => bulk("Delete", "DELETE", ""));
  bulkClear.addEventListener("click", () => { selection = []; updateBar(); list.draw(); });
  updateBar();
  ctx.view.append(h("h1", {}, "Queues"), list.box, addQueueForm());
  ctx.every(list.load);
}

function argumentsBox(helpers) {
  const ta = h("textarea", { name: "arguments", placeholder: "x-message-ttl = 60000", rows: 3, cols: 40 });
  const help = h("div", { class: "helpers" }, "Add: ", helpers.map(([k, v]) => h("button", {
    type: "button", onclick: () => { ta.value += (ta.value && !ta.value.endsWith("\n") ? "\n" : "") + `${k} = ${v}`; ta.focus(); },
  }, k)));
  return h("div", {}, field("Arguments (one key = value a line)", ta), help);
}

function addQueueForm() {
  const form = h("form", { id: "add-queue", class: "card" });
  form.append(h("h2", {}, "Add a queue"),
    h("div", { class: "row" }, field("Virtual host", vhostSelect()), field("Name", h("input", { name: "name", required: true })),
      check("durable", { name: "durable", checked: true }), check("auto-delete", { name: "auto_delete" })),
    argumentsBox(L.QUEUE_ARGUMENT_HELPERS),
    h("button", { type: "submit", class: "primary" }, "Add queue"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    const a = L.parseArguments(d.arguments);
    if (a.error) return toast(a.error, true);
    const ok = await act(`Queue ${d.name} declared`, () => api("PUT", L.apiPath("queues", d.vhost, d.name), { durable: d.durable, auto_delete: d.auto_delete, arguments: a.args }));
    if (ok) go("queues", [d.vhost, d.name]);
  });
  return form;
}

function messageView(m, i) {
  const p = m.properties || {};
  const origin = L.deadLetterOrigin(p.headers);
  return h("div", { class: "msg", "data-index": i },
    h("div", {}, h("b", {}, `#${i + 1} `), `exchange "${m.exchange}", routing key "${m.routing_key}", `,
      h("span", { class: "redelivered" }, `redelivered: ${m.redelivered}`), `, ${L.fmtNum(m.payload_bytes)} bytes, `,
      `${L.fmtNum(m.message_count)} left after it`),
    origin ? h("div", { class: "muted" }, `dead-lettered (${origin.reason}) from queue "${origin.queue}" via exchange "${origin.exchange}" key "${origin.routing_key}"`) : null,
    Object.keys(p).length ? h("pre", { class: "props" }, JSON.stringify(p, null, 2)) : null,
    h("pre", { class: "payload" }, m.payload));
}

async function pageQueue(ctx, v, name) {
  const base = L.apiPath("queues", v, name);
  const figures = h("div", { class: "stats" });
  const details = h("div");
  const charts = h("div", { class: "grid" });
  const consumers = h("div");
  const bindings = h("div");
  const messages = h("div", { id: "messages" });
  const policyBox = h("div", { id: "effective-policy" });
  // A quorum queue's Raft group in a cluster (hidden otherwise, and on a 403/404).
  const replication = h("div", { class: "card", id: "queue-replication", hidden: true });
  // Definitions of the policy and operator policy in force, fetched when their names change.
  const policyDefs = { key: null, policy: {}, op: {} };

  const peekForm = h("form", { class: "row", id: "peek-form" },
    field("Count", h("input", { name: "count", type: "number", value: 10, min: 1, max: 500 })),
    field("From offset", h("input", { name: "offset", type: "number", value: 0, min: 0 })),
    h("button", { type: "submit", class: "primary", id: "peek-btn" }, "Peek (leaves messages as they are)"));
  peekForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(peekForm);
    const r = await act("Peeked", () => api("POST", `${base}/peek`, { count: Number(d.count), offset: Number(d.offset), encoding: "auto", truncate: 50000 }));
    if (r) messages.replaceChildren(h("p", { class: "muted" }, `${r.length} message(s) peeked; none was changed.`), ...r.map(messageView));
  });

  const getForm = h("form", { class: "row", id: "get-form" },
    field("Count", h("input", { name: "count", type: "number", value: 1, min: 1 })),
    field("Ack mode", h("select", { name: "ackmode" },
      h("option", { value: "ack_requeue_true" }, "Requeue (sets redelivered)"),
      h("option", { value: "ack_requeue_false" }, "Ack (removes them)"),
      h("option", { value: "reject_requeue_true" }, "Reject, requeue"),
      h("option", { value: "reject_requeue_false" }, "Reject, no requeue (dead-letters)"))),
    h("button", { type: "submit" }, "Get messages"));
  getForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(getForm);
    const r = await act("Got messages", () => api("POST", `${base}/get`, { count: Number(d.count), ackmode: d.ackmode, encoding: "auto", truncate: 50000 }));
    if (r) messages.replaceChildren(h("p", { class: "muted" }, `${r.length} message(s), ackmode ${d.ackmode}.`), ...r.map(messageView));
  });

  const pubForm = publishForm(v, "amq.default", name, "queue-publish");

  const bindForm = h("form", { class: "row", id: "bind-form" },
    field("From exchange", h("input", { name: "source", required: true })),
    field("Routing key", h("input", { name: "routing_key" })),
    field("Arguments", h("input", { name: "arguments", placeholder: "x-match = all" })),
    h("button", { type: "submit" }, "Bind"));
  bindForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(bindForm);
    const a = L.parseArguments(d.arguments.replace(/,\s*/g, "\n"));
    if (a.error) return toast(a.error, true);
    if (await act("Bound", () => api("POST", L.apiPath("bindings", v, "e", d.source, "q", name), { routing_key: d.routing_key, arguments: a.args }))) loadBindings();
  });

  const replayForm = h("form", { class: "row", id: "replay-form" },
    field("Count", h("input", { name: "count", type: "number", value: 100, min: 1 })),
    field("To exchange (empty: each message's x-death origin)", h("input", { name: "exchange" })),
    field("Routing key", h("input", { name: "routing_key" })),
    h("button", { type: "submit" }, "Replay dead letters"));
  replayForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(replayForm);
    const body = { count: Number(d.count) };
    if (d.exchange || d.routing_key) body.target = { exchange: d.exchange, routing_key: d.routing_key };
    const r = await act("Replayed", () => api("POST", `${base}/replay`, body));
    if (r) toast(`${r.moved} message(s) replayed`);
  });

  const purge = h("button", { type: "button", class: "danger", id: "purge-btn", onclick: async () => {
    if (!confirm(`Purge every ready message of ${name}?`)) return;
    await act(`Queue ${name} purged`, () => api("DELETE", `${base}/contents`));
    load();
  } }, "Purge");
  const del = h("button", { type: "button", class: "danger", id: "delete-queue-btn", onclick: async () => {
    if (!confirm(`Delete queue ${name}?`)) return;
    if (await act(`Queue ${name} deleted`, () => api("DELETE", base))) go("queues");
  } }, "Delete");

  ctx.view.append(
    h("h1", {}, "Queue ", h("span", { id: "queue-name" }, name), h("span", { class: "muted" }, ` in ${v}`)),
    h("div", { class: "card" }, figures, details), charts, replication,
    h("div", { class: "card" }, h("h2", {}, "Effective policy"), policyBox),
    h("div", { class: "card" }, h("h2", {}, "Messages"), peekForm, getForm, messages),
    h("div", { class: "card" }, h("h2", {}, "Publish a message (default exchange, routing key = queue name)"), pubForm),
    h("div", { class: "card" }, h("h2", {}, "Consumers"), consumers),
    h("div", { class: "card" }, h("h2", {}, "Bindings"), bindings, bindForm),
    h("div", { class: "card" }, h("h2", {}, "Dead letters"), replayForm),
    h("div", { class: "card row" }, purge, del));

  async function loadBindings() {
    const bs = await GET(`${base}/bindings`);
    bindings.replaceChildren(table([
      { title: "From", cell: (b) => b.source || "(default exchange)" },
      { title: "Routing key", cell: (b) => b.routing_key },
      { title: "Arguments", cell: (b) => JSON.stringify(b.arguments || {}) },
      { title: "", cell: (b) => b.source ? h("button", { type: "button", onclick: async () => {
        if (await act("Unbound", () => api("DELETE", L.apiPath("bindings", v, "e", b.source, "q", name, b.properties_key)))) loadBindings();
      } }, "Unbind") : "" },
    ], bs, { id: "bindings" }));
  }
  async function explain(q) {
    const key = JSON.stringify([q.policy || null, q.operator_policy || null]);
    if (policyDefs.key !== key) {
      // Non-administrators may not read policies: the names and the effective definition still show.
      const [p, o] = await Promise.all([
        q.policy ? GET(L.apiPath("policies", v, q.policy)).catch(() => null) : null,
        q.operator_policy ? GET(L.apiPath("operator-policies", v, q.operator_policy)).catch(() => null) : null,
      ]);
      Object.assign(policyDefs, { key, policy: (p && p.definition) || {}, op: (o && o.definition) || {} });
    }
    const e = L.explainPolicy(q, policyDefs.policy, policyDefs.op);
    const own = (name, def) => (name ? `${name} ${JSON.stringify(def)}` : "none");
    policyBox.replaceChildren(
      h("p", {}, "Policy: ", h("b", { id: "q-policy" }, own(e.policy, policyDefs.policy))),
      h("p", {}, "Operator policy: ", h("b", { id: "q-operator-policy" }, own(e.operatorPolicy, policyDefs.op))),
      e.rows.length
        ? table([
          { title: "Key", cell: (r) => r.key },
          { title: "Effective value", cell: (r) => JSON.stringify(r.value) },
          { title: "From", cell: (r) => r.from === "both" ? "policy and operator policy (the stricter wins)" : r.from },
        ], e.rows, { id: "effective-definition" })
        : h("p", { class: "muted", id: "effective-definition" }, "No policy applies: the queue's own arguments rule."));
  }
  async function load() {
    // The API's samples fill the charts at once (no waiting for the page's own refreshes).
    const q = await GET(base + "?msg_rates_age=60&msg_rates_incr=5&lengths_age=60&lengths_incr=5");
    if (!ctx.alive()) return;
    figures.replaceChildren(
      stat("ready", L.fmtNum(q.messages_ready), "q-ready"),
      stat("unacked", L.fmtNum(q.messages_unacknowledged), "q-unacked"),
      stat("total", L.fmtNum(q.messages), "q-total"),
      stat("consumers", L.fmtNum(q.consumers), "q-consumers"),
      stat("incoming", L.fmtRate(rate(q, "publish")), "q-publish-rate"),
      stat("deliver/get", L.fmtRate(rate(q, "deliver_get")), "q-deliver-rate"),
      stat("ack", L.fmtRate(rate(q, "ack")), "q-ack-rate"),
      stat("memory", L.fmtBytes(q.memory), "q-memory"));
    details.replaceChildren(h("p", { class: "muted" },
      `type ${q.type}, state ${q.state}, ${features(q) || "transient"}, policy ${q.policy || "none"}, ` +
      `operator policy ${q.operator_policy || "none"}, exclusive ${q.exclusive ? "yes" : "no"}, arguments ${JSON.stringify(q.arguments || {})}`));
    const key = `q.${v}.${name}`;
    const ms = q.message_stats || {};
    const rateSeries = (k, label) => ({ label, points: seriesOf(`${key}.${k}`, ms[`${k}_details`], true, rate(q, k)), now: rate(q, k) });
    charts.replaceChildren(
      chart("Message rates", [rateSeries("publish", "publish"), rateSeries("deliver_get", "deliver/get"), rateSeries("ack", "ack")],
        L.fmtRate, "chart-queue-rates"),
      chart("Queued messages", [
        { label: "ready", points: seriesOf(`${key}.ready`, q.messages_ready_details, false, q.messages_ready || 0), now: q.messages_ready },
        { label: "unacked", points: seriesOf(`${key}.unacked`, q.messages_unacknowledged_details, false, q.messages_unacknowledged || 0), now: q.messages_unacknowledged },
      ], L.fmtNum, "chart-queue-depth"));
    consumers.replaceChildren(table([
      { title: "Tag", cell: (c) => c.consumer_tag },
      { title: "Channel", cell: (c) => (c.channel_details || {}).name || "" },
      { title: "Ack required", cell: (c) => String(c.ack_required) },
      { title: "Exclusive", cell: (c) => String(c.exclusive ?? false) },
      { title: "Prefetch", num: true, cell: (c) => c.prefetch_count },
      { title: "Active", cell: (c) => String(c.active ?? true) },
    ], q.consumer_details || [], { id: "consumers" }));
    if (q.type === "quorum") {
      const cs = await GET("/api/warren/cluster").catch(() => null);
      const g = cs && (cs.quorum_queues || []).find((x) => x.vhost === v && x.name === name);
      if (!ctx.alive()) return;
      replication.hidden = !g;
      if (g) replication.replaceChildren(...queueGroupCard(g, cs.node));
    }
    await explain(q);
  }
  await load();
  await loadBindings();
  ctx.every(load);
}

function publishForm(v, exchange, routingKey, id) {
  const form = h("form", { id },
    h("div", { class: "row" },
      field("Routing key", h("input", { name: "routing_key", value: routingKey })),
      field("Delivery mode", h("select", { name: "delivery_mode" }, h("option", { value: "2" }, "2 persistent"), h("option", { value: "1" }, "1 transient"))),
      field("Content type", h("input", { name: "content_type", placeholder: "application/json" })),
      field("Headers (key = value, a line each)", h("textarea", { name: "headers", rows: 2 }))),
    field("Payload", h("textarea", { name: "payload", rows: 4, cols: 60 })),
    h("div", {}, h("button", { type: "submit", class: "primary" }, "Publish")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    const hd = L.parseArguments(d.headers);
    if (hd.error) return toast(hd.error, true);
    const properties = { delivery_mode: Number(d.delivery_mode) };
    if (d.content_type) properties.content_type = d.content_type;
    if (Object.keys(hd.args).length) properties.headers = hd.args;
    const r = await act("Published", () => api("POST", L.apiPath("exchanges", v, exchange, "publish"),
      { properties, routing_key: d.routing_key, payload: d.payload, payload_encoding: "string" }));
    if (r) toast(r.routed ? "Message published and routed" : "Message published but routed to no queue", !r.routed);
  });
  return form;
}

// ---------- exchanges ----------

const EXCHANGE_COLUMNS = [
  { title: "Virtual host", sort: "vhost", fields: ["vhost"], cell: (x) => x.vhost },
  { title: "Name", sort: "name", fields: ["name"], cell: (x) => h("a", { href: L.buildHash("exchanges", [x.vhost, x.name || "amq.default"]) }, x.name || "(AMQP default)") },
  { group: "overview", title: "Type", sort: "type", fields: ["type"], cell: (x) => x.type },
  { group: "overview", title: "Features", fields: ["durable", "auto_delete", "internal", "arguments"], cell: (x) => features(x) + (x.internal ? " internal" : "") },
  { group: "overview", title: "Policy", sort: "policy", fields: ["policy"], cell: (x) => x.policy || "" },
  { group: "rates", title: "In", sort: "message_stats.publish_in_details.rate", num: true, fields: ["message_stats.publish_in_details"], cell: (x) => L.fmtRate(rate(x, "publish_in")) },
  { group: "rates", title: "Out", sort: "message_stats.publish_out_details.rate", num: true, fields: ["message_stats.publish_out_details"], cell: (x) => L.fmtRate(rate(x, "publish_out")) },
];

async function pageExchanges(ctx) {
  if (ctx.route.args.length >= 2) return pageExchange(ctx, ctx.route.args[0], ctx.route.args[1]);
  const picker = columnPicker("exchanges", () => list.load());
  const cols = () => L.visibleColumns(EXCHANGE_COLUMNS, picker.groups());
  const list = pagedList(ctx, {
    page: "exchanges", path: vhostPath("exchanges"), id: "exchanges", columns: cols,
    toolbar: h("div", { class: "row toolbar" }, h("span", { class: "spacer" }), picker.el),
    fields: () => L.columnsParam(cols()),
  });
  const types = (await GET("/api/overview").catch(() => ({}))).exchange_types || [{ name: "direct" }, { name: "fanout" }, { name: "topic" }, { name: "headers" }];
  const form = h("form", { id: "add-exchange", class: "card" }, h("h2", {}, "Add an exchange"),
    h("div", { class: "row" }, field("Virtual host", vhostSelect()), field("Name", h("input", { name: "name", required: true })),
      field("Type", h("select", { name: "type" }, types.map((t) => h("option", { value: t.name }, t.name)))),
      check("durable", { name: "durable", checked: true }), check("auto-delete", { name: "auto_delete" }), check("internal", { name: "internal" })),
    argumentsBox([["alternate-exchange", ""]]),
    h("button", { type: "submit", class: "primary" }, "Add exchange"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    const a = L.parseArguments(d.arguments);
    if (a.error) return toast(a.error, true);
    if (await act(`Exchange ${d.name} declared`, () => api("PUT", L.apiPath("exchanges", d.vhost, d.name),
      { type: d.type, durable: d.durable, auto_delete: d.auto_delete, internal: d.internal, arguments: a.args }))) go("exchanges", [d.vhost, d.name]);
  });
  ctx.view.append(h("h1", {}, "Exchanges"), list.box, form);
  ctx.every(list.load);
}

async function pageExchange(ctx, v, name) {
  const base = L.apiPath("exchanges", v, name);
  const x = await GET(base);
  const isDefault = name === "amq.default" || name === "";
  const src = h("div");
  const dst = h("div");
  const bindForm = h("form", { class: "row", id: "xbind-form" },
    field("To", h("select", { name: "kind" }, h("option", { value: "q" }, "queue"), h("option", { value: "e" }, "exchange"))),
    field("Name", h("input", { name: "dest", required: true })),
    field("Routing key", h("input", { name: "routing_key" })),
    h("button", { type: "submit" }, "Bind"));
  bindForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(bindForm);
    if (await act("Bound", () => api("POST", L.apiPath("bindings", v, "e", name, d.kind, d.dest), { routing_key: d.routing_key, arguments: {} }))) load();
  });
  const unbind = (b) => h("button", { type: "button", onclick: async () => {
    const k = b.destination_type === "queue" ? "q" : "e";
    if (await act("Unbound", () => api("DELETE", L.apiPath("bindings", v, "e", b.source, k, b.destination, b.properties_key)))) load();
  } }, "Unbind");
  const bcols = (other) => [
    { title: other === "destination" ? "To" : "From", cell: (b) => `${b[other] || "(default)"} (${b[`${other}_type`] || "exchange"})` },
    { title: "Routing key", cell: (b) => b.routing_key },
    { title: "Arguments", cell: (b) => JSON.stringify(b.arguments || {}) },
    { title: "", cell: (b) => (b.source ? unbind(b) : "") },
  ];
  async function load() {
    const [s, d] = await Promise.all([GET(`${base}/bindings/source`), GET(`${base}/bindings/destination`)]);
    src.replaceChildren(table(bcols("destination"), s, { id: "bindings-source" }));
    dst.replaceChildren(table(bcols("source"), d, { id: "bindings-destination" }));
  }
  const del = h("button", { type: "button", class: "danger", onclick: async () => {
    if (!confirm(`Delete exchange ${name}?`)) return;
    if (await act(`Exchange ${name} deleted`, () => api("DELETE", base))) go("exchanges");
  } }, "Delete");
  ctx.view.append(h("h1", {}, "Exchange ", name, h("span", { class: "muted" }, ` in ${v}`)),
    h("div", { class: "card" }, h("p", {}, `type ${x.type}, ${features(x) || "transient"}${x.internal ? ", internal" : ""}, policy ${x.policy || "none"}, arguments ${JSON.stringify(x.arguments || {})}`),
      h("div", { class: "stats" }, stat("in", L.fmtRate(rate(x, "publish_in"))), stat("out", L.fmtRate(rate(x, "publish_out"))))),
    h("div", { class: "card" }, h("h2", {}, "Bindings from this exchange"), src, isDefault ? null : bindForm),
    h("div", { class: "card" }, h("h2", {}, "Bindings to this exchange"), dst),
    h("div", { class: "card" }, h("h2", {}, "Publish a message"), publishForm(v, name, "", "exchange-publish")),
    isDefault || name.startsWith("amq.") ? null : h("div", { class: "card" }, del));
  await load();
}

// ---------- connections and channels ----------

// The state (running, flow, blocked) is always shown, as a badge, next to the name.
const CONNECTION_COLUMNS = [
  { title: "Name", sort: "name", fields: ["name"], cell: (c) => h("a", { href: L.buildHash("connections", [c.name]) }, c.name) },
  { title: "State", sort: "state", fields: ["state"], cell: (c) => stateBadge(c.state) },
  { group: "overview", title: "User", sort: "user", fields: ["user"], cell: (c) => c.user },
  { group: "overview", title: "Virtual host", sort: "vhost", fields: ["vhost"], cell: (c) => c.vhost },
  { group: "overview", title: "Channels", sort: "channels", num: true, fields: ["channels"], cell: (c) => L.fmtNum(c.channels) },
  { group: "client", title: "Client", sort: "client_properties.product", fields: ["client_properties.product", "client_properties.version"],
    cell: (c) => { const p = c.client_properties || {}; return [p.product, p.version].filter(Boolean).join(" "); } },
  { group: "client", title: "Peer", sort: "peer_host", fields: ["peer_host", "peer_port"], cell: (c) => `${c.peer_host ?? ""}:${c.peer_port ?? ""}` },
  { group: "client", title: "TLS", sort: "ssl", fields: ["ssl"], cell: (c) => (c.ssl ? "yes" : "") },
  { group: "client", title: "Heartbeat", sort: "timeout", num: true, fields: ["timeout"], cell: (c) => `${c.timeout ?? ""}s` },
  { group: "network", title: "From client", sort: "recv_oct_details.rate", num: true, fields: ["recv_oct_details"], cell: (c) => L.fmtBytes((c.recv_oct_details || {}).rate || 0) + "/s" },
  { group: "network", title: "To client", sort: "send_oct_details.rate", num: true, fields: ["send_oct_details"], cell: (c) => L.fmtBytes((c.send_oct_details || {}).rate || 0) + "/s" },
];

async function pageConnections(ctx) {
  if (ctx.route.args.length >= 1) return pageConnection(ctx, ctx.route.args[0]);
  const picker = columnPicker("connections", () => list.load());
  const cols = () => L.visibleColumns(CONNECTION_COLUMNS, picker.groups());
  const list = pagedList(ctx, {
    page: "connections", path: () => (vhost ? L.apiPath("vhosts", vhost, "connections") : "/api/connections"), id: "connections", columns: cols,
    toolbar: h("div", { class: "row toolbar" }, h("span", { class: "spacer" }), picker.el),
    fields: () => L.columnsParam(cols()),
  });
  ctx.view.append(h("h1", {}, "Connections"), list.box);
  ctx.every(list.load);
}

async function pageConnection(ctx, name) {
  const base = L.apiPath("connections", name);
  const c = await GET(base);
  const chans = h("div");
  const reason = h("input", { name: "reason", value: "Closed via the Warren UI", size: 40, id: "close-reason" });
  const close = h("form", { class: "row", id: "close-form" }, field("Reason (sent to the client)", reason),
    h("button", { type: "submit", class: "danger" }, "Close connection"));
  close.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!confirm(`Close connection ${name}?`)) return;
    if (await act("Connection closed", () => api("DELETE", base, undefined, { headers: { "X-Reason": reason.value } }))) go("connections");
  });
  ctx.view.append(h("h1", {}, "Connection ", name),
    h("div", { class: "card" }, h("div", { class: "stats" },
      h("div", { class: "stat" }, h("b", { id: "conn-state" }, stateBadge(c.state)), h("span", {}, "state")),
      stat("user", c.user), stat("vhost", c.vhost), stat("protocol", c.protocol || ""),
      stat("channels", L.fmtNum(c.channels)), stat("channel max", L.fmtNum(c.channel_max)), stat("frame max", L.fmtNum(c.frame_max)),
      stat("heartbeat", `${c.timeout ?? ""}s`), stat("received", L.fmtBytes(c.recv_oct)), stat("sent", L.fmtBytes(c.send_oct)),
      stat("peer", `${c.peer_host}:${c.peer_port}`), stat("TLS", c.ssl ? "yes" : "no"))),
    h("div", { class: "card" }, h("h2", {}, "Client properties"), h("pre", { id: "client-properties" }, JSON.stringify(c.client_properties || {}, null, 2))),
    h("div", { class: "card" }, h("h2", {}, "Channels"), chans),
    h("div", { class: "card" }, close));
  ctx.every(async () => {
    const [now, cs] = await Promise.all([GET(base), GET(`${base}/channels`)]);
    if (!ctx.alive()) return;
    $("#conn-state").replaceChildren(stateBadge(now.state));
    chans.replaceChildren(channelTable(cs));
  });
}

// The state is always shown, as a badge; a channel's name links to its connection.
const CHANNEL_COLUMNS = [
  { title: "Channel", sort: "name", fields: ["name", "connection_details.name"],
    cell: (c) => h("a", { href: L.buildHash("connections", [(c.connection_details || {}).name || ""]) }, c.name) },
  { title: "State", sort: "state", fields: ["state"], cell: (c) => stateBadge(c.state) },
  { group: "overview", title: "User", sort: "user", fields: ["user"], cell: (c) => c.user },
  { group: "overview", title: "Virtual host", sort: "vhost", fields: ["vhost"], cell: (c) => c.vhost },
  { group: "overview", title: "Mode", sort: "confirm", fields: ["confirm", "transactional"], cell: (c) => [c.confirm && "confirm", c.transactional && "tx"].filter(Boolean).join(" ") },
  { group: "overview", title: "Consumers", sort: "consumer_count", num: true, fields: ["consumer_count"], cell: (c) => L.fmtNum(c.consumer_count) },
  { group: "details", title: "Prefetch", sort: "prefetch_count", num: true, fields: ["prefetch_count"], cell: (c) => L.fmtNum(c.prefetch_count) },
  { group: "details", title: "Unacked", sort: "messages_unacknowledged", num: true, fields: ["messages_unacknowledged"], cell: (c) => L.fmtNum(c.messages_unacknowledged) },
  { group: "details", title: "Unconfirmed", sort: "messages_unconfirmed", num: true, fields: ["messages_unconfirmed"], cell: (c) => L.fmtNum(c.messages_unconfirmed) },
  { group: "rates", title: "Publish", sort: "message_stats.publish_details.rate", num: true, fields: ["message_stats.publish_details"], cell: (c) => L.fmtRate(rate(c, "publish")) },
  { group: "rates", title: "Deliver/get", sort: "message_stats.deliver_get_details.rate", num: true, fields: ["message_stats.deliver_get_details"], cell: (c) => L.fmtRate(rate(c, "deliver_get")) },
  { group: "rates", title: "Ack", sort: "message_stats.ack_details.rate", num: true, fields: ["message_stats.ack_details"], cell: (c) => L.fmtRate(rate(c, "ack")) },
];

function channelTable(cs, opts) {
  return table(CHANNEL_COLUMNS, cs, opts);
}

async function pageChannels(ctx) {
  const picker = columnPicker("channels", () => list.load());
  const cols = () => L.visibleColumns(CHANNEL_COLUMNS, picker.groups());
  const list = pagedList(ctx, {
    page: "channels", path: () => (vhost ? L.apiPath("vhosts", vhost, "channels") : "/api/channels"), id: "channels", columns: cols,
    toolbar: h("div", { class: "row toolbar" }, h("span", { class: "spacer" }), picker.el),
    fields: () => L.columnsParam(cols()),
  });
  ctx.view.append(h("h1", {}, "Channels"), list.box);
  ctx.every(list.load);
}

// ---------- consumers ----------

/** Consumer columns; `sort` keys are sorted by the API (RabbitMQ sorts consumer lists, but does not page them). */
const CONSUMER_COLUMNS = [
  { title: "Queue", sort: "queue.name", fields: ["queue"], cell: (c) => h("a", { href: L.buildHash("queues", [c.queue.vhost, c.queue.name]) }, c.queue.name) },
  { title: "Virtual host", sort: "queue.vhost", fields: ["queue"], cell: (c) => c.queue.vhost },
  { title: "Channel", sort: "channel_details.name", fields: ["channel_details"],
    cell: (c) => h("a", { href: L.buildHash("connections", [(c.channel_details || {}).connection_name || ""]) }, (c.channel_details || {}).name || "") },
  { title: "Consumer tag", sort: "consumer_tag", fields: ["consumer_tag"], cell: (c) => h("span", { class: "tag" }, c.consumer_tag) },
  { title: "Ack", sort: "ack_required", fields: ["ack_required"], cell: (c) => L.ackMode(c) },
  { title: "Exclusive", sort: "exclusive", fields: ["exclusive"], cell: (c) => (c.exclusive ? "yes" : "no") },
  { title: "Prefetch", sort: "prefetch_count", num: true, fields: ["prefetch_count"], cell: (c) => L.fmtNum(c.prefetch_count) },
  { title: "Active", sort: "active", fields: ["active", "activity_status"],
    cell: (c) => h("span", { class: `badge ${c.active === false ? "warn" : "ok"}` }, c.activity_status || (c.active === false ? "waiting" : "up")) },
  { title: "Arguments", wrap: true, fields: ["arguments"], cell: (c) => (c.arguments && Object.keys(c.arguments).length ? JSON.stringify(c.arguments) : "") },
];

async function pageConsumers(ctx) {
  const q = ctx.route.query;
  const st = { page: Number(q.page) || 1, pageSize: Number(q.page_size) || 100, filter: q.name || "", sort: q.sort || "", sortReverse: q.sort_reverse === "true" };
  const nav = () => go("consumers", [], { page: st.page > 1 ? st.page : "", page_size: st.pageSize !== 100 ? st.pageSize : "", name: st.filter,
    sort: st.sort, sort_reverse: st.sortReverse ? "true" : "" });
  const filter = h("input", { type: "search", placeholder: "Filter by queue or tag", value: st.filter, id: "consumers-filter" });
  const size = h("select", {}, [20, 50, 100, 200, 500].map((n) => h("option", { value: n, selected: n === st.pageSize }, n)));
  size.addEventListener("change", () => { st.pageSize = Number(size.value); st.page = 1; nav(); });
  const form = h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); st.filter = filter.value; st.page = 1; nav(); } },
    filter, h("label", { class: "inline" }, "page size", size), h("button", { type: "submit" }, "Filter"));
  const info = h("div", { class: "muted", id: "consumers-info" });
  const body = h("div");
  const pager = h("div", { class: "pager" });
  const onSort = (col) => { Object.assign(st, L.nextSort(st.sort, st.sortReverse, col)); st.page = 1; nav(); };
  ctx.view.append(h("h1", {}, "Consumers"), h("div", { class: "card" }, form,
    h("p", { class: "muted" }, "The API does not page consumer lists (as RabbitMQ): the whole list is fetched, with only the fields shown, and paged here."),
    info, body, pager));
  ctx.every(async () => {
    const path = vhost ? L.apiPath("consumers", vhost) : "/api/consumers";
    const all = await GET(path + L.queryString({ sort: st.sort, sort_reverse: st.sort && st.sortReverse ? "true" : "", columns: L.columnsParam(CONSUMER_COLUMNS) }));
    if (!ctx.alive()) return;
    const shown = L.filterConsumers(all, st.filter);
    const p = L.clientPage(shown, st.page, st.pageSize);
    info.textContent = `${L.fmtNum(shown.length)} of ${L.fmtNum(all.length)} shown in ${p.pageCount} page(s)` + (st.filter ? ` (filter "${st.filter}")` : "");
    body.replaceChildren(table(CONSUMER_COLUMNS, p.items, { sort: st, onSort, id: "consumers" }));
    pager.replaceChildren(...(p.pageCount > 1 ? L.pageLinks(p.page, p.pageCount).map((n) => n === "…"
      ? h("span", {}, "…")
      : h("button", { type: "button", "aria-current": n === p.page ? "page" : null, onclick: () => { st.page = n; nav(); } }, n)) : []));
  });
}

// ---------- admin ----------

const ADMIN_TABS = [["users", "Users"], ["vhosts", "Virtual hosts"], ["permissions", "Permissions"], ["topic-permissions", "Topic permissions"],
  ["policies", "Policies"], ["operator-policies", "Operator policies"], ["limits", "Limits"], ["definitions", "Definitions"]];

async function pageAdmin(ctx) {
  const tab = ctx.route.args[0] || "users";
  ctx.view.append(h("h1", {}, "Admin"), h("nav", { class: "tabs" }, ADMIN_TABS.map(([k, t]) =>
    h("a", { href: L.buildHash("admin", [k]), class: k === tab ? "active" : "", id: `tab-${k}` }, t))));
  const box = h("div", { class: "card" });
  ctx.view.append(box);
  const fn = { users: adminUsers, vhosts: adminVhosts, permissions: adminPermissions, "topic-permissions": adminTopicPermissions,
    policies: (b) => adminPolicies(b, "policies"), "operator-policies": (b) => adminPolicies(b, "operator-policies"),
    limits: adminLimits, definitions: adminDefinitions }[tab];
  if (!fn) return box.append("No such tab.");
  await fn(box, ctx);
}

async function adminUsers(box) {
  const list = h("div");
  const load = async () => {
    const us = await GET("/api/users");
    list.replaceChildren(table([
      { title: "Name", cell: (u) => u.name },
      { title: "Tags", cell: (u) => L.tagList(u.tags).join(", ") },
      { title: "Password", cell: (u) => (u.password_hash ? "set" : "none") },
      { title: "", cell: (u) => h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete user ${u.name}?`)) return;
        if (await act(`User ${u.name} deleted`, () => api("DELETE", L.apiPath("users", u.name)))) load();
      } }, "Delete") },
    ], us, { id: "users" }));
  };
  const form = h("form", { id: "add-user" }, h("h2", {}, "Add or update a user"),
    h("div", { class: "row" }, field("Name", h("input", { name: "name", required: true })),
      field("Password", h("input", { name: "password", type: "password", autocomplete: "new-password" })),
      ...L.MANAGEMENT_TAGS.map((t) => check(t, { name: `tag-${t}` })),
      field("Other tags", h("input", { name: "tags", placeholder: "comma-separated" })),
      h("button", { type: "submit", class: "primary" }, "Save user")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    const tags = L.MANAGEMENT_TAGS.filter((t) => d[`tag-${t}`]).concat(L.tagList(d.tags));
    const body = { tags: tags.join(",") };
    if (d.password) body.password = d.password;
    if (await act(`User ${d.name} saved`, () => api("PUT", L.apiPath("users", d.name), body))) { form.reset(); load(); }
  });
  box.append(list, form);
  await load();
}

async function adminVhosts(box) {
  const list = h("div");
  const load = async () => {
    const vs = await GET("/api/vhosts");
    list.replaceChildren(table([
      { title: "Name", cell: (v) => v.name },
      { title: "Description", cell: (v) => v.description || "" },
      { title: "Messages", num: true, cell: (v) => L.fmtNum(v.messages || 0) },
      { title: "", cell: (v) => h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete vhost ${v.name} and everything in it?`)) return;
        if (await act(`Vhost ${v.name} deleted`, () => api("DELETE", L.apiPath("vhosts", v.name)))) { load(); loadVhosts(); }
      } }, "Delete") },
    ], vs, { id: "vhosts" }));
  };
  const form = h("form", { id: "add-vhost", class: "row" }, field("Name", h("input", { name: "name", required: true })),
    field("Description", h("input", { name: "description" })), h("button", { type: "submit", class: "primary" }, "Add vhost"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    if (await act(`Vhost ${d.name} added`, () => api("PUT", L.apiPath("vhosts", d.name), { description: d.description }))) { form.reset(); load(); loadVhosts(); }
  });
  box.append(list, h("h2", {}, "Add a virtual host"), form);
  await load();
}

async function adminPermissions(box) {
  const list = h("div");
  const users = await GET("/api/users");
  const load = async () => {
    const ps = await GET("/api/permissions");
    list.replaceChildren(table([
      { title: "User", cell: (p) => p.user },
      { title: "Virtual host", cell: (p) => p.vhost },
      { title: "Configure", cell: (p) => p.configure },
      { title: "Write", cell: (p) => p.write },
      { title: "Read", cell: (p) => p.read },
      { title: "", cell: (p) => h("button", { type: "button", class: "danger", onclick: async () => {
        if (await act("Permissions cleared", () => api("DELETE", L.apiPath("permissions", p.vhost, p.user)))) load();
      } }, "Clear") },
    ], ps, { id: "permissions" }));
  };
  const form = h("form", { id: "set-permissions", class: "row" },
    field("User", h("select", { name: "user" }, users.map((u) => h("option", { value: u.name }, u.name)))),
    field("Virtual host", vhostSelect()),
    field("Configure", h("input", { name: "configure", value: ".*" })),
    field("Write", h("input", { name: "write", value: ".*" })),
    field("Read", h("input", { name: "read", value: ".*" })),
    h("button", { type: "submit", class: "primary" }, "Set permissions"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    if (await act(`Permissions of ${d.user} in ${d.vhost} set`, () => api("PUT", L.apiPath("permissions", d.vhost, d.user),
      { configure: d.configure, write: d.write, read: d.read }))) load();
  });
  box.append(list, h("h2", {}, "Set permissions"), form);
  await load();
}

/** Policies and operator policies: the same list and form on their own endpoints. */
async function adminPolicies(box, kind) {
  const op = kind === "operator-policies";
  const what = op ? "Operator policy" : "Policy";
  const list = h("div");
  const load = async () => {
    const ps = await GET(`/api/${kind}`);
    list.replaceChildren(table([
      { title: "Virtual host", cell: (p) => p.vhost },
      { title: "Name", cell: (p) => p.name },
      { title: "Pattern", cell: (p) => p.pattern },
      { title: "Apply to", cell: (p) => p["apply-to"] },
      { title: "Definition", wrap: true, cell: (p) => JSON.stringify(p.definition) },
      { title: "Priority", num: true, cell: (p) => p.priority },
      { title: "", cell: (p) => h("button", { type: "button", class: "danger", onclick: async () => {
        if (await act(`${what} ${p.name} deleted`, () => api("DELETE", L.apiPath(kind, p.vhost, p.name)))) load();
      } }, "Delete") },
    ], ps, { id: kind }));
  };
  // Operator policies apply to queues only (as RabbitMQ), and cap what users' policies set.
  const applyTo = op ? ["queues", "classic_queues", "quorum_queues", "streams"] : ["all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams"];
  const form = h("form", { id: op ? "add-operator-policy" : "add-policy" },
    h("div", { class: "row" }, field("Virtual host", vhostSelect()), field("Name", h("input", { name: "name", required: true })),
      field("Pattern", h("input", { name: "pattern", value: "^" })),
      field("Apply to", h("select", { name: "apply-to" }, applyTo.map((a) => h("option", { value: a }, a)))),
      field("Priority", h("input", { name: "priority", type: "number", value: 0 }))),
    field("Definition (key = value, a line each)", h("textarea", { name: "definition", rows: 3, cols: 50, placeholder: "max-length = 1000" })),
    h("div", {}, h("button", { type: "submit", class: "primary" }, `Save ${what.toLowerCase()}`)));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    const def = L.parseArguments(d.definition);
    if (def.error) return toast(def.error, true);
    if (await act(`${what} ${d.name} saved`, () => api("PUT", L.apiPath(kind, d.vhost, d.name),
      { pattern: d.pattern, "apply-to": d["apply-to"], priority: Number(d.priority), definition: def.args }))) load();
  });
  const note = op ? h("p", { class: "muted" }, "Operator policies are set by administrators and apply on top of users' policies: ",
    "for max-length, max-length-bytes, message-ttl, expires and delivery-limit the lower value wins.") : null;
  box.append(note, list, h("h2", {}, `Add or update ${op ? "an operator policy" : "a policy"}`), form);
  await load();
}

async function adminTopicPermissions(box) {
  const list = h("div");
  const users = await GET("/api/users");
  const load = async () => {
    const ps = await GET("/api/topic-permissions");
    list.replaceChildren(table([
      { title: "User", cell: (p) => p.user },
      { title: "Virtual host", cell: (p) => p.vhost },
      { title: "Exchange", cell: (p) => p.exchange },
      { title: "Write", cell: (p) => p.write },
      { title: "Read", cell: (p) => p.read },
      { title: "", cell: (p) => h("button", { type: "button", class: "danger", onclick: async () => {
        // The API clears all of a user's topic permissions in a vhost at once: the other
        // exchanges' entries are put back after.
        const others = ps.filter((o) => o.user === p.user && o.vhost === p.vhost && o.exchange !== p.exchange);
        const path = L.apiPath("topic-permissions", p.vhost, p.user);
        if (await act(`Topic permission of ${p.user} on ${p.exchange} cleared`, async () => {
          await api("DELETE", path);
          for (const o of others) await api("PUT", path, { exchange: o.exchange, write: o.write, read: o.read });
        })) load();
      } }, "Clear") },
    ], ps, { id: "topic-permissions" }));
  };
  const form = h("form", { id: "set-topic-permission", class: "row" },
    field("User", h("select", { name: "user" }, users.map((u) => h("option", { value: u.name }, u.name)))),
    field("Virtual host", vhostSelect()),
    field("Exchange (topic)", h("input", { name: "exchange", value: "amq.topic", required: true })),
    field("Write (routing key regex)", h("input", { name: "write", value: ".*" })),
    field("Read (routing key regex)", h("input", { name: "read", value: ".*" })),
    h("button", { type: "submit", class: "primary" }, "Set topic permission"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    if (await act(`Topic permission of ${d.user} on ${d.exchange} set`, () => api("PUT", L.apiPath("topic-permissions", d.vhost, d.user),
      { exchange: d.exchange, write: d.write, read: d.read }))) load();
  });
  box.append(h("p", { class: "muted" }, "Topic permissions restrict the routing keys a user may publish with (write) and bind with (read) on a topic exchange; ",
    "{username}, {vhost} and {client_id} are expanded."), list, h("h2", {}, "Set a topic permission"), form);
  await load();
}

async function adminLimits(box) {
  const users = await GET("/api/users");
  const vhostList = h("div");
  const userList = h("div");
  const clearBtn = (kind, owner, name) => h("button", { type: "button", class: "danger", onclick: async () => {
    if (await act(`Limit ${name} of ${owner} cleared`, () => api("DELETE", L.apiPath(kind, owner, name)))) load();
  } }, "Clear");
  const load = async () => {
    const [vl, ul] = await Promise.all([GET("/api/vhost-limits"), GET("/api/user-limits")]);
    vhostList.replaceChildren(table([
      { title: "Virtual host", cell: (r) => r.owner },
      { title: "Limit", cell: (r) => r.name },
      { title: "Value", num: true, cell: (r) => L.fmtNum(r.value) },
      { title: "", cell: (r) => clearBtn("vhost-limits", r.owner, r.name) },
    ], L.limitRows(vl, "vhost"), { id: "vhost-limits" }));
    userList.replaceChildren(table([
      { title: "User", cell: (r) => r.owner },
      { title: "Limit", cell: (r) => r.name },
      { title: "Value", num: true, cell: (r) => L.fmtNum(r.value) },
      { title: "", cell: (r) => clearBtn("user-limits", r.owner, r.name) },
    ], L.limitRows(ul, "user"), { id: "user-limits" }));
  };
  const limitForm = (id, kind, ownerField, names) => {
    const form = h("form", { id, class: "row" }, ownerField,
      field("Limit", h("select", { name: "limit" }, names.map((n) => h("option", { value: n }, n)))),
      field("Value (-1 or empty: no limit)", h("input", { name: "value", size: 8 })),
      h("button", { type: "submit", class: "primary" }, "Set limit"));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const d = formData(form);
      const owner = d.vhost ?? d.user;
      const val = L.parseLimitValue(d.value);
      if (val.error) return toast(val.error, true);
      if (await act(`Limit ${d.limit} of ${owner} ${val.value < 0 ? "cleared" : `set to ${val.value}`}`,
        () => api("PUT", L.apiPath(kind, owner, d.limit), { value: val.value }))) load();
    });
    return form;
  };
  box.append(h("h2", {}, "Virtual host limits"), vhostList,
    limitForm("set-vhost-limit", "vhost-limits", field("Virtual host", vhostSelect()), L.VHOST_LIMITS),
    h("h2", {}, "User limits"), userList,
    limitForm("set-user-limit", "user-limits", field("User", h("select", { name: "user" }, users.map((u) => h("option", { value: u.name }, u.name)))), L.USER_LIMITS));
  await load();
}

async function adminDefinitions(box) {
  // The scope of an export or an import: the whole broker, or one virtual host
  // (/api/definitions/{vhost}: its queues, exchanges, bindings and policies, without vhost fields).
  const scopeSelect = (name, id, allLabel) => h("select", { name, id },
    h("option", { value: "" }, allLabel), vhostNames.map((v) => h("option", { value: v, selected: v === vhost }, v)));
  const exportScope = scopeSelect("export-vhost", "export-vhost", "All (the whole broker)");
  const importScope = scopeSelect("import-vhost", "import-vhost", "As in the file (the whole broker)");
  importScope.value = "";
  const exportBtn = h("button", { type: "button", id: "export-definitions", class: "primary", onclick: async () => {
    const v = exportScope.value;
    const d = await act(v ? `Definitions of ${v} exported` : "Definitions exported", () => GET(L.definitionsPath(v)));
    if (!d) return;
    const url = URL.createObjectURL(new Blob([JSON.stringify(d, null, 2)], { type: "application/json" }));
    const a = h("a", { href: url, download: L.definitionsFileName(v, new Date()) });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } }, "Download definitions");
  const file = h("input", { type: "file", accept: ".json,application/json", id: "import-file" });
  const result = h("p", { id: "import-result" });
  const importBtn = h("button", { type: "button", id: "import-definitions", onclick: async () => {
    const f = file.files[0];
    if (!f) return toast("Choose a file first", true);
    const v = importScope.value;
    const text = await f.text();
    try { JSON.parse(text); } catch (e) { result.className = "error"; result.textContent = `Not JSON: ${e.message}`; return; }
    try {
      await api("POST", L.definitionsPath(v), text);
      result.className = "ok";
      result.textContent = v ? `Imported ${f.name} into ${v}.` : `Imported ${f.name}.`;
      loadVhosts();
    } catch (e) {
      result.className = "error";
      result.textContent = `Import refused (nothing was changed): ${e.message}`;
    }
  } }, "Upload and import");
  box.append(h("h2", {}, "Export"),
    h("p", { class: "muted" }, "Users, vhosts, permissions, policies, durable queues, exchanges and bindings, as RabbitMQ's format; ",
      "for one virtual host, its policies, queues, exchanges and bindings only (RabbitMQ's single-vhost format)."),
    h("div", { class: "row" }, field("Virtual host", exportScope), exportBtn),
    h("h2", {}, "Import"),
    h("p", { class: "muted" }, "All or nothing: a bad file changes nothing. Into one virtual host, the file's policies, queues, exchanges ",
      "and bindings go there whatever vhost they name (a single-vhost export copies a vhost into another); its users, vhosts and permissions are ignored."),
    h("div", { class: "row" }, field("Into virtual host", importScope), file, importBtn), result);
}

// ---------- chrome: login, vhost selector, theme ----------

async function loadVhosts() {
  try {
    const vs = await GET("/api/vhosts");
    vhostNames = vs.map((v) => v.name);
  } catch {
    vhostNames = [];
  }
  const sel = $("#vhost-select");
  sel.replaceChildren(h("option", { value: "" }, "All"), ...vhostNames.map((v) => h("option", { value: v, selected: v === vhost }, v)));
  // A management user sees only the vhosts it holds permissions in: say so when there are none.
  $("#no-vhosts").hidden = vhostNames.length > 0;
  if (vhost && !vhostNames.includes(vhost)) {
    vhost = "";
    sessionStorage.removeItem("warren.vhost");
  }
}

function showLogin(message = "") {
  clearInterval(timer);
  generation += 1;
  $("#top").hidden = true;
  $("#no-vhosts").hidden = true;
  $("#view").replaceChildren();
  $("#login").hidden = false;
  $("#login-pass").value = "";
  const err = $("#login-error");
  err.textContent = message;
  err.hidden = !message;
  $("#login-user").focus();
}

async function startApp() {
  $("#login").hidden = true;
  $("#top").hidden = false;
  $("#whoami").textContent = `${session.user} (${session.tags.join(", ")})`;
  $("#nav-admin").hidden = !L.canSee(session.tags, "admin");
  await loadVhosts();
  render();
}

async function login(user, pass) {
  const auth = L.basicAuth(user, pass);
  let who;
  try {
    who = await api("GET", "/api/whoami", undefined, { auth });
  } catch (e) {
    // The API answers 401 both ways: "not_authorized" for bad credentials, "not_authorised"
    // with "Not management user" for a user without a management tag.
    if (e.status === 401 && e.body && e.body.error === "not_authorised") {
      return showLogin(`User ${user} has no management tag (management, policymaker, monitoring or administrator): the UI is refused.`);
    }
    if (e.status === 401) return showLogin("Login failed: wrong username or password.");
    return showLogin(`Login failed: ${e.message}`);
  }
  if (!L.canLogIn(who.tags)) {
    return showLogin(`User ${who.name} has no management tag (management, policymaker, monitoring or administrator): the UI is refused.`);
  }
  sessionStorage.removeItem("warren.active");
  session.save(auth, who.name, who.tags, who.login_session_timeout);
  startApp();
}

function applyTheme(t) {
  if (t) document.documentElement.dataset.theme = t;
  else delete document.documentElement.dataset.theme;
}

function init() {
  applyTheme(localStorage.getItem("warren.theme"));
  $("#theme-toggle").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    const t = dark ? "light" : "dark";
    localStorage.setItem("warren.theme", t);
    applyTheme(t);
  });
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    login($("#login-user").value, $("#login-pass").value);
  });
  const rs = $("#refresh-select");
  rs.replaceChildren(...L.REFRESH_CHOICES.map((n) => h("option", { value: n, selected: n === refreshSec }, n ? `${n} s` : "off")));
  rs.addEventListener("change", () => {
    refreshSec = L.parseRefresh(rs.value);
    localStorage.setItem("warren.refresh", String(refreshSec));
    render();
  });
  $("#logout").addEventListener("click", () => { session.clear(); showLogin(); });
  $("#login-user").addEventListener("input", () => { $("#login-error").hidden = true; });
  $("#vhost-select").addEventListener("change", (e) => {
    vhost = e.target.value;
    if (vhost) sessionStorage.setItem("warren.vhost", vhost);
    else sessionStorage.removeItem("warren.vhost");
    const r = L.parseHash(location.hash);
    // A list restarts at its first page; an object page stays.
    const next = L.buildHash(r.page, [], { ...r.query, page: "" });
    if (r.args.length === 0 && next !== location.hash) location.hash = next;
    else render();
  });
  window.addEventListener("hashchange", () => {
    if (!session.auth || checkExpiry()) return;
    session.touch();
    render();
  });
  // The session timeout counts from the user's last click, key or page change (the
  // pages' own refreshes do not count), as RabbitMQ's login_session_timeout.
  let lastTouch = 0;
  const activity = () => {
    if (!session.auth || checkExpiry()) return;
    const now = Date.now();
    if (now - lastTouch > 1000) { lastTouch = now; session.touch(); }
  };
  for (const ev of ["pointerdown", "keydown"]) window.addEventListener(ev, activity, { capture: true, passive: true });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && session.auth) checkExpiry(); });
  setInterval(() => { if (session.auth) checkExpiry(); }, 5000);
  if (session.auth && checkExpiry()) {
    // Expired while the tab was away: the login page says so.
  } else if (session.auth) {
    // Check the stored credentials still work (the user may have been deleted).
    api("GET", "/api/whoami").then((who) => { session.save(session.auth, who.name, who.tags, who.login_session_timeout); startApp(); }, () => showLogin());
  } else {
    showLogin();
  }
}

init();
