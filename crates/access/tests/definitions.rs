//! Importing a RabbitMQ 3.12 definitions file, exporting, and refusing bad files whole.

use access::password::hash_with_salt;
use access::{
    AccessError, ApplyTo, Change, Definitions, Directory, HashingAlgorithm, Perm, Resource, TopicVars, UserLimits,
    Vhost, VhostLimits,
};
use wire::FieldValue;

const RABBITMQ_3_12: &[u8] = include_bytes!("data/rabbitmq-3.12-definitions.json");

fn imported() -> (Directory, access::ImportPlan) {
    let defs = Definitions::parse(RABBITMQ_3_12).unwrap();
    let mut dir = Directory::new();
    let plan = defs.plan(&dir).unwrap();
    for c in plan.changes.clone() {
        dir.apply(c).unwrap();
    }
    (dir, plan)
}

#[test]
fn file_hashes_are_rabbitmq_format_of_known_passwords() {
    let defs = Definitions::parse(RABBITMQ_3_12).unwrap();
    let hash_of = |name: &str| defs.users.iter().find(|u| u.name == name).unwrap().password_hash.clone();
    assert_eq!(hash_of("admin"), hash_with_salt(HashingAlgorithm::Sha256, [1, 2, 3, 4], "admin-secret"));
    assert_eq!(hash_of("app"), hash_with_salt(HashingAlgorithm::Sha256, [0xa0, 0xb0, 0xc0, 0xd0], "app-pw"));
    assert_eq!(hash_of("ops"), hash_with_salt(HashingAlgorithm::Sha512, [0x0b, 0xad, 0xf0, 0x0d], "ops-pw"));
    assert_eq!(hash_of("legacy"), hash_with_salt(HashingAlgorithm::Md5, [0xca, 0xfe, 0xba, 0xbe], "legacy-pw"));
}

