// Unit tests of lib.js, run by test.html in a browser.
import * as L from "./lib.js";

const tests = [];
const test = (name, fn) => tests.push([name, fn]);
function eq(actual, expected, what = "") {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what ? what + ": " : ""}expected ${e}, got ${a}`);
}

test("fmtNum groups thousands", () => {
  eq(L.fmtNum(0), "0");
  eq(L.fmtNum(999), "999");
  eq(L.fmtNum(1234567), "1,234,567");
  eq(L.fmtNum(-1000), "-1,000");
  eq(L.fmtNum(2.6), "3");
  eq(L.fmtNum(undefined), "");
});
test("fmtRate", () => {
  eq(L.fmtRate(0), "0.0/s");
  eq(L.fmtRate(3.45), "3.5/s");
  eq(L.fmtRate(1234.4), "1,234/s");
  eq(L.fmtRate(null), "");
});
test("fmtBytes uses binary units", () => {
  eq(L.fmtBytes(0), "0 B");
  eq(L.fmtBytes(1023), "1023 B");
  eq(L.fmtBytes(1024), "1.0 KiB");
  eq(L.fmtBytes(1536), "1.5 KiB");
  eq(L.fmtBytes(5 * 1024 ** 3), "5.0 GiB");
});
test("fmtDuration", () => {
  eq(L.fmtDuration(3), "3s");
  eq(L.fmtDuration(302), "5m 02s");
  eq(L.fmtDuration(7500), "2h 05m");
  eq(L.fmtDuration(3 * 86400 + 4 * 3600), "3d 4h");
});
test("apiPath encodes vhost / and names", () => {
  eq(L.apiPath("queues", "/", "a b"), "/api/queues/%2F/a%20b");
  eq(L.apiPath("bindings", "v", "e", "x#1", "q", "q?"), "/api/bindings/v/e/x%231/q/q%3F");
});
test("queryString skips empty values", () => {
  eq(L.queryString({ a: 1, b: "", c: null, d: "x y" }), "?a=1&d=x%20y");
  eq(L.queryString({}), "");
});
test("listQuery builds the paged list query", () => {
  eq(L.listQuery({}), "?page=1&page_size=100");
  eq(L.listQuery({ page: 3, pageSize: 50, name: "^jobs\\.", useRegex: true, sort: "messages", sortReverse: true }),
    "?page=3&page_size=50&name=%5Ejobs%5C.&use_regex=true&sort=messages&sort_reverse=true");
  eq(L.listQuery({ pageSize: 10000 }), "?page=1&page_size=500");
  eq(L.listQuery({ page: 0, useRegex: true, sortReverse: true }), "?page=1&page_size=100");
});
test("nextSort flips the same column, starts others ascending", () => {
  eq(L.nextSort("name", false, "name"), { sort: "name", sortReverse: true });
  eq(L.nextSort("name", true, "messages"), { sort: "messages", sortReverse: false });
});
test("pageLinks elides far pages", () => {
  eq(L.pageLinks(1, 1), [1]);
  eq(L.pageLinks(1, 3), [1, 2, 3]);
  eq(L.pageLinks(10, 20), [1, "…", 8, 9, 10, 11, 12, "…", 20]);
  eq(L.pageLinks(1, 20), [1, 2, 3, "…", 20]);
});
test("parseHash", () => {
  eq(L.parseHash(""), { page: "overview", args: [], query: {} });
  eq(L.parseHash("#/queues"), { page: "queues", args: [], query: {} });
  eq(L.parseHash("#/queues/%2F/my%20queue"), { page: "queues", args: ["/", "my queue"], query: {} });
  eq(L.parseHash("#/queues?page=2&name=a%26b&use_regex=true"), { page: "queues", args: [], query: { page: "2", name: "a&b", use_regex: "true" } });
  eq(L.parseHash("#/admin/users/"), { page: "admin", args: ["users"], query: {} });
  eq(L.parseHash("#/queues/%E0%A4%A").args, ["%E0%A4%A"]);
});
test("buildHash is parseHash's inverse", () => {
  const h = L.buildHash("queues", ["/", "a/b c"], { page: 2, name: "x&y", sort: "" });
  eq(h, "#/queues/%2F/a%2Fb%20c?page=2&name=x%26y");
  eq(L.parseHash(h), { page: "queues", args: ["/", "a/b c"], query: { page: "2", name: "x&y" } });
});
test("tags decide login and admin", () => {
  eq(L.tagList("administrator, monitoring"), ["administrator", "monitoring"]);
  eq(L.tagList(["management"]), ["management"]);
  eq(L.tagList(""), []);
  eq(L.canLogIn([]), false);
  eq(L.canLogIn(["impersonator"]), false);
  eq(L.canLogIn(["monitoring"]), true);
  eq(L.canSee(["administrator"], "admin"), true);
  eq(L.canSee(["monitoring"], "admin"), false);
  eq(L.canSee(["management"], "admin"), false);
  eq(L.canSee(["management"], "queues"), true);
  eq(L.canSee([], "queues"), false);
});
test("parseArguments types values", () => {
  eq(L.parseArguments("x-message-ttl = 60000\nx-overflow = reject-publish\n\n# note\nx-single-active-consumer=true\nx-list = [1, \"a\"]"),
    { args: { "x-message-ttl": 60000, "x-overflow": "reject-publish", "x-single-active-consumer": true, "x-list": [1, "a"] } });
  eq(L.parseArguments(""), { args: {} });
  eq(L.parseArguments("oops"), { error: "line 1: expected key = value" });
  eq(L.typedValue('"42"'), "42");
  eq(L.typedValue("-1.5"), -1.5);
  eq(L.typedValue("{bad"), "{bad");
});
test("samplesToPoints sorts and derives rates", () => {
  const s = [{ sample: 30, timestamp: 10000 }, { sample: 10, timestamp: 5000 }, { sample: 0, timestamp: 0 }];
  eq(L.samplesToPoints(s), [{ t: 0, v: 0 }, { t: 5000, v: 10 }, { t: 10000, v: 30 }]);
  eq(L.samplesToPoints(s, true), [{ t: 5000, v: 2 }, { t: 10000, v: 4 }]);
  eq(L.samplesToPoints(undefined), []);
});
test("pushPoint keeps the last max points", () => {
  let s = [];
  for (let i = 0; i < 5; i += 1) s = L.pushPoint(s, i, i * 2, 3);
  eq(s, [{ t: 2, v: 4 }, { t: 3, v: 6 }, { t: 4, v: 8 }]);
});
test("niceMax and linePath", () => {
  eq([0, 0.3, 7, 10, 13, 260, 1000].map(L.niceMax), [1, 0.5, 10, 10, 20, 500, 1000]);
  eq(L.linePath([{ t: 0, v: 0 }, { t: 10, v: 5 }], 100, 50, 0, 10, 10), "M0.0 50.0 L100.0 25.0");
  eq(L.linePath([], 100, 50, 0, 10, 10), "");
});
test("basicAuth is UTF-8 base64", () => {
  eq(L.basicAuth("guest", "guest"), "Basic Z3Vlc3Q6Z3Vlc3Q=");
  eq(L.basicAuth("é", "x"), "Basic w6k6eA==");
});
test("deadLetterOrigin reads x-death[0]", () => {
  eq(L.deadLetterOrigin({ "x-death": [{ exchange: "jobs", "routing-keys": ["a", "b"], queue: "q", reason: "rejected" }] }),
    { exchange: "jobs", routing_key: "a", queue: "q", reason: "rejected" });
  eq(L.deadLetterOrigin({}), null);
  eq(L.deadLetterOrigin(undefined), null);
});
test("esc escapes HTML", () => {
  eq(L.esc(`<a href="x">&'</a>`), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
});
test("column groups: stored choice, toggling, visible columns", () => {
  eq(L.columnPrefsKey("alice"), "warren.columns.queues.alice");
  eq(L.parseColumnChoice(null), ["overview", "messages", "rates"]);
  eq(L.parseColumnChoice("not json"), ["overview", "messages", "rates"]);
  eq(L.parseColumnChoice('{"a":1}'), ["overview", "messages", "rates"]);
  eq(L.parseColumnChoice('["rates", "bogus", "message_bytes"]'), ["message_bytes", "rates"]);
  eq(L.parseColumnChoice("[]"), []);
  eq(L.toggleGroup(["rates"], "overview", true), ["overview", "rates"]);
  eq(L.toggleGroup(["overview", "rates"], "rates", false), ["overview"]);
  const cols = [{ title: "Name" }, { title: "Ready", group: "messages" }, { title: "Bytes", group: "message_bytes" }];
  eq(L.visibleColumns(cols, ["messages"]).map((c) => c.title), ["Name", "Ready"]);
});
test("bulk selection state", () => {
  const a = L.selectionKey("/", "a");
  const b = L.selectionKey("v", "b,\"c");
  eq(L.fromSelectionKey(b), { vhost: "v", name: 'b,"c' });
  let s = L.setSelected([], [a], true);
  eq(s, [a]);
  s = L.setSelected(s, [a, b], true);
  eq(s, [a, b]);
  eq(L.selectionState(s, [a, b]), "all");
  s = L.setSelected(s, [a], false);
  eq(s, [b]);
  eq(L.selectionState(s, [a, b]), "some");
  eq(L.selectionState([], [a, b]), "none");
  eq(L.selectionState([], []), "none");
  eq(L.bulkConfirmText("Purge", 3), "Purge 3 queues?");
  eq(L.bulkConfirmText("Delete", 1), "Delete 1 queue?");
});
test("refresh interval choice", () => {
  eq(L.parseRefresh(null), 5);
  eq(L.parseRefresh("0"), 0);
  eq(L.parseRefresh("30"), 30);
  eq(L.parseRefresh("7"), 5);
  eq(L.parseRefresh(""), 5);
});
test("limits parsing and rows", () => {
  eq(L.parseLimitValue("10"), { value: 10 });
  eq(L.parseLimitValue(" 0 "), { value: 0 });
  eq(L.parseLimitValue("-1"), { value: -1 });
  eq(L.parseLimitValue("none"), { value: -1 });
  eq(L.parseLimitValue(""), { value: -1 });
  eq(L.parseLimitValue("1.5").error !== undefined, true);
  eq(L.parseLimitValue("-3").error !== undefined, true);
  eq(L.parseLimitValue("ten").error !== undefined, true);
  eq(L.limitRows([{ vhost: "b", value: { "max-queues": 2, "max-connections": 5 } }, { vhost: "a", value: { "max-queues": 1 } }], "vhost"),
    [{ owner: "a", name: "max-queues", value: 1 }, { owner: "b", name: "max-connections", value: 5 }, { owner: "b", name: "max-queues", value: 2 }]);
  eq(L.limitRows([{ user: "u", value: { "max-channels": null } }], "user"), []);
  eq(L.limitRows(undefined, "user"), []);
});
test("explainPolicy names each key's source", () => {
  const q = { policy: "p", operator_policy: "op", effective_policy_definition: { "max-length": 2, "message-ttl": 1000, "x": 1 } };
  eq(L.explainPolicy(q, { "max-length": 10, "message-ttl": 1000 }, { "max-length": 2 }), {
    policy: "p", operatorPolicy: "op", rows: [
      { key: "max-length", value: 2, from: "both" }, { key: "message-ttl", value: 1000, from: "policy" }, { key: "x", value: 1, from: "" }] });
  eq(L.explainPolicy({}, {}, {}), { policy: null, operatorPolicy: null, rows: [] });
});

