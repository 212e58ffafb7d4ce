//! `warrenctl`: rabbitmqctl's verbs, argument shapes and output, over Warren's management
//! API. Installed or symlinked as `rabbitmqctl` it behaves the same, so scripts, Ansible's
//! CLI mode and client test suites that shell out to rabbitmqctl work unchanged.
//!
//! It reaches the node through the Unix socket in the node's data dir (`warren.sock`;
//! whoever may open it is an administrator, as with lavinmqctl), or over HTTP with
//! credentials (`--url`, `--username`, `--password`).
//!
//! Output as rabbitmqctl's: banner lines ("Listing users ..."; `-q` drops them), then a
//! tab-separated header and rows (`-s` or `--no-table-headers` drop the header), or
//! `--formatter json`. Errors: "Error:" and the reason on stderr, and rabbitmqctl's exit
//! codes (64 usage, 65 bad data, 69 node unreachable, 70 refused or failed).

mod http;
mod output;
mod verbs;

use std::path::PathBuf;
use std::time::Duration;

pub use http::Target;

/// Exit codes (rabbitmqctl's, from sysexits).
pub const EX_OK: i32 = 0;
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_UNAVAILABLE: i32 = 69;
pub const EX_SOFTWARE: i32 = 70;

/// Parsed global options and the verb's own arguments.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub verb: String,
    pub args: Vec<String>,
    /// `--name` or `--name=value` options after the verb (verb-specific).
    pub opts: Vec<(String, Option<String>)>,
    pub vhost: String,
    pub quiet: bool,
    pub silent: bool,
    pub no_headers: bool,
    pub json: bool,
    pub timeout: Duration,
    pub target: Target,
}

impl Invocation {
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.opts.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    pub fn flag(&self, names: &[&str]) -> bool {
        self.opts.iter().any(|(n, _)| names.contains(&n.as_str()))
    }
}

/// Flags (options without a value) rabbitmqctl's verbs take.
const FLAGS: &[&str] = &[
    "--quiet",
    "--silent",
    "--no-table-headers",
    "--pre-hashed-password",
    "--if-empty",
    "--if-unused",
    "--force",
    "--global",
    "--online",
    "--offline",
    "--local",
    "--skip-if-unchanged",
    "--errors-only",
];

/// Options that take a value (the rest are flags).
const VALUED: &[&str] = &[
    "--vhost",
    "--formatter",
    "--timeout",
    "--node",
    "--url",
    "--username",
    "--password",
    "--socket",
    "--data-dir",
    "--priority",
    "--apply-to",
    "--description",
    "--tags",
    "--default-queue-type",
    "--limit",
    "--format",
    "--user",
    "--vhost-pattern",
    "--queue-pattern",
];

pub fn usage() -> String {
    "Usage: warrenctl [-p vhost] [-q] [-s] [--formatter json|table] [-t timeout] \
     [--socket PATH | --data-dir DIR | --url http://HOST:PORT --username U --password P] <command> [args]\n\n\
     Commands: status ping await_startup environment cluster_status join_cluster forget_cluster_node\n  \
     check_if_node_is_quorum_critical await_online_quorum_plus_one\n  \
     add_member delete_member grow shrink rebalance quorum_status (rabbitmq-queues': quorum queues' voters and leaders)\n  \
     list_feature_flags enable_feature_flag\n  \
     add_user delete_user change_password authenticate_user set_user_tags list_users hash_password\n  \
     add_vhost delete_vhost list_vhosts\n  \
     set_permissions clear_permissions list_permissions list_user_permissions\n  \
     set_topic_permissions clear_topic_permissions list_topic_permissions\n  \
     set_policy clear_policy list_policies set_operator_policy clear_operator_policy list_operator_policies\n  \
     set_vhost_limits clear_vhost_limits list_vhost_limits set_user_limits clear_user_limits list_user_limits\n  \
     list_queues list_exchanges list_bindings list_connections list_channels list_consumers\n  \
     purge_queue delete_queue close_connection close_all_connections\n  \
     export_definitions import_definitions set_vm_memory_high_watermark set_disk_free_limit\n\n\
     The node is reached through <data dir>/warren.sock (default ./warren-data; $WARREN_DATA_DIR, \
     $WARREN_SOCKET), or over HTTP ($WARREN_API_URL, $WARREN_API_USER, $WARREN_API_PASSWORD)."
        .to_owned()
}

