//! Resource alarms, as RabbitMQ's: when the broker's memory use passes its high
//! watermark, or free disk space under the data directory drops below its limit, every
//! connection that publishes is blocked (connection.blocked to clients that advertise it,
//! then its socket is not read) while consumers keep draining. Cleared when back under.

use std::path::Path;
use std::sync::OnceLock;

/// How to make the allocator give freed memory back to the system, if the binary has one
/// (the `warren` binary sets it for mimalloc; see its `release_free_memory`).
static RELEASE_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Set once at start, by the binary that owns the global allocator.
pub fn set_release_memory(f: fn()) {
    let _ = RELEASE_MEMORY.set(f);
}

/// Ask the allocator to return freed memory now (the housekeeping does, once a second, so
/// that RSS and the memory alarm follow what is really in use).
pub fn release_memory() {
    if let Some(f) = RELEASE_MEMORY.get() {
        f();
    }
}

/// Bytes the global allocator has handed out and not taken back, if the binary counts
/// them (the `warren` binary does; see its `counting` allocator).
static ALLOCATED_BYTES: OnceLock<fn() -> u64> = OnceLock::new();

/// Set once at start, by the binary that owns the global allocator.
pub fn set_allocated_bytes(f: fn() -> u64) {
    let _ = ALLOCATED_BYTES.set(f);
}

/// Bytes allocated and in use (None when the allocator does not count).
pub fn allocated_bytes() -> Option<u64> {
    ALLOCATED_BYTES.get().map(|f| f())
}

/// What the memory alarm measures (RabbitMQ's `vm_memory_calculation_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryStrategy {
    /// Bytes allocated and in use, counted by the allocator: memory freed is off the
    /// books at once, whatever the allocator keeps for reuse.
    Allocated,
    /// The process's resident set size, as the kernel reports it: RabbitMQ's default, and
    /// ours, because tools set tiny relative watermarks expecting any broker to exceed them
    /// (amqp091-go's tests force `connection.blocked` with 0.0001 of RAM, 2.5 MB here,
    /// more than RSS but less than what an idle Warren has allocated).
    #[default]
    Rss,
}

impl MemoryStrategy {
    pub fn parse(s: &str) -> Option<MemoryStrategy> {
        match s {
            "allocated" => Some(MemoryStrategy::Allocated),
            "rss" => Some(MemoryStrategy::Rss),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemoryStrategy::Allocated => "allocated",
            MemoryStrategy::Rss => "rss",
        }
    }

    /// The memory in use by this strategy (`allocated` falls back to RSS when the
    /// allocator does not count, e.g. in a test binary).
    pub fn used_bytes(self) -> Option<u64> {
        match self {
            MemoryStrategy::Allocated => allocated_bytes().or_else(rss_bytes),
            MemoryStrategy::Rss => rss_bytes(),
        }
    }
}

/// Which alarms are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Alarms {
    pub memory: bool,
    pub disk: bool,
}

impl Alarms {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// RabbitMQ's connection.blocked reason text.
    pub fn reason(self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory & disk",
            (true, false) => "low on memory",
            _ => "low on disk",
        }
    }
}

/// Resident set size of this process, from /proc (bytes).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Total RAM of the machine (bytes), from /proc/meminfo.
pub fn total_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free bytes available to us on the filesystem holding `dir`.
pub fn disk_free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() * st.fragment_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_and_statvfs() {
        assert!(rss_bytes().unwrap() > 0);
        assert!(total_memory_bytes().unwrap() > rss_bytes().unwrap());
        assert!(disk_free_bytes(Path::new(".")).is_some());
        assert_eq!(Alarms { memory: true, disk: false }.reason(), "low on memory");
    }
}
