//! The verbs: each maps to management API calls and prints as rabbitmqctl does.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{Reply, seg};
use crate::output::{Printer, cell};
use crate::{EX_DATAERR, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE, Invocation};

pub struct Fail {
    pub code: i32,
    pub message: String,
}

fn fail(code: i32, message: impl Into<String>) -> Fail {
    Fail { code, message: message.into() }
}

fn usage(s: &str) -> Fail {
    fail(EX_USAGE, format!("usage: warrenctl {s}"))
}

type R = Result<(), Fail>;

struct Ctx<'a> {
    inv: &'a Invocation,
    p: Printer<'a>,
}

impl Ctx<'_> {
    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Fail> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.inv.target.request(method, path, bytes.as_deref(), headers, self.inv.timeout).map_err(|e| {
            fail(
                EX_UNAVAILABLE,
                format!("unable to reach the node's management API at {}: {e}", self.inv.target.describe()),
            )
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply, Fail> {
        self.call_with(method, path, body, &[])
    }

    /// A call that must succeed (2xx); `missing` is the message for a 404.
    fn ok(&self, method: &str, path: &str, body: Option<&Value>, missing: &str) -> Result<Reply, Fail> {
        let r = self.call(method, path, body)?;
        match r.status {
            200..=299 => Ok(r),
            404 => Err(fail(EX_SOFTWARE, missing)),
            400 => Err(fail(EX_DATAERR, r.reason())),
            401 => Err(fail(EX_SOFTWARE, format!("refused by the node: {}", r.reason()))),
            // A cluster without a quorum: the change was not made (RabbitMQ's "unavailable").
            503 => Err(fail(EX_UNAVAILABLE, r.reason())),
            s => Err(fail(EX_SOFTWARE, format!("the node answered {s}: {}", r.reason()))),
        }
    }

    fn get(&self, path: &str, missing: &str) -> Result<Value, Fail> {
        Ok(self.ok("GET", path, None, missing)?.json())
    }

    fn vh(&self) -> String {
        seg(&self.inv.vhost)
    }

    /// Columns: the ones named on the command line (checked against `known`), else the
    /// defaults. Each is (printed name, JSON path).
    fn columns(&self, defaults: &[&str], known: &[(&str, &str)]) -> Result<Vec<(String, String)>, Fail> {
        let names: Vec<String> = if self.inv.args.is_empty() {
            defaults.iter().map(|s| s.to_string()).collect()
        } else {
            self.inv.args.clone()
        };
        names
            .into_iter()
            .map(|n| match known.iter().find(|(k, _)| *k == n) {
                Some((_, path)) => Ok((n, path.to_string())),
                None => Err(fail(
                    EX_USAGE,
                    format!(
                        "Invalid column name: {n}. Valid column names: {}",
                        known.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    ),
                )),
            })
            .collect()
    }
}

fn args<'a>(inv: &'a Invocation, n: usize, shape: &str) -> Result<&'a [String], Fail> {
    if inv.args.len() < n { Err(usage(shape)) } else { Ok(&inv.args) }
}

/// `rabbitmq-queues grow`/`shrink`'s table (`--errors-only`: the failed rows); exit 69
/// naming the queues left as they were, if any.
fn member_table(c: &mut Ctx<'_>, inv: &Invocation, rows: &Value) -> R {
    let all = rows.as_array().map_or(&[][..], |v| v.as_slice());
    let failed = |r: &&Value| r["result"].as_str().is_some_and(|s| s != "ok");
    let shown: Vec<Value> = all.iter().filter(|r| !inv.flag(&["--errors-only"]) || failed(r)).cloned().collect();
    let cols: Vec<(String, String)> =
        ["vhost", "name", "size", "result"].into_iter().map(|n| (n.to_owned(), n.to_owned())).collect();
    c.p.table(&cols, &shown);
    let left: Vec<String> = all
        .iter()
        .filter(failed)
        .map(|r| format!("'{}' in vhost '{}'", cell(Some(&r["name"])), cell(Some(&r["vhost"]))))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(fail(EX_UNAVAILABLE, format!("{} queue(s) left as they were: {}", left.len(), left.join(", "))))
    }
}

fn parse_json(s: &str) -> Result<Value, Fail> {
    serde_json::from_str(s).map_err(|e| fail(EX_DATAERR, format!("invalid JSON '{s}': {e}")))
}

/// Sizes as rabbitmq.conf and rabbitmqctl write them: bytes or `2GB`, `512MiB`, ...
fn parse_bytes(s: &str) -> Result<u64, Fail> {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().map_err(|_| fail(EX_DATAERR, format!("invalid size '{s}'")))?;
    let mult: u64 = match s[digits.len()..].to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(fail(EX_DATAERR, format!("invalid size '{s}'"))),
    };
    Ok(n * mult)
}

