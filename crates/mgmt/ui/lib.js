// Pure helpers of the UI: formatting, query strings, hash routes, tag rules, argument
// parsing. No DOM access here, so crates/mgmt/ui/test.html can test every function.

/** 1234567 -> "1,234,567"; null/undefined -> "". */
export function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "";
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** A rate in messages per second: "0.0/s", "3.5/s", "1,234/s". */
export function fmtRate(r) {
  if (r === null || r === undefined || Number.isNaN(r)) return "";
  const a = Math.abs(r);
  if (a >= 100) return fmtNum(r) + "/s";
  return r.toFixed(1) + "/s";
}

/** Bytes with binary units: 0 B, 1023 B, 1.0 KiB, 12.3 MiB, 5.0 GiB. */
export function fmtBytes(b) {
  if (b === null || b === undefined || Number.isNaN(b)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = b;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Seconds as "3s", "5m 02s", "2h 05m", "3d 4h". */
export function fmtDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "";
  s = Math.floor(s);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const p2 = (x) => String(x).padStart(2, "0");
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${p2(m)}m`;
  if (m > 0) return `${m}m ${p2(sec)}s`;
  return `${sec}s`;
}

/** One path segment, percent-encoded as the API wants ("/" -> "%2F"). */
export function seg(s) {
  return encodeURIComponent(s);
}

/** "/api" + segments, each encoded: apiPath("queues", "/", "a b") -> "/api/queues/%2F/a%20b". */
export function apiPath(...segments) {
  return "/api/" + segments.map(seg).join("/");
}

/** A query string from an object, skipping null/undefined/"" values; keys in order. */
export function queryString(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  }
  return parts.length ? "?" + parts.join("&") : "";
}

/**
 * The query of a paged list: page, page_size, name, use_regex, sort, sort_reverse, and
 * `columns` (the API's projection: only the fields the page shows come back).
 */
export function listQuery({ page = 1, pageSize = 100, name = "", useRegex = false, sort = "", sortReverse = false, columns = "" } = {}) {
  return queryString({
    page: Math.max(1, page | 0),
    page_size: Math.min(500, Math.max(1, pageSize | 0)),
    name: name || "",
    use_regex: name && useRegex ? "true" : "",
    sort: sort || "",
    sort_reverse: sort && sortReverse ? "true" : "",
    columns: columns || "",
  });
}

/**
 * The API's `columns` parameter for the columns shown: every column lists the dotted
 * `fields` its cell reads; duplicates go, order is kept. "" when a column reads
 * everything (no `fields`), so the API sends whole objects.
 */
export function columnsParam(columns) {
  const out = [];
  for (const c of columns) {
    if (!Array.isArray(c.fields)) return "";
    for (const f of c.fields) if (!out.includes(f)) out.push(f);
  }
  return out.join(",");
}

/** Clicking a column header: same column flips the direction, another starts ascending. */
export function nextSort(current, reverse, column) {
  if (current === column) return { sort: column, sortReverse: !reverse };
  return { sort: column, sortReverse: false };
}

/** The page numbers to offer around `page` of `count`: [1, "…", 4, 5, 6, "…", 20]. */
export function pageLinks(page, count, around = 2) {
  const out = [];
  let last = 0;
  for (let p = 1; p <= count; p += 1) {
    if (p === 1 || p === count || Math.abs(p - page) <= around) {
      if (p - last > 1) out.push("…");
      out.push(p);
      last = p;
    }
  }
  return out;
}

/**
 * A location hash as a route: "#/queues/%2F/q1?page=2" ->
 * {page: "queues", args: ["/", "q1"], query: {page: "2"}}. An empty hash is the overview.
 */
export function parseHash(hash) {
  let h = (hash || "").replace(/^#/, "");
  let q = "";
  const qi = h.indexOf("?");
  if (qi >= 0) {
    q = h.slice(qi + 1);
    h = h.slice(0, qi);
  }
  const parts = h.split("/").filter((p) => p !== "");
  let args;
  try {
    args = parts.slice(1).map((p) => decodeURIComponent(p));
  } catch {
    args = parts.slice(1);
  }
  const query = {};
  for (const kv of q.split("&")) {
    if (!kv) continue;
    const i = kv.indexOf("=");
    const k = i < 0 ? kv : kv.slice(0, i);
    const v = i < 0 ? "" : kv.slice(i + 1);
    try {
      query[decodeURIComponent(k)] = decodeURIComponent(v.replace(/\+/g, " "));
    } catch {
      query[k] = v;
    }
  }
  return { page: parts[0] || "overview", args, query };
}

/** The inverse of parseHash: buildHash("queues", ["/", "q1"], {page: 2}) -> "#/queues/%2F/q1?page=2". */
export function buildHash(page, args = [], query = {}) {
  return "#/" + [page, ...args.map(seg)].join("/") + queryString(query);
}

export const MANAGEMENT_TAGS = ["management", "policymaker", "monitoring", "administrator"];

/** Tags as a list whatever the API gave (a list, or a comma-separated string). */
export function tagList(tags) {
  if (Array.isArray(tags)) return tags.filter((t) => t);
  return String(tags || "")
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t);
}

/** May a user with these tags use the UI at all? */
export function canLogIn(tags) {
  return tagList(tags).some((t) => MANAGEMENT_TAGS.includes(t));
}

/** May a user with these tags see this page? Admin pages are for administrators. */
export function canSee(tags, page) {
  const t = tagList(tags);
  if (!canLogIn(t)) return false;
  if (page === "admin") return t.includes("administrator");
  return true;
}

/**
 * Queue/exchange arguments from text lines "key = value". Numbers, true/false and JSON
 * values are typed; anything else is a string. Returns {args} or {error}.
 */
export function parseArguments(text) {
  const args = {};
  const lines = String(text || "").split("\n");
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq <= 0) return { error: `line ${i + 1}: expected key = value` };
    const key = line.slice(0, eq).trim();
    const raw = line.slice(eq + 1).trim();
    args[key] = typedValue(raw);
  }
  return { args };
}

/** "42" -> 42, "true" -> true, "[1]" -> [1], '"x"' -> "x", "abc" -> "abc". */
export function typedValue(raw) {
  if (/^-?\d+(\.\d+)?$/.test(raw)) return Number(raw);
  if (raw === "true") return true;
  if (raw === "false") return false;
  if (/^[[{"]/.test(raw)) {
    try {
      return JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  return raw;
}

/** Common queue arguments offered as one-click helpers in the "add queue" form. */
export const QUEUE_ARGUMENT_HELPERS = [
  ["x-message-ttl", "60000"],
  ["x-expires", "1800000"],
  ["x-max-length", "10000"],
  ["x-max-length-bytes", "1048576"],
  ["x-overflow", "reject-publish"],
  ["x-dead-letter-exchange", ""],
  ["x-dead-letter-routing-key", ""],
  ["x-max-priority", "10"],
  ["x-queue-type", "classic"],
  ["x-single-active-consumer", "true"],
];

/**
 * Points of a chart from the API's `samples` ([{sample, timestamp}], newest first, as
 * RabbitMQ): [{t, v}] oldest first. Counters (`rate: true`) become per-second rates
 * between consecutive samples.
 */
export function samplesToPoints(samples, rate = false) {
  if (!Array.isArray(samples)) return [];
  const s = samples
    .filter((p) => p && typeof p.timestamp === "number" && typeof p.sample === "number")
    .slice()
    .sort((a, b) => a.timestamp - b.timestamp);
  if (!rate) return s.map((p) => ({ t: p.timestamp, v: p.sample }));
  const out = [];
  for (let i = 1; i < s.length; i += 1) {
    const dt = (s[i].timestamp - s[i - 1].timestamp) / 1000;
    if (dt <= 0) continue;
    out.push({ t: s[i].timestamp, v: Math.max(0, (s[i].sample - s[i - 1].sample) / dt) });
  }
  return out;
}

/** Append a point to a series kept by the page, keeping the last `max` points. */
export function pushPoint(series, t, v, max = 120) {
  const out = series.concat([{ t, v: Number(v) || 0 }]);
  return out.length > max ? out.slice(out.length - max) : out;
}

/** A "nice" upper bound for a chart's axis: 0 -> 1, 7 -> 10, 13 -> 20, 260 -> 500. */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) {
    if (v <= m * p) return m * p;
  }
  return 10 * p;
}

/** SVG path "M x y L x y ..." of points scaled to a width×height box. */
export function linePath(points, width, height, tMin, tMax, vMax) {
  if (!points.length) return "";
  const dt = tMax - tMin || 1;
  const vm = vMax || 1;
  return points
    .map((p, i) => {
      const x = ((p.t - tMin) / dt) * width;
      const y = height - (p.v / vm) * height;
      return `${i ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
    })
    .join(" ");
}

