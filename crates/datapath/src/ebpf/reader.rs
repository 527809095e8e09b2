//! The ring-buffer reader: a thread that decodes `PLEXUS_EVENTS` records and broadcasts them.
//!
//! A plain thread with `poll(2)` rather than a tokio task, so that loading the datapath does
//! not require a runtime; it wakes every 100 ms to notice shutdown and pauses, and reads what
//! arrived meanwhile: the programs wake it only once 64 KiB of events are waiting
//! (`bpf/lib/trace.h`), so an event is read within 100 ms, and a packet never pays for waking it.
//!
//! Reading can be paused ([`Reader::pause`]): the ring buffer then fills, and once it is full the
//! programs count what they cannot write (`PLEXUS_EVENTS_LOST`). Tests use it to make losses
//! happen deterministically.

use std::{
    os::fd::AsFd,
    sync::{Arc, Condvar, Mutex, MutexGuard},
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

/// How often the thread wakes without events, to notice a stop or a pause.
const WAKE: Duration = Duration::from_millis(100);

/// What the owner asks of the thread, and what the thread is doing.
#[derive(Default)]
struct Control {
    stop: bool,
    paused: bool,
    /// The thread is parked and reads nothing until resumed.
    parked: bool,
}

#[derive(Default)]
struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        // The flags stay consistent whatever panicked while holding the lock.
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running reader; dropping it stops the thread.
pub(crate) struct Reader {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub(crate) fn spawn(
        mut ring: RingBuf<MapData>,
        tx: broadcast::Sender<MonitorEvent>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("plexus-dp-events".into())
            .spawn(move || {
                let shared = thread_shared;
                loop {
                    {
                        let mut ctl = shared.lock();
                        while ctl.paused && !ctl.stop {
                            if !ctl.parked {
                                ctl.parked = true;
                                shared.changed.notify_all();
                            }
                            ctl = match shared.changed.wait_timeout(ctl, WAKE) {
                                Ok((guard, _)) => guard,
                                Err(p) => p.into_inner().0,
                            };
                        }
                        ctl.parked = false;
                        if ctl.stop {
                            return;
                        }
                    }
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
                            std::thread::sleep(WAKE);
                        }
                    }
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Stops reading; returns once the thread reads no more (within about 100 ms, after
    /// draining what the ring buffer holds), or at once if the thread is gone.
    pub(crate) fn pause(&self) {
        let mut ctl = self.shared.lock();
        ctl.paused = true;
        self.shared.changed.notify_all();
        while !ctl.parked {
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                return;
            }
            ctl = match self.shared.changed.wait_timeout(ctl, WAKE) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Reads again after [`Reader::pause`].
    pub(crate) fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.changed.notify_all();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
