//! Cluster formation from the config: which `NAME@HOST:PORT` this node is, where its
//! inter-node listener binds, and the [`cluster::ClusterNode`] the broker runs.
//!
//! Only formation and status exist so far: nothing the broker holds (queues, exchanges,
//! users) goes through the Raft group yet (docs/cluster.md).

use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::Config;

/// How this node takes part in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// The node's identity in the cluster, `NAME@HOST:PORT`.
    pub name: String,
    /// Where the inter-node listener binds.
    pub listen: SocketAddr,
    /// `classic_config` members (sorted, deduplicated); may not contain `name` (a node that
    /// waits for `warrenctl join_cluster`).
    pub nodes: Vec<String>,
    /// What `/api/overview` and `cluster_status` call the cluster.
    pub cluster_name: String,
}

/// A running cluster member, as `ServerState` holds it.
pub struct Running {
    pub node: cluster::ClusterNode,
    pub cluster_name: String,
}

impl Running {
    /// Members, running members and leader as this node sees them.
    pub async fn status(&self) -> mgmt::node::ClusterStatus {
        let mut members = self.node.members();
        members.sort();
        mgmt::node::ClusterStatus {
            node: self.node.name().to_owned(),
            cluster_name: self.cluster_name.clone(),
            members,
            running: self.node.running_members().await,
            leader: self.node.leader(),
        }
    }
}

/// The node's name as configured, or RabbitMQ-style `warren@<hostname>`.
pub fn node_name(config: &Config) -> String {
    config.node_name.clone().unwrap_or_else(|| format!("warren@{}", hostname()))
}

/// This host's name, for RabbitMQ-style node names (`warren@host`).
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

/// The cluster plan for `config` (None: no clustering configured, a single node as before).
///
/// The node's identity is, in order: the node name itself when it is a full
/// `NAME@HOST:PORT`; else the one `classic_config` entry whose `NAME@HOST` equals the node
/// name; else the node name with `warren.cluster_listen`'s port. The listener binds
/// `warren.cluster_listen`, else the identity's `HOST:PORT` (resolved).
pub fn plan(config: &Config, node_name: &str) -> Result<Option<ClusterPlan>, String> {
    if config.cluster_nodes.is_empty() && config.cluster_listen.is_none() {
        return Ok(None);
    }
    let name = if cluster::parse_node_name(node_name).is_ok() {
        node_name.to_owned()
    } else {
        let mine: Vec<&String> = config
            .cluster_nodes
            .iter()
            .filter(|n| n.rsplit_once(':').is_some_and(|(base, _)| base == node_name))
            .collect();
        match (mine.as_slice(), config.cluster_listen) {
            ([one], _) => (*one).clone(),
            ([], Some(listen)) => format!("{node_name}:{}", listen.port()),
            ([], None) => {
                return Err(format!(
                    "node {node_name} is not in cluster_formation.classic_config.nodes: list it there as \
                     {node_name}:PORT, name the node NAME@HOST:PORT, or set warren.cluster_listen"
                ));
            }
            (many, _) => {
                let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                return Err(format!(
                    "node {node_name} matches several cluster_formation.classic_config.nodes ({}): name the \
                     node NAME@HOST:PORT",
                    many.join(", ")
                ));
            }
        }
    };
    let (_, addr) = cluster::parse_node_name(&name).map_err(|e| e.to_string())?;
    let listen = match config.cluster_listen {
        Some(l) => l,
        None => addr
            .to_socket_addrs()
            .map_err(|e| format!("resolving {addr} (the inter-node address of {name}): {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} (the inter-node address of {name}) resolves to no address"))?,
    };
    let cluster_name = config
        .cluster_name
        .clone()
        .or_else(|| config.cluster_nodes.iter().min().cloned())
        .unwrap_or_else(|| name.clone());
    Ok(Some(ClusterPlan { name, listen, nodes: config.cluster_nodes.clone(), cluster_name }))
}

/// Start the node's Raft member as `plan` says, its data under `<data_dir>/cluster`.
pub async fn start(plan: &ClusterPlan, data_dir: &std::path::Path) -> Result<cluster::ClusterNode, String> {
    let dir = data_dir.join("cluster");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut c = cluster::NodeConfig::new(plan.name.clone(), dir, plan.listen);
    c.cluster_nodes = plan.nodes.clone();
    cluster::ClusterNode::start(c)
        .await
        .map_err(|e| format!("starting cluster node {} on {}: {e}", plan.name, plan.listen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: &[&str], listen: Option<&str>) -> Config {
        Config {
            cluster_nodes: nodes.iter().map(|s| s.to_string()).collect(),
            cluster_listen: listen.map(|l| l.parse().unwrap()),
            ..Config::default()
        }
    }

    const THREE: [&str; 3] = ["a@127.0.0.1:25001", "b@127.0.0.1:25002", "c@127.0.0.1:25003"];

    #[test]
    fn no_cluster_keys_is_a_single_node() {
        assert_eq!(plan(&Config::default(), "warren@h").unwrap(), None);
    }

    #[test]
    fn node_name_picks_its_entry_in_the_list() {
        let p = plan(&config(&THREE, None), "b@127.0.0.1").unwrap().unwrap();
        assert_eq!(p.name, "b@127.0.0.1:25002");
        assert_eq!(p.listen, "127.0.0.1:25002".parse().unwrap());
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.cluster_name, "a@127.0.0.1:25001");
    }

    #[test]
    fn full_name_and_listen_override() {
        let p = plan(&config(&THREE, Some("0.0.0.0:25003")), "c@127.0.0.1:25003").unwrap().unwrap();
        assert_eq!(p.name, "c@127.0.0.1:25003");
        assert_eq!(p.listen, "0.0.0.0:25003".parse().unwrap());
        let named = Config { cluster_name: Some("prod".into()), ..config(&THREE, None) };
        assert_eq!(plan(&named, "a@127.0.0.1").unwrap().unwrap().cluster_name, "prod");
    }

    #[test]
    fn a_joiner_needs_only_a_listen_address() {
        let p = plan(&config(&[], Some("127.0.0.1:25004")), "d@127.0.0.1").unwrap().unwrap();
        assert_eq!(p.name, "d@127.0.0.1:25004");
        assert!(p.nodes.is_empty());
        assert_eq!(p.cluster_name, "d@127.0.0.1:25004");
    }

    #[test]
    fn a_node_missing_from_the_list_or_ambiguous_is_refused() {
        let e = plan(&config(&THREE, None), "z@127.0.0.1").unwrap_err();
        assert!(e.contains("not in cluster_formation.classic_config.nodes"), "{e}");
        let e = plan(&config(&["a@h:1", "a@h:2"], None), "a@h").unwrap_err();
        assert!(e.contains("matches several"), "{e}");
    }
}