/** The Authorization header value of basic auth (UTF-8 safe). */
export function basicAuth(user, pass) {
  const bytes = new TextEncoder().encode(`${user}:${pass}`);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return "Basic " + btoa(bin);
}

/** The origin of a dead-lettered message, from its x-death header: {exchange, routing_key} or null. */
export function deadLetterOrigin(headers) {
  const d = headers && Array.isArray(headers["x-death"]) ? headers["x-death"][0] : null;
  if (!d) return null;
  const keys = d["routing-keys"] || [];
  return { exchange: d.exchange ?? "", routing_key: keys[0] ?? "", queue: d.queue ?? "", reason: d.reason ?? "" };
}

/** Escape text for HTML. */
export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// ---------- lists: column groups, selection, refresh ----------

/** The queue list's optional column groups (as RabbitMQ's column picker), keys in display order. */
export const QUEUE_COLUMN_GROUPS = [
  ["overview", "Overview"],
  ["messages", "Messages"],
  ["message_bytes", "Message bytes"],
  ["rates", "Rates"],
];
export const DEFAULT_QUEUE_GROUPS = ["overview", "messages", "rates"];

/** Every list's column groups and default choice: [groups, defaults]. */
export const COLUMN_GROUPS = {
  queues: [QUEUE_COLUMN_GROUPS, DEFAULT_QUEUE_GROUPS],
  exchanges: [[["overview", "Overview"], ["rates", "Rates"]], ["overview", "rates"]],
  connections: [[["overview", "Overview"], ["client", "Client"], ["network", "Network"]], ["overview", "client", "network"]],
  channels: [[["overview", "Overview"], ["details", "Details"], ["rates", "Rates"]], ["overview", "details", "rates"]],
};

