//! Giving memory back to the system after bulk changes (a remote synced or drained).
//!
//! The agent's allocator (glibc's) keeps what a burst freed (a remote's listing, its entries
//! once it is drained) in its free lists and arenas: the resident set stays at its high-water
//! mark, and memory freed in the middle of a heap is never returned on its own. After a remote's
//! initial state was applied and after a remote was drained, [`Trimmer`] asks the allocator to
//! return every free page (`malloc_trim`), once the reconciler applied the change, so that the
//! agent's resident set follows what it holds. Requests that come while a trim waits are
//! served by it. [`limit_arenas`] (called first thing by the agent binary) keeps the allocator
//! to one arena: by default it gives each thread that allocates an arena of its own, and each
//! keeps its freed memory apart, which fragments the heap (a remote's entries are allocated on
//! one worker thread and freed on another). A remote's sync took no longer with one arena in
//! the memory bench; with two, a drained remote left about twice as much resident
//! (BENCHMARKS.md, "Agent memory"). On other C libraries both do nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::CoreHandle;

/// Requests trims; cheap to clone. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Trimmer {
    wanted: Arc<Notify>,
}

impl Trimmer {
    /// A trimmer; nothing happens until [`Trimmer::run`] runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a trim, once the reconciler applied what the core holds now.
    pub fn request(&self) {
        self.wanted.notify_one();
    }

    /// Trims after each request, once the reconciler caught up with the core (at most a
    /// minute's wait: a trim is never wrong, only early).
    pub async fn run(self, core: CoreHandle) {
        loop {
            self.wanted.notified().await;
            let seq = core.read(|c| c.seq());
            core.wait_applied(seq, Duration::from_secs(60)).await;
            let before = resident_bytes();
            trim();
            tracing::debug!(
                before,
                after = resident_bytes(),
                "returned free memory to the system"
            );
        }
    }
}

/// The process's resident set in bytes (0 when `/proc` cannot be read).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Keeps the allocator to one arena (see the module documentation). Call before any thread
/// is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_arenas() {
    // SAFETY: mallopt only sets a parameter of the allocator; M_ARENA_MAX takes a count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Keeps the allocator to one arena (nothing to do on this C library).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own arenas under their locks; it takes
    // no pointer from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
