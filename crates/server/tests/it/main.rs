//! Integration tests over real TCP: lapin (a third-party client) as the interop oracle,
//! and raw sockets for hostile input. One test binary (see ARCHITECTURE.md, "Testing").

mod access;
mod chaos;
mod cluster;
mod cluster_classic;
mod cluster_disk;
mod cluster_fixture;
mod cluster_flags;
mod cluster_topology;
mod common;
mod ctl;
mod durability;
mod extensions;
mod flow;
mod hostile;
mod interop;
mod memory;
mod mgmt;
mod mgmt_access;
mod mgmt_stats;
mod mgmt_topology;
mod qq_features;
mod qq_groups;
mod reliability;
mod scale;
mod tls;