test("listQuery carries the columns projection", () => {
  eq(L.listQuery({ columns: "name,vhost" }), "?page=1&page_size=100&columns=name%2Cvhost");
  eq(L.listQuery({ columns: "" }), "?page=1&page_size=100");
});
test("columnsParam: the fields the shown columns read", () => {
  eq(L.columnsParam([{ fields: ["name"] }, { fields: ["vhost", "name"] }, { fields: ["message_stats.publish_details"] }]),
    "name,vhost,message_stats.publish_details");
  eq(L.columnsParam([{ fields: ["name"] }, { title: "reads everything" }]), "", "a column without fields wants whole objects");
  eq(L.columnsParam([]), "");
});
test("column groups of exchanges, connections and channels", () => {
  eq(L.columnPrefsKey("bob", "connections"), "warren.columns.connections.bob");
  eq(L.columnPrefsKey("bob"), "warren.columns.queues.bob");
  eq(L.parseColumnChoice(null, "exchanges"), ["overview", "rates"]);
  eq(L.parseColumnChoice(null, "connections"), ["overview", "client", "network"]);
  eq(L.parseColumnChoice(null, "channels"), ["overview", "details", "rates"]);
  eq(L.parseColumnChoice('["network", "messages", "overview"]', "connections"), ["overview", "network"], "queue groups are not connection groups");
  eq(L.toggleGroup(["rates"], "overview", true, "exchanges"), ["overview", "rates"]);
  eq(L.toggleGroup(["overview", "client"], "client", false, "connections"), ["overview"]);
  eq(L.toggleGroup([], "details", true, "channels"), ["details"]);
});
test("state badges and alarms", () => {
  eq(["running", "flow", "blocked", "blocking", "closing", "idle", "other", undefined].map(L.stateClass),
    ["ok", "warn", "bad", "bad", "bad", "warn", "", ""]);
  eq(L.nodeAlarms({ mem_alarm: true, disk_free_alarm: false }), ["memory"]);
  eq(L.nodeAlarms({ mem_alarm: true, disk_free_alarm: true }), ["memory", "disk"]);
  eq(L.nodeAlarms({}), []);
  eq(L.nodeAlarms(null), []);
});
test("cluster: node rows, figures, lag", () => {
  const nodes = [{ name: "b@h:2", mem_used: 5, running: true }, { name: "a@h:1", running: true }];
  const cluster = { leader: "a@h:1", members: [{ name: "a@h:1", running: true }, { name: "b@h:2", running: true }, { name: "c@h:3", running: false }] };
  const rows = L.nodeRows(nodes, cluster);
  eq(rows.map((r) => [r.name, r.running, r.leader]), [["a@h:1", true, true], ["b@h:2", true, false], ["c@h:3", false, false]]);
  eq(L.nodeRows(nodes, null).map((r) => r.name), ["b@h:2", "a@h:1"]);
  eq(L.nodeRows(null, null), []);
  eq([L.hasFigures(nodes[0]), L.hasFigures(nodes[1]), L.hasFigures(null)], [true, false, false]);
  eq([L.lagText({ lag: 0 }), L.lagText({ lag: 1234 }), L.lagText({ lag: null }), L.lagText(undefined)],
    ["in sync", "1,234 behind", "unknown here", "unknown here"]);
});
test("consumers: filter, client-side pages, ack mode", () => {
  const cs = [
    { consumer_tag: "ctag-A", queue: { name: "jobs", vhost: "/" }, ack_required: true },
    { consumer_tag: "worker-2", queue: { name: "emails", vhost: "/" }, ack_required: false },
    { consumer_tag: "x", queue: { name: "Jobs-low", vhost: "v" } },
  ];
  eq(L.filterConsumers(cs, "JOBS").map((c) => c.consumer_tag), ["ctag-A", "x"]);
  eq(L.filterConsumers(cs, "worker").map((c) => c.consumer_tag), ["worker-2"]);
  eq(L.filterConsumers(cs, "").length, 3);
  eq(L.ackMode(cs[0]), "manual");
  eq(L.ackMode(cs[1]), "automatic");
  const items = Array.from({ length: 250 }, (_, i) => i);
  const p = L.clientPage(items, 3, 100);
  eq([p.page, p.pageCount, p.total, p.items.length, p.items[0]], [3, 3, 250, 50, 200]);
  eq(L.clientPage(items, 99, 100).page, 3, "past the end: the last page");
  eq(L.clientPage(items, 0, 100).page, 1);
  eq(L.clientPage(items, 1, 100000).items.length, 250, "page size capped at 500");
  eq(L.clientPage([], 1, 100), { items: [], page: 1, pageCount: 1, total: 0 });
});
test("session timeout: minutes from whoami, expiry after inactivity", () => {
  eq(L.sessionTimeoutMin(undefined), 480);
  eq(L.sessionTimeoutMin(null), 480);
  eq(L.sessionTimeoutMin("30"), 30);
  eq(L.sessionTimeoutMin(1), 1);
  eq(L.sessionTimeoutMin(0), 480);
  eq(L.sessionTimeoutMin("soon"), 480);
  const now = 1_000_000_000;
  eq(L.sessionExpired(now - 59_999, now, 1), false);
  eq(L.sessionExpired(now - 60_000, now, 1), true);
  eq(L.sessionExpired(String(now - 60_000), now, "1"), true, "stored as text");
  eq(L.sessionExpired(now - 479 * 60_000, now, undefined), false, "default 480 minutes");
  eq(L.sessionExpired(now - 480 * 60_000, now, undefined), true);
  eq(L.sessionExpired(null, now, 1), false, "no stamp yet: not expired");
  eq(L.sessionExpired("garbage", now, 1), false);
  eq(L.expiredMessage(480), "Your session expired after 8h 00m without activity: log in again.");
  eq(L.expiredMessage(1), "Your session expired after 1m 00s without activity: log in again.");
});
test("definitions: per-vhost paths and file names", () => {
  const d = new Date("2026-12-02T05:00:00Z");
  eq(L.definitionsPath(""), "/api/definitions");
  eq(L.definitionsPath("/"), "/api/definitions/%2F");
  eq(L.definitionsPath("app one"), "/api/definitions/app%20one");
  eq(L.definitionsFileName("", d), "warren-definitions-2026-12-02.json");
  eq(L.definitionsFileName("/", d), "warren-definitions-default-2026-12-02.json");
  eq(L.definitionsFileName("a/b c", d), "warren-definitions-a_b_c-2026-12-02.json");
});

const results = document.getElementById("results");
let failed = 0;
for (const [name, fn] of tests) {
  const li = document.createElement("li");
  try {
    fn();
    li.className = "pass";
    li.textContent = `PASS ${name}`;
  } catch (e) {
    failed += 1;
    li.className = "fail";
    li.textContent = `FAIL ${name}: ${e.message}`;
  }
  results.append(li);
}
document.getElementById("summary").textContent = `${tests.length - failed} passed, ${failed} failed`;
