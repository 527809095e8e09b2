//! The ring-buffer reader: a thread that decodes `PLEXUS_EVENTS` records and broadcasts them.
//!
//! A plain thread with `poll(2)` rather than a tokio task, so that loading the datapath does
//! not require a runtime; it wakes every 100 ms to notice shutdown.

use std::{
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};
use tokio::sync::broadcast;

use crate::MonitorEvent;

/// The running reader; dropping it stops the thread.
pub(crate) struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub(crate) fn spawn(
        mut ring: RingBuf<MapData>,
        tx: broadcast::Sender<MonitorEvent>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("plexus-dp-events".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    while let Some(item) = ring.next() {
                        match MonitorEvent::decode(&item) {
                            // No subscriber is fine: events are best effort.
                            Ok(ev) => drop(tx.send(ev)),
                            Err(e) => tracing::warn!(error = %e, "undecodable datapath event"),
                        }
                    }
                    let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::from(100u8)) {
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "polling the event ring buffer");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