pub fn run(inv: &Invocation, out: &mut dyn std::io::Write) -> R {
    let mut c = Ctx { inv, p: Printer { inv, out } };
    let a = &inv.args;
    let vhost = inv.vhost.clone();
    match inv.verb.as_str() {
        "ping" => {
            c.p.banner("Will ping the node. This checks that it runs and answers its management API.");
            let r = c.call("GET", "/healthz", None)?;
            if r.status != 200 {
                return Err(fail(EX_UNAVAILABLE, format!("node did not answer the ping ({})", r.status)));
            }
            c.p.line("Ping succeeded");
        }
        "await_startup" => {
            let deadline = Instant::now() + inv.timeout.max(Duration::from_secs(1));
            c.p.banner("Waiting for the node to start ...");
            loop {
                match c.call("GET", "/healthz", None) {
                    Ok(r) if r.status == 200 => break,
                    _ if Instant::now() >= deadline => {
                        return Err(fail(EX_UNAVAILABLE, format!("the node did not start within {:?}", inv.timeout)));
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        "status" => {
            let o = c.get("/api/overview", "no overview")?;
            let nodes = c.get("/api/nodes", "no nodes")?;
            let n = nodes.get(0).cloned().unwrap_or(Value::Null);
            let status = json!({
                "pid": n["os_pid"], "product_name": o["product_name"], "product_version": o["product_version"],
                "rabbitmq_version": o["rabbitmq_version"], "uptime": n["uptime"].as_u64().map(|ms| ms / 1000),
                "listeners": o["listeners"], "alarms": {"memory": n["mem_alarm"], "disk": n["disk_free_alarm"]},
                "memory": {"used": n["mem_used"], "limit": n["mem_limit"]},
                "disk_free": n["disk_free"], "disk_free_limit": n["disk_free_limit"],
                "file_descriptors": {"used": n["fd_used"], "total": n["fd_total"]},
                "data_directory": n["db_dir"], "totals": o["object_totals"],
            });
            c.p.banner(&format!("Status of node {} ...", o["node"].as_str().unwrap_or("")));
            c.p.json_value(&status);
        }
        "cluster_status" => {
            let o = c.get("/api/overview", "no overview")?;
            let me = o["node"].as_str().unwrap_or("").to_owned();
            let r = c.call("GET", "/api/warren/cluster", None)?;
            // A node without clustering is a cluster of one, as RabbitMQ shows it.
            let s = match r.status {
                200 => r.json(),
                404 => json!({"cluster_name": o["cluster_name"], "disk_nodes": [me], "running_nodes": [me],
                              "leader": null}),
                st => return Err(fail(EX_SOFTWARE, format!("the node answered {st}: {}", r.reason()))),
            };
            let status = json!({
                "cluster_name": s["cluster_name"], "disk_nodes": s["disk_nodes"], "ram_nodes": [],
                "running_nodes": s["running_nodes"], "leader": s["leader"], "alarms": [], "partitions": {},
            });
            c.p.banner(&format!("Cluster status of node {me} ..."));
            if inv.json {
                c.p.json_value(&status);
            } else {
                let list = |v: &Value| -> String {
                    let items: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    if items.is_empty() { "(none)".to_owned() } else { items.join("\n") }
                };
                let text = format!(
                    "Basics\n\nCluster name: {}\n\nDisk Nodes\n\n{}\n\nRunning Nodes\n\n{}\n\n\
                     Leader\n\n{}\n\nAlarms\n\n(none)\n\nNetwork Partitions\n\n(none)",
                    s["cluster_name"].as_str().unwrap_or(""),
                    list(&s["disk_nodes"]),
                    list(&s["running_nodes"]),
                    s["leader"].as_str().unwrap_or("(none)"),
                );
                c.p.raw(&text);
            }
        }
        // rabbitmq-diagnostics' check and rabbitmq-upgrade's wait, for rolling restarts: is it
        // safe to stop this node now (would the others still be a majority)?
        "check_if_node_is_quorum_critical" | "await_online_quorum_plus_one" => {
            let wait = inv.verb == "await_online_quorum_plus_one";
            let o = c.get("/api/overview", "no overview")?;
            let me = o["node"].as_str().unwrap_or("").to_owned();
            if wait {
                c.p.banner(&format!("Will wait for a quorum + 1 of nodes to be online for all quorum queues on {me}"));
            } else {
                c.p.banner(&format!("Checking if node {me} is critical for quorum of any quorum queues ..."));
            }
            let deadline = Instant::now() + inv.timeout;
            loop {
                let r = c.call("GET", "/api/health/checks/node-is-quorum-critical", None)?;
                match r.status {
                    200 => break,
                    503 if wait && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                    503 => {
                        let body = r.json();
                        let names: Vec<&str> = body["queues"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|q| q["readable_name"].as_str())
                            .collect();
                        let why = body["reason"].as_str().unwrap_or("quorum critical");
                        return Err(fail(EX_UNAVAILABLE, format!("{why}: {}", names.join(", "))));
                    }
                    st => return Err(fail(EX_SOFTWARE, format!("the node answered {st}: {}", r.reason()))),
                }
            }
            if !wait {
                c.p.line(&format!("Node {me} reported no quorum queues with minimum quorum"));
            }
        }
        "join_cluster" | "forget_cluster_node" => {
            let join = inv.verb == "join_cluster";
            let shape = if join { "join_cluster <NAME@HOST:PORT>" } else { "forget_cluster_node <NAME@HOST:PORT>" };
            let node = args(inv, 1, shape)?[0].clone();
            let o = c.get("/api/overview", "no overview")?;
            let me = o["node"].as_str().unwrap_or("");
            if join {
                c.p.banner(&format!("Adding node {node} to the cluster of node {me} ..."));
            } else {
                c.p.banner(&format!("Removing node {node} from the cluster"));
            }
            let method = if join { "PUT" } else { "DELETE" };
            c.ok(
                method,
                &format!("/api/warren/cluster/nodes/{}", seg(&node)),
                None,
                &format!("{node} is not a member of the cluster"),
            )?;
        }
        // rabbitmq-queues' membership verbs: who votes in a quorum queue's Raft group.
        "add_member" | "delete_member" => {
            let add = inv.verb == "add_member";
            let shape = format!("{} [--vhost <vhost>] <queue> <node>", inv.verb);
            let a = args(inv, 2, &shape)?;
            let (q, node) = (&a[0], &a[1]);
            let (banner, method, action) = if add {
                (format!("Adding a replica for queue {q} on node {node}..."), "POST", "add")
            } else {
                (format!("Removing a replica of queue {q} in vhost {vhost} from node {node}..."), "DELETE", "delete")
            };
            c.p.banner(&banner);
            c.ok(
                method,
                &format!("/api/queues/quorum/{}/{}/replicas/{action}", c.vh(), seg(q)),
                Some(&serde_json::json!({ "node": node })),
                &format!("Quorum queue '{q}' in vhost '{vhost}' does not exist"),
            )?;
        }
        // rabbitmq-queues' quorum_status, from the node asked: every member's state and role,
        // this node's own log positions, and (asked on the group's leader) each member's
        // matched index and lag; the other members' own positions are theirs to tell.
        "quorum_status" => {
            let q = &args(inv, 1, "quorum_status [--vhost <vhost>] <queue>")?[0];
            let s = c.get("/api/warren/cluster", "this node is not clustered: it has no quorum queues")?;
            c.p.banner(&format!("Status of quorum queue {q} on node {} ...", s["node"].as_str().unwrap_or("")));
            let Some(g) = s["quorum_queues"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["vhost"].as_str() == Some(vhost.as_str()) && g["name"].as_str() == Some(q.as_str()))
            else {
                return Err(fail(
                    EX_SOFTWARE,
                    format!("Quorum queue '{q}' in vhost '{vhost}' does not exist or has no Raft group of its own"),
                ));
            };
            let me = s["node"].as_str().unwrap_or("");
            let rows: Vec<Value> = g["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let mine = m["name"].as_str() == Some(me);
                    let state = if m["leader"].as_bool() == Some(true) {
                        "leader"
                    } else if m["running"].as_bool() == Some(true) {
                        "follower"
                    } else {
                        "noproc"
                    };
                    let own = |k: &str| if mine { g["log"][k].clone() } else { Value::Null };
                    json!({
                        "node_name": m["name"],
                        "raft_state": state,
                        "membership": if m["type"].as_str() == Some("voter") { "voter" } else { "non_voter" },
                        "last_written": own("last_written_index"),
                        "last_applied": own("last_applied_index"),
                        "commit_index": own("commit_index"),
                        "snapshot_index": own("snapshot_index"),
                        "term": if mine { g["term"].clone() } else { Value::Null },
                        "matched_index": m["matched_index"],
                        "lag": m["lag"],
                    })
                })
                .collect();
            let cols: Vec<(String, String)> = [
                ("Node Name", "node_name"),
                ("Raft State", "raft_state"),
                ("Membership", "membership"),
                ("Last Written", "last_written"),
                ("Last Applied", "last_applied"),
                ("Commit Index", "commit_index"),
                ("Snapshot Index", "snapshot_index"),
                ("Term", "term"),
                ("Matched Index", "matched_index"),
                ("Lag", "lag"),
            ]
            .into_iter()
            .map(|(n, p)| (n.to_owned(), p.to_owned()))
            .collect();
            c.p.table(&cols, &rows);
        }
        "grow" => {
            let a = args(
                inv,
                2,
                "grow <node> <all | even> [--vhost-pattern <pattern>] [--queue-pattern <pattern>] [--errors-only]",
            )?;
            let (node, strategy) = (&a[0], &a[1]);
            if strategy != "all" && strategy != "even" {
                return Err(usage(
                    "grow <node> <all | even> [--vhost-pattern <pattern>] [--queue-pattern <pattern>] [--errors-only]",
                ));
            }
            let body = serde_json::json!({
                "strategy": strategy,
                "vhost_pattern": inv.opt("--vhost-pattern").unwrap_or(".*"),
                "queue_pattern": inv.opt("--queue-pattern").unwrap_or(".*"),
            });
            c.p.banner(&format!("Growing {strategy} quorum queues on {node}..."));
            let path = format!("/api/warren/replicas/on/{}/grow", seg(node));
            let rows = c.ok("POST", &path, Some(&body), &format!("{node} is not a member of the cluster"))?.json();
            member_table(&mut c, inv, &rows)?;
        }
        "shrink" => {
            let node = &args(inv, 1, "shrink <node> [--errors-only]")?[0];
            c.p.banner(&format!("Shrinking quorum queues on {node}..."));
            let path = format!("/api/warren/replicas/on/{}/shrink", seg(node));
            let rows = c.ok("DELETE", &path, None, &format!("{node} is not a member of the cluster"))?.json();
            member_table(&mut c, inv, &rows)?;
        }
        "rebalance" => {
            const USAGE: &str = "rebalance <all | quorum> [--vhost-pattern <pattern>] [--queue-pattern <pattern>]";
            let kind = args(inv, 1, USAGE)?[0].clone();
            if kind != "all" && kind != "quorum" {
                return Err(usage(USAGE));
            }
            let body = serde_json::json!({
                "type": kind,
                "vhost_pattern": inv.opt("--vhost-pattern").unwrap_or(".*"),
                "queue_pattern": inv.opt("--queue-pattern").unwrap_or(".*"),
            });
            c.p.banner(&format!(
                "Re-balancing leaders of {} queues...",
                if kind == "all" { "replicated" } else { "quorum" }
            ));
            let leaders =
                c.ok("POST", "/api/warren/rebalance", Some(&body), "the node cannot rebalance queues")?.json();
            let cols: Vec<(String, String)> = [("Node name", "node"), ("Number of quorum queues", "quorum_leaders")]
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p.to_owned()))
                .collect();
            c.p.table(&cols, leaders.as_array().map_or(&[], |v| v));
        }
        "list_feature_flags" => {
            // rabbitmqctl's columns; by default the four that say what a flag is and where it stands.
            let cols = c.columns(
                &["name", "state", "stability", "desc"],
                &[
                    ("name", "name"),
                    ("state", "state"),
                    ("stability", "stability"),
                    ("provided_by", "provided_by"),
                    ("desc", "desc"),
                    ("doc_url", "doc_url"),
                ],
            )?;
            c.p.banner("Listing feature flags ...");
            let flags = c.get("/api/feature-flags", "the node has no feature flags API")?;
            c.p.table(&cols, flags.as_array().map_or(&[], |v| v));
        }
        "enable_feature_flag" => {
            let name = args(inv, 1, "enable_feature_flag <name>|all")?[0].clone();
            if name == "all" {
                c.p.banner("Enabling all feature flags ...");
            } else {
                c.p.banner(&format!("Enabling feature flag `{name}` ..."));
            }
            c.ok(
                "PUT",
                &format!("/api/feature-flags/{}/enable", seg(&name)),
                None,
                "the node has no feature flags API",
            )?;
        }
        "environment" => {
            let e = c.get("/api/warren/environment", "no environment")?;
            c.p.banner("Application environment of the node ...");
            c.p.json_value(&e);
        }
        "hash_password" => {
            let pw = args(inv, 1, "hash_password <password>")?[0].clone();
            c.p.banner(&format!("Will hash password {pw}"));
            c.p.raw(&access::password::hash_password(access::model::HashingAlgorithm::Sha256, &pw));
        }
        // --- users -------------------------------------------------------------------------
        "add_user" => {
            let a = args(inv, 1, "add_user <username> <password> [--pre-hashed-password]")?;
            let user = &a[0];
            let secret = a.get(1).cloned().unwrap_or_default();
            c.p.banner(&format!("Adding user \"{user}\" ..."));
            if c.call("GET", &format!("/api/users/{}", seg(user)), None)?.status == 200 {
                return Err(fail(EX_SOFTWARE, format!("User \"{user}\" already exists")));
            }
            let body = if inv.flag(&["--pre-hashed-password"]) {
                json!({"password_hash": secret, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""})
            } else {
                json!({"password": secret, "tags": ""})
            };
            c.ok("PUT", &format!("/api/users/{}", seg(user)), Some(&body), "")?;
            c.p.line("Done. Don't forget to grant the user permissions to some virtual hosts! See 'warrenctl help set_permissions' to learn more.");
        }
        "delete_user" => {
            let user = &args(inv, 1, "delete_user <username>")?[0];
            c.p.banner(&format!("Deleting user \"{user}\" ..."));
            c.ok("DELETE", &format!("/api/users/{}", seg(user)), None, &format!("User \"{user}\" does not exist"))?;
        }
        "change_password" => {
            let a = args(inv, 2, "change_password <username> <password>")?;
            c.p.banner(&format!("Changing password for user \"{}\" ...", a[0]));
            let u = c.get(&format!("/api/users/{}", seg(&a[0])), &format!("User \"{}\" does not exist", a[0]))?;
            let body = json!({"password": a[1], "tags": u["tags"]});
            c.ok("PUT", &format!("/api/users/{}", seg(&a[0])), Some(&body), "")?;
        }
        "set_user_tags" => {
            let a = args(inv, 1, "set_user_tags <username> <tag> [...]")?;
            let tags: Vec<&String> = a[1..].iter().collect();
            c.p.banner(&format!(
                "Setting tags for user \"{}\" to [{}] ...",
                a[0],
                tags.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
            let u = c.get(&format!("/api/users/{}", seg(&a[0])), &format!("User \"{}\" does not exist", a[0]))?;
            let body =
                json!({"password_hash": u["password_hash"], "hashing_algorithm": u["hashing_algorithm"], "tags": tags});
            c.ok("PUT", &format!("/api/users/{}", seg(&a[0])), Some(&body), "")?;
        }
        "authenticate_user" => {
            let a = args(inv, 2, "authenticate_user <username> <password>")?;
            c.p.banner(&format!("Authenticating user \"{}\" ...", a[0]));
            let r = c.call("POST", "/api/warren/authenticate", Some(&json!({"username": a[0], "password": a[1]})))?;
            if r.status != 200 {
                return Err(fail(EX_SOFTWARE, format!("Authentication failed for user \"{}\": {}", a[0], r.reason())));
            }
            c.p.line("Success");
        }
        "list_users" => {
            c.p.banner("Listing users ...");
            let users = c.get("/api/users", "")?;
            let cols = vec![("user".to_owned(), "name".to_owned()), ("tags".to_owned(), "tags".to_owned())];
            c.p.table(&cols, users.as_array().map_or(&[], |v| v));
        }
        // --- vhosts ------------------------------------------------------------------------
        "add_vhost" => {
            let v = &args(inv, 1, "add_vhost <vhost> [--description D] [--tags a,b] [--default-queue-type T]")?[0];
            c.p.banner(&format!("Adding vhost \"{v}\" ..."));
            let mut body = json!({});
            for (opt, key) in
                [("--description", "description"), ("--tags", "tags"), ("--default-queue-type", "default_queue_type")]
            {
                if let Some(x) = inv.opt(opt) {
                    body[key] = json!(x);
                }
            }
            c.ok("PUT", &format!("/api/vhosts/{}", seg(v)), Some(&body), "")?;
        }
        "delete_vhost" => {
            let v = &args(inv, 1, "delete_vhost <vhost>")?[0];
            c.p.banner(&format!("Deleting vhost \"{v}\" ..."));
            c.ok("DELETE", &format!("/api/vhosts/{}", seg(v)), None, &format!("Virtual host '{v}' does not exist"))?;
        }
        "list_vhosts" => {
            c.p.banner("Listing vhosts ...");
            let cols = c.columns(
                &["name"],
                &[
                    ("name", "name"),
                    ("description", "description"),
                    ("tags", "tags"),
                    ("default_queue_type", "default_queue_type"),
                    ("tracing", "tracing"),
                ],
            )?;
            let vs = c.get("/api/vhosts", "")?;
            c.p.table(&cols, vs.as_array().map_or(&[], |v| v));
        }
        // --- permissions -------------------------------------------------------------------
        "set_permissions" => {
            let a = args(inv, 4, "set_permissions [-p <vhost>] <username> <conf> <write> <read>")?;
            c.p.banner(&format!("Setting permissions for user \"{}\" in vhost \"{vhost}\" ...", a[0]));
            let body = json!({"configure": a[1], "write": a[2], "read": a[3]});
            c.ok("PUT", &format!("/api/permissions/{}/{}", c.vh(), seg(&a[0])), Some(&body), "")?;
        }
        "clear_permissions" => {
            let u = &args(inv, 1, "clear_permissions [-p <vhost>] <username>")?[0];
            c.p.banner(&format!("Clearing permissions for user \"{u}\" in vhost \"{vhost}\" ..."));
            c.ok(
                "DELETE",
                &format!("/api/permissions/{}/{}", c.vh(), seg(u)),
                None,
                &format!("User \"{u}\" has no permissions in vhost \"{vhost}\""),
            )?;
        }
        "list_permissions" => {
            c.p.banner(&format!("Listing permissions for vhost \"{vhost}\" ..."));
            let ps = c.get(
                &format!("/api/vhosts/{}/permissions", c.vh()),
                &format!("Virtual host '{vhost}' does not exist"),
            )?;
            let cols: Vec<(String, String)> =
                ["user", "configure", "write", "read"].iter().map(|s| (s.to_string(), s.to_string())).collect();
            c.p.table(&cols, ps.as_array().map_or(&[], |v| v));
        }
        "list_user_permissions" => {
            let u = &args(inv, 1, "list_user_permissions <username>")?[0];
            c.p.banner(&format!("Listing permissions for user \"{u}\" ..."));
            let ps = c.get(&format!("/api/users/{}/permissions", seg(u)), &format!("User \"{u}\" does not exist"))?;
            let cols: Vec<(String, String)> =
                ["vhost", "configure", "write", "read"].iter().map(|s| (s.to_string(), s.to_string())).collect();
            c.p.table(&cols, ps.as_array().map_or(&[], |v| v));
        }
        "set_topic_permissions" => {
            let a = args(inv, 4, "set_topic_permissions [-p <vhost>] <username> <exchange> <write> <read>")?;
            c.p.banner(&format!(
                "Setting topic permissions on \"{}\" for user \"{}\" in vhost \"{vhost}\" ...",
                a[1], a[0]
            ));
            let body = json!({"exchange": a[1], "write": a[2], "read": a[3]});
            c.ok("PUT", &format!("/api/topic-permissions/{}/{}", c.vh(), seg(&a[0])), Some(&body), "")?;
        }
        "clear_topic_permissions" => {
            let u = &args(inv, 1, "clear_topic_permissions [-p <vhost>] <username>")?[0];
            c.p.banner(&format!("Clearing topic permissions for user \"{u}\" in vhost \"{vhost}\" ..."));
            c.ok(
                "DELETE",
                &format!("/api/topic-permissions/{}/{}", c.vh(), seg(u)),
                None,
                &format!("User \"{u}\" has no topic permissions"),
            )?;
        }
        "list_topic_permissions" => {
            c.p.banner(&format!("Listing topic permissions for vhost \"{vhost}\" ..."));
            let ps = c.get(
                &format!("/api/vhosts/{}/topic-permissions", c.vh()),
                &format!("Virtual host '{vhost}' does not exist"),
            )?;
            let cols: Vec<(String, String)> =
                ["user", "exchange", "write", "read"].iter().map(|s| (s.to_string(), s.to_string())).collect();
            c.p.table(&cols, ps.as_array().map_or(&[], |v| v));
        }
        // --- policies ----------------------------------------------------------------------
        verb @ ("set_policy" | "set_operator_policy") => {
            let a = args(
                inv,
                3,
                &format!("{verb} [-p <vhost>] [--priority <n>] [--apply-to <kind>] <name> <pattern> <definition>"),
            )?;
            let kind = if verb == "set_policy" { "policies" } else { "operator-policies" };
            let priority: i64 = match inv.opt("--priority") {
                Some(p) => p.parse().map_err(|_| fail(EX_DATAERR, format!("invalid priority '{p}'")))?,
                None => 0,
            };
            let apply_to = inv.opt("--apply-to").unwrap_or("all");
            c.p.banner(&format!(
                "Setting policy \"{}\" for pattern \"{}\" to \"{}\" with priority \"{priority}\" for vhost \"{vhost}\" ...",
                a[0], a[1], a[2]
            ));
            let body =
                json!({"pattern": a[1], "definition": parse_json(&a[2])?, "priority": priority, "apply-to": apply_to});
            c.ok("PUT", &format!("/api/{kind}/{}/{}", c.vh(), seg(&a[0])), Some(&body), "")?;
        }
        verb @ ("clear_policy" | "clear_operator_policy") => {
            let name = &args(inv, 1, &format!("{verb} [-p <vhost>] <name>"))?[0];
            let kind = if verb == "clear_policy" { "policies" } else { "operator-policies" };
            c.p.banner(&format!("Clearing policy \"{name}\" on vhost \"{vhost}\" ..."));
            c.ok("DELETE", &format!("/api/{kind}/{}/{}", c.vh(), seg(name)), None, "Parameter does not exist")?;
        }
        verb @ ("list_policies" | "list_operator_policies") => {
            let kind = if verb == "list_policies" { "policies" } else { "operator-policies" };
            c.p.banner(&format!("Listing policies for vhost \"{vhost}\" ..."));
            let ps = c.get(&format!("/api/{kind}/{}", c.vh()), &format!("Virtual host '{vhost}' does not exist"))?;
            let cols: Vec<(String, String)> = ["vhost", "name", "pattern", "apply-to", "definition", "priority"]
                .iter()
                .map(|s| (s.to_string(), s.to_string()))
                .collect();
            c.p.table(&cols, ps.as_array().map_or(&[], |v| v));
        }
        // --- limits ------------------------------------------------------------------------
        "set_vhost_limits" => {
            let def = parse_json(&args(inv, 1, "set_vhost_limits [-p <vhost>] <definition>")?[0])?;
            c.p.banner(&format!("Applying limits to vhost \"{vhost}\": {def} ..."));
            for (k, v) in def.as_object().ok_or_else(|| fail(EX_DATAERR, "limits must be a JSON object"))? {
                c.ok("PUT", &format!("/api/vhost-limits/{}/{}", c.vh(), seg(k)), Some(&json!({"value": v})), "")?;
            }
        }
        "clear_vhost_limits" => {
            c.p.banner(&format!("Clearing vhost \"{vhost}\" limits ..."));
            for k in ["max-connections", "max-queues"] {
                let _ = c.call("DELETE", &format!("/api/vhost-limits/{}/{}", c.vh(), k), None)?;
            }
        }
        "list_vhost_limits" => {
            c.p.banner(&format!("Listing limits for vhost \"{vhost}\" ..."));
            let ls = c.get(&format!("/api/vhost-limits/{}", c.vh()), "")?;
            let value = ls.get(0).map(|l| l["value"].clone()).unwrap_or(json!({}));
            c.p.raw(&value.to_string());
        }
        "set_user_limits" => {
            let a = args(inv, 2, "set_user_limits <username> <definition>")?;
            let def = parse_json(&a[1])?;
            c.p.banner(&format!("Setting user limits to \"{def}\" for user \"{}\" ...", a[0]));
            for (k, v) in def.as_object().ok_or_else(|| fail(EX_DATAERR, "limits must be a JSON object"))? {
                c.ok("PUT", &format!("/api/user-limits/{}/{}", seg(&a[0]), seg(k)), Some(&json!({"value": v})), "")?;
            }
        }
        "clear_user_limits" => {
            let a = args(inv, 2, "clear_user_limits <username> <limit>|all")?;
            c.p.banner(&format!("Clearing \"{}\" limit for user \"{}\" ...", a[1], a[0]));
            let names: Vec<&str> =
                if a[1] == "all" { vec!["max-connections", "max-channels"] } else { vec![a[1].as_str()] };
            for k in names {
                let _ = c.call("DELETE", &format!("/api/user-limits/{}/{}", seg(&a[0]), seg(k)), None)?;
            }
        }
        "list_user_limits" => {
            // `--user U`: that user's limits only (rabbitmqctl's form).
            let ls = match inv.opt("--user") {
                Some(u) => {
                    c.p.banner(&format!("Listing limits for user \"{u}\" ..."));
                    c.get(&format!("/api/user-limits/{}", seg(u)), &format!("User '{u}' does not exist"))?
                }
                None => {
                    c.p.banner("Listing user limits ...");
                    c.get("/api/user-limits", "")?
                }
            };
            let cols: Vec<(String, String)> = ["user", "limits"]
                .iter()
                .map(|s| (s.to_string(), if *s == "limits" { "value".into() } else { s.to_string() }))
                .collect();
            c.p.table(&cols, ls.as_array().map_or(&[], |v| v));
        }
        // --- listings ----------------------------------------------------------------------
        "list_queues" => {
            let cols = c.columns(&["name", "messages"], QUEUE_COLUMNS)?;
            c.p.banner(&format!("Timeout: {:.1} seconds ...", inv.timeout.as_secs_f64()));
            c.p.banner(&format!("Listing queues for vhost {vhost} ..."));
            let qs = c.get(&format!("/api/queues/{}", c.vh()), &format!("Virtual host '{vhost}' does not exist"))?;
            c.p.table(&cols, qs.as_array().map_or(&[], |v| v));
        }
        "list_exchanges" => {
            let cols = c.columns(
                &["name", "type"],
                &[
                    ("name", "name"),
                    ("type", "type"),
                    ("durable", "durable"),
                    ("auto_delete", "auto_delete"),
                    ("internal", "internal"),
                    ("arguments", "arguments"),
                    ("policy", "policy"),
                ],
            )?;
            c.p.banner(&format!("Listing exchanges for vhost {vhost} ..."));
            let xs = c.get(&format!("/api/exchanges/{}", c.vh()), &format!("Virtual host '{vhost}' does not exist"))?;
            c.p.table(&cols, xs.as_array().map_or(&[], |v| v));
        }
        "list_bindings" => {
            let cols = c.columns(
                &["source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments"],
                &[
                    ("source_name", "source"),
                    ("source_kind", "source_kind"),
                    ("destination_name", "destination"),
                    ("destination_kind", "destination_type"),
                    ("routing_key", "routing_key"),
                    ("arguments", "arguments"),
                ],
            )?;
            c.p.banner(&format!("Listing bindings for vhost {vhost}..."));
            let mut bs =
                c.get(&format!("/api/bindings/{}", c.vh()), &format!("Virtual host '{vhost}' does not exist"))?;
            if let Some(list) = bs.as_array_mut() {
                for b in list.iter_mut() {
                    b["source_kind"] = json!("exchange");
                }
            }
            c.p.table(&cols, bs.as_array().map_or(&[], |v| v));
        }
        "list_connections" => {
            let cols = c.columns(&["user", "peer_host", "peer_port", "state"], CONNECTION_COLUMNS)?;
            c.p.banner("Listing connections ...");
            let cs = c.get("/api/connections", "")?;
            c.p.table(&cols, cs.as_array().map_or(&[], |v| v));
        }
        "list_channels" => {
            let cols = c.columns(
                &["pid", "user", "consumer_count", "messages_unacknowledged"],
                &[
                    ("pid", "name"),
                    ("name", "name"),
                    ("user", "user"),
                    ("connection", "connection_details.name"),
                    ("number", "number"),
                    ("vhost", "vhost"),
                    ("consumer_count", "consumer_count"),
                    ("messages_unacknowledged", "messages_unacknowledged"),
                    ("messages_unconfirmed", "messages_unconfirmed"),
                    ("messages_uncommitted", "messages_uncommitted"),
                    ("acks_uncommitted", "acks_uncommitted"),
                    ("prefetch_count", "prefetch_count"),
                    ("transactional", "transactional"),
                    ("confirm", "confirm"),
                ],
            )?;
            c.p.banner("Listing channels ...");
            let cs = c.get("/api/channels", "")?;
            c.p.table(&cols, cs.as_array().map_or(&[], |v| v));
        }
        "list_consumers" => {
            let cols = c.columns(
                &["queue_name", "channel_pid", "consumer_tag", "ack_required", "prefetch_count", "active", "arguments"],
                &[
                    ("queue_name", "queue.name"),
                    ("channel_pid", "channel_details.name"),
                    ("consumer_tag", "consumer_tag"),
                    ("ack_required", "ack_required"),
                    ("prefetch_count", "prefetch_count"),
                    ("active", "active"),
                    ("activity_status", "activity_status"),
                    ("arguments", "arguments"),
                ],
            )?;
            c.p.banner(&format!("Listing consumers in vhost {vhost} ..."));
            let cs = c.get(&format!("/api/consumers/{}", c.vh()), &format!("Virtual host '{vhost}' does not exist"))?;
            c.p.table(&cols, cs.as_array().map_or(&[], |v| v));
        }
        // --- queues and connections --------------------------------------------------------
        "purge_queue" => {
            let q = &args(inv, 1, "purge_queue [-p <vhost>] <queue>")?[0];
            c.p.banner(&format!("Purging queue '{q}' in vhost '{vhost}' ..."));
            c.ok(
                "DELETE",
                &format!("/api/queues/{}/{}/contents", c.vh(), seg(q)),
                None,
                &format!("Queue '{q}' in vhost '{vhost}' does not exist"),
            )?;
        }
        "delete_queue" => {
            let q = &args(inv, 1, "delete_queue [-p <vhost>] <queue> [--if-empty|-e] [--if-unused|-u]")?[0];
            c.p.banner(&format!("Deleting queue '{q}' on vhost '{vhost}' ..."));
            let path = format!("/api/queues/{}/{}", c.vh(), seg(q));
            let info = c.get(&path, &format!("Queue '{q}' in vhost '{vhost}' does not exist"))?;
            let mut query = Vec::new();
            if inv.flag(&["--if-empty"]) {
                query.push("if-empty=true");
            }
            if inv.flag(&["--if-unused"]) {
                query.push("if-unused=true");
            }
            let full = if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) };
            c.ok("DELETE", &full, None, &format!("Queue '{q}' in vhost '{vhost}' does not exist"))?;
            c.p.line(&format!(
                "Queue was successfully deleted with {} messages",
                info["messages"].as_u64().unwrap_or(0)
            ));
        }
        "close_connection" => {
            let a = args(inv, 2, "close_connection <connection name> <explanation>")?;
            c.p.banner(&format!("Closing connection {}, reason: {}...", a[0], a[1]));
            let r = c.call_with(
                "DELETE",
                &format!("/api/connections/{}", seg(&a[0])),
                None,
                &[("X-Reason", a[1].as_str())],
            )?;
            if !(200..300).contains(&r.status) {
                return Err(fail(EX_SOFTWARE, format!("no connection named '{}' ({})", a[0], r.status)));
            }
        }
        "close_all_connections" => {
            let reason = &args(inv, 1, "close_all_connections [-p <vhost>] [--global] [--limit <n>] <explanation>")?[0];
            let limit: usize = match inv.opt("--limit") {
                Some(l) => l.parse().map_err(|_| fail(EX_DATAERR, format!("invalid limit '{l}'")))?,
                None => usize::MAX,
            };
            let global = inv.flag(&["--global"]);
            c.p.banner(&if global {
                "Closing all connections ...".to_owned()
            } else {
                format!("Closing all connections in vhost {vhost} ...")
            });
            let cs = c.get("/api/connections", "")?;
            let names: Vec<String> = cs
                .as_array()
                .map_or(&[][..], |v| v)
                .iter()
                .filter(|x| global || x["vhost"] == json!(vhost))
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .take(limit)
                .collect();
            for n in &names {
                let _ = c.call_with(
                    "DELETE",
                    &format!("/api/connections/{}", seg(n)),
                    None,
                    &[("X-Reason", reason.as_str())],
                )?;
            }
            c.p.line(&format!("Closed {} connections", names.len()));
        }
        // --- definitions and node settings -------------------------------------------------
        "export_definitions" => {
            let dest = &args(inv, 1, "export_definitions <file|->")?[0];
            let defs = c.ok("GET", "/api/definitions", None, "")?;
            if dest == "-" {
                c.p.raw(&String::from_utf8_lossy(&defs.body));
            } else {
                c.p.banner(&format!("Exporting definitions in JSON to a file at \"{dest}\" ..."));
                std::fs::write(dest, &defs.body).map_err(|e| fail(EX_SOFTWARE, format!("writing {dest}: {e}")))?;
            }
        }
        "import_definitions" => {
            let src = &args(inv, 1, "import_definitions <file>")?[0];
            c.p.banner(&format!("Importing definitions in JSON from a file at \"{src}\" ..."));
            let body = std::fs::read(src).map_err(|e| fail(EX_DATAERR, format!("reading {src}: {e}")))?;
            let json: Value =
                serde_json::from_slice(&body).map_err(|e| fail(EX_DATAERR, format!("{src}: not JSON: {e}")))?;
            c.ok("POST", "/api/definitions", Some(&json), "")?;
            c.p.line("Successfully started definition import. This process is asynchronous and can take some time.");
        }
        "set_vm_memory_high_watermark" => {
            let body = match a.as_slice() {
                [abs, v] if abs == "absolute" => json!({"absolute": parse_bytes(v)?}),
                [f] => {
                    json!({"relative": f.parse::<f64>().map_err(|_| fail(EX_DATAERR, format!("invalid fraction '{f}'")))?})
                }
                _ => return Err(usage("set_vm_memory_high_watermark <fraction> | absolute <value>")),
            };
            c.p.banner(&format!("Setting memory threshold on the node to {} ...", a.join(" ")));
            c.ok("PUT", "/api/warren/vm-memory-high-watermark", Some(&body), "")?;
        }
        "set_disk_free_limit" => {
            let body = match a.as_slice() {
                [m, f] if m == "mem_relative" => {
                    json!({"mem_relative": f.parse::<f64>().map_err(|_| fail(EX_DATAERR, format!("invalid fraction '{f}'")))?})
                }
                [v] => json!({"absolute": parse_bytes(v)?}),
                _ => return Err(usage("set_disk_free_limit <bytes> | mem_relative <fraction>")),
            };
            c.p.banner(&format!("Setting disk free limit on the node to {} ...", a.join(" ")));
            c.ok("PUT", "/api/warren/disk-free-limit", Some(&body), "")?;
        }
        other => return Err(fail(EX_USAGE, format!("command not found: {other}\n\n{}", crate::usage()))),
    }
    Ok(())
}

const QUEUE_COLUMNS: &[(&str, &str)] = &[
    ("name", "name"),
    ("messages", "messages"),
    ("durable", "durable"),
    ("auto_delete", "auto_delete"),
    ("arguments", "arguments"),
    ("policy", "policy"),
    ("operator_policy", "operator_policy"),
    ("effective_policy_definition", "effective_policy_definition"),
    ("exclusive", "exclusive"),
    ("messages_ready", "messages_ready"),
    ("messages_unacknowledged", "messages_unacknowledged"),
    ("message_bytes", "message_bytes"),
    ("consumers", "consumers"),
    ("consumer_utilisation", "consumer_utilisation"),
    ("memory", "memory"),
    ("state", "state"),
    ("type", "type"),
    ("vhost", "vhost"),
];

const CONNECTION_COLUMNS: &[(&str, &str)] = &[
    ("user", "user"),
    ("peer_host", "peer_host"),
    ("peer_port", "peer_port"),
    ("state", "state"),
    ("name", "name"),
    ("pid", "name"),
    ("host", "host"),
    ("port", "port"),
    ("vhost", "vhost"),
    ("channels", "channels"),
    ("protocol", "protocol"),
    ("ssl", "ssl"),
    ("auth_mechanism", "auth_mechanism"),
    ("timeout", "timeout"),
    ("frame_max", "frame_max"),
    ("channel_max", "channel_max"),
    ("client_properties", "client_properties"),
    ("recv_oct", "recv_oct"),
    ("send_oct", "send_oct"),
    ("connected_at", "connected_at"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024").ok(), Some(1024));
        assert_eq!(parse_bytes("2GB").ok(), Some(2_000_000_000));
        assert_eq!(parse_bytes("1GiB").ok(), Some(1 << 30));
        assert!(parse_bytes("x").is_err());
    }
}