function groupsOf(list) {
  return COLUMN_GROUPS[list] || COLUMN_GROUPS.queues;
}

/** localStorage key of a user's column choice for a list: one per list and username. */
export function columnPrefsKey(user, list = "queues") {
  return `warren.columns.${list}.${user || ""}`;
}

/** A stored choice (JSON text or null) as a list of known groups; the default when unset or bad. */
export function parseColumnChoice(text, list = "queues") {
  const [known, defaults] = groupsOf(list);
  if (text === null || text === undefined || text === "") return defaults.slice();
  let v;
  try {
    v = JSON.parse(text);
  } catch {
    return defaults.slice();
  }
  if (!Array.isArray(v)) return defaults.slice();
  return known.map(([k]) => k).filter((k) => v.includes(k));
}

/** Turn a group on or off, keeping the groups' display order. */
export function toggleGroup(groups, group, on, list = "queues") {
  const set = new Set(groups);
  if (on) set.add(group);
  else set.delete(group);
  return groupsOf(list)[0].map(([k]) => k).filter((k) => set.has(k));
}

/** Columns (objects with an optional `group`) shown for the chosen groups; ungrouped ones always. */
export function visibleColumns(columns, groups) {
  return columns.filter((c) => !c.group || groups.includes(c.group));
}

/** A queue's identity in a selection (vhost and name, unambiguous whatever they contain). */
export function selectionKey(vhost, name) {
  return JSON.stringify([vhost, name]);
}
export function fromSelectionKey(key) {
  const [vhost, name] = JSON.parse(key);
  return { vhost, name };
}