/// Parse argv (without the program name). Global options may come before or after the
/// verb, as rabbitmqctl allows.
pub fn parse(argv: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Invocation, String> {
    let mut positional = Vec::new();
    let mut opts: Vec<(String, Option<String>)> = Vec::new();
    let mut it = argv.iter().peekable();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let long = match name.as_str() {
            "-p" => "--vhost",
            "-q" => "--quiet",
            "-s" => "--silent",
            "-t" => "--timeout",
            "-n" => "--node",
            "-e" => "--if-empty",
            "-u" => "--if-unused",
            n => n,
        }
        .to_owned();
        if long.starts_with("--") {
            if !VALUED.contains(&long.as_str()) && !FLAGS.contains(&long.as_str()) {
                return Err(format!("unknown option {name}"));
            }
            let value = if VALUED.contains(&long.as_str()) {
                match inline {
                    Some(v) => Some(v),
                    None => Some(it.next().ok_or_else(|| format!("option {name} needs a value"))?.clone()),
                }
            } else {
                inline
            };
            opts.push((long, value));
        } else if a.starts_with('-') && a.len() > 1 && a.parse::<f64>().is_err() {
            return Err(format!("unknown option {a}"));
        } else {
            positional.push(a.clone());
        }
    }
    let get = |n: &str| opts.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| v.clone());
    let has = |n: &str| opts.iter().any(|(k, _)| k == n);
    if positional.is_empty() {
        return Err("no command given".into());
    }
    let verb = positional.remove(0);
    let timeout = match get("--timeout") {
        Some(t) => Duration::from_secs_f64(t.parse::<f64>().map_err(|_| format!("invalid timeout '{t}'"))?),
        None => Duration::from_secs(60),
    };
    let target = match get("--url").or_else(|| env("WARREN_API_URL")) {
        Some(url) => {
            let rest =
                url.strip_prefix("http://").ok_or_else(|| format!("--url must be http://HOST:PORT, got {url}"))?;
            let hostport = rest.split('/').next().unwrap_or(rest);
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) => {
                    (h.trim_matches(['[', ']']).to_owned(), p.parse().map_err(|_| format!("bad port in {url}"))?)
                }
                None => (hostport.to_owned(), 15672),
            };
            Target::Tcp {
                host,
                port,
                user: get("--username").or_else(|| env("WARREN_API_USER")).unwrap_or_else(|| "guest".into()),
                password: get("--password").or_else(|| env("WARREN_API_PASSWORD")).unwrap_or_else(|| "guest".into()),
            }
        }
        None => {
            let sock = get("--socket").or_else(|| env("WARREN_SOCKET")).map(PathBuf::from).unwrap_or_else(|| {
                let dir =
                    get("--data-dir").or_else(|| env("WARREN_DATA_DIR")).unwrap_or_else(|| "./warren-data".into());
                PathBuf::from(dir).join("warren.sock")
            });
            Target::Socket(sock)
        }
    };
    let formatter = get("--formatter").unwrap_or_else(|| "table".into());
    if !matches!(formatter.as_str(), "json" | "table" | "pretty_table" | "csv") {
        return Err(format!("unsupported formatter '{formatter}' (json, table)"));
    }
    const GLOBAL: &[&str] =
        &["--vhost", "--quiet", "--silent", "--timeout", "--node", "--url", "--username", "--password", "--socket"];
    let verb_opts: Vec<_> = opts
        .iter()
        .filter(|(k, _)| {
            !GLOBAL.contains(&k.as_str()) && k != "--formatter" && k != "--no-table-headers" && k != "--data-dir"
        })
        .cloned()
        .collect();
    Ok(Invocation {
        verb,
        args: positional,
        opts: verb_opts,
        vhost: get("--vhost").unwrap_or_else(|| "/".into()),
        quiet: has("--quiet") || has("--silent"),
        silent: has("--silent"),
        no_headers: has("--silent") || has("--no-table-headers"),
        json: formatter == "json",
        timeout,
        target,
    })
}

/// Run a command line (argv without the program name); returns the exit code. Output goes
/// to `out`, errors to `err`.
pub fn run(argv: &[String], out: &mut dyn std::io::Write, err: &mut dyn std::io::Write) -> i32 {
    if argv.is_empty() || argv.iter().any(|a| a == "--help" || a == "-h" || a == "help") {
        let _ = writeln!(out, "{}", usage());
        return if argv.is_empty() { EX_USAGE } else { EX_OK };
    }
    let inv = match parse(argv, &|k| std::env::var(k).ok()) {
        Ok(i) => i,
        Err(e) => {
            let _ = writeln!(err, "Error: {e}\n\n{}", usage());
            return EX_USAGE;
        }
    };
    match verbs::run(&inv, out) {
        Ok(()) => EX_OK,
        Err(f) => {
            let _ = writeln!(err, "Error:\n{}", f.message);
            f.code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, String> {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&v, &|_| None)
    }

    #[test]
    fn globals_anywhere_and_verb_options() {
        let i = p(&["-q", "set_permissions", "-p", "jobs", "bob", ".*", "^$", ".*"]).unwrap();
        assert_eq!((i.verb.as_str(), i.vhost.as_str(), i.quiet), ("set_permissions", "jobs", true));
        assert_eq!(i.args, ["bob", ".*", "^$", ".*"]);
        let i = p(&["list_queues", "name", "messages", "--formatter", "json", "--vhost=/x"]).unwrap();
        assert!(i.json);
        assert_eq!((i.vhost.as_str(), i.args.len()), ("/x", 2));
        let i = p(&["set_policy", "--priority", "5", "--apply-to", "queues", "ttl", "^q", "{}"]).unwrap();
        assert_eq!((i.opt("--priority"), i.opt("--apply-to")), (Some("5"), Some("queues")));
        let i = p(&["delete_queue", "q", "-e"]).unwrap();
        assert!(i.flag(&["--if-empty"]));
        // A negative number is an argument, not an option.
        let i = p(&["set_vhost_limits", "{\"max-queues\": -1}"]).unwrap();
        assert_eq!(i.args.len(), 1);
    }

    #[test]
    fn targets() {
        let i = p(&["list_users"]).unwrap();
        assert!(matches!(i.target, Target::Socket(ref s) if s.ends_with("warren-data/warren.sock")));
        let i = p(&["--data-dir", "/var/lib/w", "list_users"]).unwrap();
        assert!(matches!(i.target, Target::Socket(ref s) if s == std::path::Path::new("/var/lib/w/warren.sock")));
        let i = p(&["--url", "http://127.0.0.1:15673", "--username", "a", "--password", "b", "ping"]).unwrap();
        assert!(
            matches!(i.target, Target::Tcp { ref host, port: 15673, ref user, .. } if host == "127.0.0.1" && user == "a")
        );
        assert!(p(&["--bogus", "ping"]).is_err());
        assert!(p(&["--formatter", "erlang", "ping"]).is_err());
    }
}
