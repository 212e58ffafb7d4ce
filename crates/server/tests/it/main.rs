//! Integration tests over real TCP: lapin (a third-party client) as the interop oracle,
//! and raw sockets for hostile input. One test binary (see ARCHITECTURE.md, "Testing").

mod access;
mod common;
mod durability;
mod extensions;
mod flow;
mod hostile;
mod interop;
mod memory;
mod mgmt;
mod mgmt_stats;
mod reliability;
mod tls;