/** A new selection (array of keys) with `keys` turned on or off; order of first selection kept. */
export function setSelected(selection, keys, on) {
  const out = selection.filter((k) => on || !keys.includes(k));
  if (on) for (const k of keys) if (!out.includes(k)) out.push(k);
  return out;
}

/** The header checkbox: "all" when every shown row is selected, "some", or "none". */
export function selectionState(selection, shownKeys) {
  const n = shownKeys.filter((k) => selection.includes(k)).length;
  if (n === 0) return "none";
  return n === shownKeys.length ? "all" : "some";
}

/** The confirm text of a bulk action: "Purge 3 queues?" / "Delete 1 queue?". */
export function bulkConfirmText(verb, count) {
  return `${verb} ${count} queue${count === 1 ? "" : "s"}?`;
}

/** Refresh intervals offered, in seconds (0 = off); 5 s is the default. */
export const REFRESH_CHOICES = [0, 5, 10, 30];
export function parseRefresh(text) {
  const n = Number(text);
  return REFRESH_CHOICES.includes(n) && text !== null && text !== "" ? n : 5;
}

// ---------- limits ----------

export const VHOST_LIMITS = ["max-connections", "max-queues"];
export const USER_LIMITS = ["max-connections", "max-channels"];

/** A limit typed in a form: a whole number ≥ 0, or -1 / "none" / "" for no limit. */
export function parseLimitValue(text) {
  const t = String(text ?? "").trim().toLowerCase();
  if (t === "" || t === "none" || t === "-1") return { value: -1 };
  if (!/^\d+$/.test(t)) return { error: `limit "${text}" is not a whole number (or -1 for no limit)` };
  return { value: Number(t) };
}

/**
 * The API's limits list ([{vhost|user, value: {name: N}}]) as rows
 * [{owner, name, value}] sorted by owner then name; `ownerKey` is "vhost" or "user".
 */
