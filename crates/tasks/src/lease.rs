//! Lease extension: keeps a long task's delivery from hitting the broker's consumer timeout.
//!
//! Warren (an extension of its own, advertised as the `warren.lease_extension` capability in
//! `connection.start`) treats a publish to the exchange `amq.warren.lease` with routing key
//! = a delivery tag of the same channel as "this delivery is still being worked on": the
//! delivery's consumer-timeout clock restarts. Nothing is routed or stored; with confirms the
//! publish is acked. lapin does not expose the server's properties, so the worker probes
//! instead: a confirmed lease for tag 0 on a throwaway channel is acked by Warren; RabbitMQ
//! closes that channel (404, no such exchange) and the worker runs without leases.

use std::future::Future;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use tracing::{debug, info};

/// Warren's built-in lease exchange.
pub const LEASE_EXCHANGE: &str = "amq.warren.lease";

/// How often a running task's lease is extended by default (`--lease-interval`): well below
/// RabbitMQ's 30-minute consumer timeout; set it below half of a shorter one.
pub const DEFAULT_LEASE_INTERVAL: Duration = Duration::from_secs(60);

/// Whether the broker extends leases: a confirmed lease publish for tag 0 (never a delivery
/// tag) on a channel of its own, closed afterwards.
pub async fn supported(conn: &Connection) -> bool {
    let Ok(ch) = conn.create_channel().await else { return false };
    let acked = async {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirm = ch
            .basic_publish(
                LEASE_EXCHANGE.into(),
                "0".into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default(),
            )
            .await?
            .await?;
        Ok::<bool, lapin::Error>(confirm.is_ack())
    }
    .await;
    if ch.status().connected() {
        let _ = ch.close(200, "lease probe done".into()).await;
    }
    match acked {
        Ok(true) => true,
        outcome => {
            info!(
                "the broker does not extend leases ({outcome:?}): long tasks rely on its consumer timeout being long enough"
            );
            false
        }
    }
}

/// Awaits `work`, extending the lease of delivery `tag` (on `ch`, the channel it was
/// delivered on) every `every` until it completes. The lease publishes are not confirmed:
/// they cost one frame each and nothing waits for them.
pub async fn extending<T>(ch: &Channel, tag: u64, every: Option<Duration>, work: impl Future<Output = T>) -> T {
    let Some(every) = every else { return work.await };
    let mut work = std::pin::pin!(work);
    let key = tag.to_string();
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every) => {
                debug!(delivery_tag = tag, "extending the lease");
                let sent = ch
                    .basic_publish(LEASE_EXCHANGE.into(), key.as_str().into(), BasicPublishOptions::default(), b"", BasicProperties::default())
                    .await;
                if let Err(e) = sent {
                    debug!(delivery_tag = tag, "lease not extended: {e}");
                }
            }
        }
    }
}