#[test]
fn rabbitmq_3_12_file_parses_and_plans() {
    let (dir, plan) = imported();

    // Order: vhosts, users, permissions, topic permissions, limits, policies.
    let rank = |c: &Change| match c {
        Change::PutVhost(_) => 0,
        Change::PutUser(_) => 1,
        Change::PutPermission(_) => 2,
        Change::PutTopicPermission(_) => 3,
        Change::SetVhostLimits { .. } | Change::SetUserLimits { .. } => 4,
        Change::PutPolicy(_) => 5,
        Change::PutOperatorPolicy(_) => 6,
        other => panic!("unexpected change {other:?}"),
    };
    assert!(plan.changes.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])), "{:?}", plan.changes);

    // Users: both tag shapes, all algorithms, limits (-1 = unlimited), passwords work.
    assert_eq!(dir.users().count(), 5);
    assert_eq!(dir.user("admin").unwrap().tags, ["administrator", "management"]);
    assert_eq!(dir.user("app").unwrap().tags, ["monitoring"]);
    assert!(dir.user("legacy").unwrap().tags.is_empty());
    assert_eq!(dir.user("app").unwrap().limits, UserLimits { max_connections: Some(10), max_channels: Some(100) });
    assert_eq!(dir.user("ops").unwrap().limits, UserLimits::default());
    assert_eq!(dir.authenticate("admin", "admin-secret").unwrap().name, "admin");
    assert_eq!(dir.authenticate("ops", "ops-pw").unwrap().hashing_algorithm, HashingAlgorithm::Sha512);
    assert_eq!(dir.authenticate("legacy", "legacy-pw").unwrap().hashing_algorithm, HashingAlgorithm::Md5);
    assert!(dir.authenticate("app", "wrong").is_err());
    assert!(dir.authenticate("cert-only", "").is_err());

    // Vhosts: metadata and top-level fields, limits from the vhost-limits parameter.
    let root = dir.vhost("/").unwrap();
    assert_eq!(root.description, "Default virtual host");
    let orders = dir.vhost("orders").unwrap();
    assert_eq!(orders.tags, ["prod", "eu"]);
    assert_eq!(orders.default_queue_type.as_deref(), Some("quorum"));
    assert_eq!(orders.limits, VhostLimits { max_connections: Some(50), max_queues: Some(200) });

    // Permissions, with '' meaning nothing and unanchored matching.
    let app = dir.grants("app", "orders").unwrap();
    assert!(app.check(Perm::Configure, Resource::Queue, "app.orders").is_ok());
    assert!(app.check(Perm::Configure, Resource::Queue, "orders.dead").is_err());
    assert!(app.check(Perm::Write, Resource::Exchange, "orders").is_ok());
    let ops = dir.grants("ops", "orders").unwrap();
    assert!(ops.check(Perm::Read, Resource::Queue, "anything").is_ok());
    assert_eq!(
        ops.check(Perm::Write, Resource::Exchange, "orders"),
        Err("access to exchange 'orders' in vhost 'orders' refused for user 'ops'".into())
    );
    assert!(dir.grants("app", "/").is_none());
    let vars = TopicVars { username: "app".into(), vhost: "orders".into(), client_id: None };
    assert!(app.check_topic(Perm::Write, "orders", "order.app.created", &vars).is_ok());
    assert!(app.check_topic(Perm::Write, "orders", "order.other.created", &vars).is_err());

    // Policies and operator policies (the latter from parameters).
    let p: Vec<_> = dir.policies("orders").collect();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].name.as_str(), p[0].apply_to, p[0].priority), ("dlx-all", ApplyTo::Queues, 10));
    let op: Vec<_> = dir.operator_policies("orders").collect();
    assert_eq!(op.len(), 1);
    assert_eq!(op[0].name, "cap-everything");
    assert_eq!(op[0].definition["max-length"], 100000);

    // Topology: x-arguments become typed field values; amq.* exchanges are skipped.
    assert_eq!(plan.queues.len(), 3);
    let q = &plan.queues[0];
    assert_eq!(q.name, "app.orders");
    assert_eq!(q.arguments.get("x-queue-type").and_then(FieldValue::as_str), Some("quorum"));
    assert_eq!(q.arguments.get("x-delivery-limit"), Some(&FieldValue::I64(5)));
    assert_eq!(plan.exchanges.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["orders", "orders.dlx"]);
    assert_eq!(plan.exchanges[0].r#type, "topic");
    assert_eq!(plan.exchanges[1].arguments.get("alternate-exchange").and_then(FieldValue::as_str), Some("orders"));
    assert_eq!(plan.bindings.len(), 3);
    assert_eq!(plan.bindings[1].arguments.get("x-match").and_then(FieldValue::as_str), Some("all"));

    // What was accepted but not applied is reported.
    let warnings = plan.warnings.join("\n");
    assert!(warnings.contains("ha-mode, ha-sync-mode"), "{warnings}");
    assert!(warnings.contains("federation-upstream"), "{warnings}");
    assert!(warnings.contains("cluster_name"), "{warnings}");
    assert!(warnings.contains("amq.custom"), "{warnings}");

    // Parameters are carried raw.
    let defs = Definitions::parse(RABBITMQ_3_12).unwrap();
    assert_eq!(defs.parameters.len(), 3);
    assert_eq!(defs.global_parameters[0]["name"], "cluster_name");
}

#[test]
fn export_then_parse_is_identical_and_reimports_to_the_same_directory() {
    let (dir, plan) = imported();
    let exported = Definitions::export(&dir, plan.queues.clone(), plan.exchanges.clone(), plan.bindings.clone());
    let json = exported.to_json_pretty();
    let text = std::str::from_utf8(&json).unwrap();
    for key in [
        "rabbit_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "parameters",
        "global_parameters",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert!(text.contains(&format!("\"{key}\":")), "missing top-level key {key}");
    }
    assert!(text.contains("\"hashing_algorithm\": \"rabbit_password_hashing_sha512\""));
    let reparsed = Definitions::parse(&json).unwrap();
    assert_eq!(reparsed, exported);

    let mut again = Directory::new();
    let replan = reparsed.plan(&again).unwrap();
    for c in replan.changes {
        again.apply(c).unwrap();
    }
    assert_eq!(again.all_changes(), dir.all_changes());
    assert_eq!(replan.queues, plan.queues);
    assert_eq!(replan.exchanges, plan.exchanges);
    assert_eq!(replan.bindings, plan.bindings);
}

#[test]
fn empty_directory_exports_every_key() {
    let json = Definitions::export(&Directory::new(), vec![], vec![], vec![]).to_json_pretty();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    for key in ["users", "vhosts", "permissions", "topic_permissions", "parameters", "global_parameters", "policies"] {
        assert_eq!(v[key], serde_json::json!([]), "{key}");
    }
    assert_eq!(v["product_name"], "Warren");
}