export function limitRows(list, ownerKey) {
  const rows = [];
  for (const e of Array.isArray(list) ? list : []) {
    for (const [name, value] of Object.entries((e && e.value) || {})) {
      if (value === null || value === undefined) continue;
      rows.push({ owner: e[ownerKey], name, value });
    }
  }
  return rows.sort((a, b) => (a.owner < b.owner ? -1 : a.owner > b.owner ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

// ---------- effective policy ----------

/**
 * Which policy and operator policy apply to a queue and the effective definition, each key
 * with where it comes from: "policy", "operator policy", or "both" (the value is the
 * effective one: for numeric limits the lower of the two, as RabbitMQ).
 */
export function explainPolicy(q, policyDef = {}, opDef = {}) {
  const eff = (q && q.effective_policy_definition) || {};
  const rows = Object.keys(eff).sort().map((k) => {
    const inP = policyDef && Object.prototype.hasOwnProperty.call(policyDef, k);
    const inO = opDef && Object.prototype.hasOwnProperty.call(opDef, k);
    const from = inP && inO ? "both" : inO ? "operator policy" : inP ? "policy" : "";
    return { key: k, value: eff[k], from };
  });
  return { policy: (q && q.policy) || null, operatorPolicy: (q && q.operator_policy) || null, rows };
}

// ---------- object states ----------

/**
 * The badge class of a connection's or channel's `state`: running is fine, flow a
 * warning (publishers slowed down), blocked/blocking (a resource alarm) bad.
 */
export function stateClass(state) {
  switch (state) {
    case "running": return "ok";
    case "flow": case "idle": return "warn";
    case "blocked": case "blocking": case "closing": return "bad";
    default: return "";
  }
}

/** The alarms a node reports, as words: ["memory", "disk"] or []. */
export function nodeAlarms(n) {
  return [n && n.mem_alarm && "memory", n && n.disk_free_alarm && "disk"].filter(Boolean);
}

// ---------- cluster ----------

/**
 * The Overview's node rows: `/api/nodes` merged with `/api/warren/cluster` (null when the
 * node is not clustered). Every member is listed, running or not (one `/api/nodes` lacks
 * still shows, by name), sorted by name; `leader` marks the Raft leader.
 */
export function nodeRows(nodes, cluster) {
  const rows = (nodes || []).map((n) => ({ ...n }));
  if (!cluster) return rows;
  for (const m of cluster.members || []) {
    if (!rows.some((r) => r.name === m.name)) rows.push({ name: m.name, running: m.running });
  }
  for (const r of rows) r.leader = r.name === cluster.leader;
  return rows.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Whether a `/api/nodes` row carries the node's own figures (other members' do not). */
export function hasFigures(n) {
  return n != null && n.mem_used !== undefined;
}

/** A member's replication lag as the Cluster panel says it (only the leader knows it). */
export function lagText(m) {
  if (m == null || m.lag == null) return "unknown here";
  return m.lag === 0 ? "in sync" : `${fmtNum(m.lag)} behind`;
}

// ---------- consumers: a list the API does not page ----------

/** RabbitMQ's consumer lists are not paged: the UI pages them itself, at most this many fetched rows shown per page. */
export const CONSUMER_PAGE_MAX = 500;

/** Consumers whose queue name or tag contains `text` (case-insensitive); all for "". */
export function filterConsumers(items, text) {
  const t = String(text || "").toLowerCase();
  if (!t) return items.slice();
  return items.filter((c) => String((c.queue && c.queue.name) || "").toLowerCase().includes(t) ||
    String(c.consumer_tag || "").toLowerCase().includes(t));
}

/**
 * One page of a list held by the page: {items, page, pageCount, total}. A page past the
 * end is the last one; an empty list has one empty page.
 */
export function clientPage(items, page, pageSize) {
  const size = Math.min(CONSUMER_PAGE_MAX, Math.max(1, pageSize | 0 || 100));
  const total = items.length;
  const pageCount = Math.max(1, Math.ceil(total / size));
  const p = Math.min(pageCount, Math.max(1, page | 0 || 1));
  return { items: items.slice((p - 1) * size, p * size), page: p, pageCount, total };
}

/** A consumer's acknowledgement mode as RabbitMQ's UI words it. */
export function ackMode(c) {
  return c && c.ack_required ? "manual" : "automatic";
}

// ---------- session timeout ----------

/** RabbitMQ's default `management.login_session_timeout`, in minutes (8 hours). */
export const DEFAULT_SESSION_TIMEOUT_MIN = 480;

/** The timeout /api/whoami gives (minutes), or the default when missing or not a positive number. */
export function sessionTimeoutMin(v) {
  const n = Number(v);
  return v !== null && v !== undefined && v !== "" && Number.isFinite(n) && n > 0 ? n : DEFAULT_SESSION_TIMEOUT_MIN;
}

/**
 * Has a session whose last user activity was at `lastActive` (ms since the epoch, as
 * stored: text or number) run out at `now`? A missing or unreadable stamp is not
 * expired (the caller stamps it).
 */
export function sessionExpired(lastActive, now, timeoutMin) {
  if (lastActive === null || lastActive === undefined || lastActive === "") return false;
  const t = Number(lastActive);
  if (!Number.isFinite(t)) return false;
  return now - t >= sessionTimeoutMin(timeoutMin) * 60000;
}

/** The login page's message after a timeout. */
export function expiredMessage(timeoutMin) {
  const m = sessionTimeoutMin(timeoutMin);
  return `Your session expired after ${fmtDuration(m * 60)} without activity: log in again.`;
}

// ---------- definitions ----------

/** The download name of a definitions export: of the cluster, or of one vhost. */
export function definitionsFileName(vhost, date) {
  const day = date.toISOString().slice(0, 10);
  if (!vhost) return `warren-definitions-${day}.json`;
  const safe = vhost === "/" ? "default" : vhost.replace(/[^A-Za-z0-9._-]+/g, "_");
  return `warren-definitions-${safe}-${day}.json`;
}

/** The API path of a definitions export or import: the cluster's, or one vhost's. */
export function definitionsPath(vhost) {
  return vhost ? apiPath("definitions", vhost) : "/api/definitions";
}
