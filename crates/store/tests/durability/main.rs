//! Durability of the store, below the broker: restart recovery, paging, segment
//! reclamation, torn writes at every byte, flipped bits, and the checked-in fixtures.
//! Each test builds its files with the real code in a temporary directory (or copies the
//! fixture there); nothing here needs a server.
//!
//! - [`common`]: messages, store handles, directory snapshots.
//! - [`restart`]: what comes back after a clean stop (acks, delivered marks, transients).
//! - [`paging`]: a queue far over its RAM budget; segments reclaimed as they drain.
//! - [`torn`]: every prefix of a segment, an ack file, the delivered mark, the
//!   definitions log.
//! - [`flips`]: a flipped bit in a record, an ack entry, a meta file.
//! - [`fixture`]: `fixtures/v<N>`, files written by each on-disk format.

mod common;
mod fixture;
mod flips;
mod paging;
mod purge;
mod restart;
mod torn;