#[test]
fn one_bad_regex_refuses_the_whole_file() {
    let mut dir = Directory::new();
    dir.apply(Change::PutVhost(Vhost::named("/"))).unwrap();
    let before = dir.all_changes();
    let mut v: serde_json::Value = serde_json::from_slice(RABBITMQ_3_12).unwrap();
    v["permissions"][2]["read"] = serde_json::json!("^app\\.(");
    let defs = Definitions::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    let err = defs.plan(&dir).unwrap_err();
    match &err {
        AccessError::Invalid(m) => {
            assert!(m.starts_with("permissions of user 'app' in vhost 'orders': regular expression"), "{m}");
            assert!(m.contains("^app\\.("), "{m}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(dir.all_changes(), before);
    assert_eq!(dir.version(), 1);
}

#[test]
fn references_to_unknown_vhosts_and_bad_hashes_are_refused() {
    let dir = Directory::new();
    let mut v: serde_json::Value = serde_json::from_slice(RABBITMQ_3_12).unwrap();
    v["queues"][0]["vhost"] = serde_json::json!("nowhere");
    let err = Definitions::parse(&serde_json::to_vec(&v).unwrap()).unwrap().plan(&dir).unwrap_err();
    assert_eq!(
        err,
        AccessError::NotFound("queue 'app.orders' in vhost 'nowhere': vhost 'nowhere' does not exist".into())
    );

    let mut v: serde_json::Value = serde_json::from_slice(RABBITMQ_3_12).unwrap();
    v["users"][1]["password_hash"] = serde_json::json!("%%%");
    let err = Definitions::parse(&serde_json::to_vec(&v).unwrap()).unwrap().plan(&dir).unwrap_err();
    assert!(matches!(&err, AccessError::Invalid(m) if m.starts_with("user 'app'")), "{err:?}");

    // A vhost that exists on the node (not in the file) is a valid target.
    let mut node = Directory::new();
    node.apply(Change::PutVhost(Vhost::named("nowhere"))).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(RABBITMQ_3_12).unwrap();
    v["queues"][0]["vhost"] = serde_json::json!("nowhere");
    assert!(Definitions::parse(&serde_json::to_vec(&v).unwrap()).unwrap().plan(&node).is_ok());
}

#[test]
fn missing_hashing_algorithm_follows_the_file_version() {
    let md5 = hash_with_salt(HashingAlgorithm::Md5, [9, 9, 9, 9], "old");
    let sha = hash_with_salt(HashingAlgorithm::Sha256, [9, 9, 9, 9], "new");
    let file = |version: &str, hash: &str| {
        format!(
            r#"{{"rabbit_version": "{version}", "users": [{{"name": "u", "password_hash": "{hash}", "tags": "administrator"}}], "vhosts": [{{"name": "/"}}]}}"#
        )
    };
    for (version, hash, pw, alg) in [
        ("3.5.7", &md5, "old", HashingAlgorithm::Md5),
        ("3.0.4", &md5, "old", HashingAlgorithm::Md5),
        ("3.6.0", &sha, "new", HashingAlgorithm::Sha256),
        ("3.12.13", &sha, "new", HashingAlgorithm::Sha256),
        ("", &sha, "new", HashingAlgorithm::Sha256),
    ] {
        let defs = Definitions::parse(file(version, hash).as_bytes()).unwrap();
        let mut dir = Directory::new();
        for c in defs.plan(&dir).unwrap().changes {
            dir.apply(c).unwrap();
        }
        let u = dir.authenticate("u", pw).unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(u.hashing_algorithm, alg, "{version}");
    }
}

#[test]
fn malformed_json_is_an_invalid_error() {
    assert!(matches!(Definitions::parse(b"{\"users\": 3}"), Err(AccessError::Invalid(_))));
    assert!(matches!(Definitions::parse(b"not json"), Err(AccessError::Invalid(_))));
}

#[test]
fn clear_text_passwords_are_hashed_on_import_and_never_exported() {
    let file =
        br#"{"users": [{"name": "dev", "password": "letmein", "tags": ["administrator"]}], "vhosts": [{"name": "/"}]}"#;
    let defs = Definitions::parse(file).unwrap();
    let mut dir = Directory::new();
    for c in defs.plan(&dir).unwrap().changes {
        dir.apply(c).unwrap();
    }
    let u = dir.authenticate("dev", "letmein").unwrap();
    assert_eq!(u.hashing_algorithm, HashingAlgorithm::Sha256);
    let exported = Definitions::export(&dir, vec![], vec![], vec![]).to_json_pretty();
    assert!(!std::str::from_utf8(&exported).unwrap().contains("letmein"));
}
