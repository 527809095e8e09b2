//! Merging several time-ordered flow streams into one, for the relay that reads many nodes.
//!
//! - History ([`merge_history`], [`merge_sorted`]): each input is ordered by time, so a k-way
//!   merge that waits for the head of every open input is exact. Equal times keep the order of
//!   the inputs (lower index first).
//! - Following ([`merge_follow`]): inputs never end, so the merge cannot wait for all heads.
//!   Every item is held for a reorder window after it arrives; when an item's window expires it
//!   is emitted together with every held item older than it, oldest first. Items that arrive
//!   less than the window late come out in order; later ones come out when their own window
//!   expires. At most [`MAX_HELD`] items are held (beyond that the oldest go out at once).
//!   When every input has ended the held items are emitted in order.
//!
//! The merges are generic over [`Timed`] items, so the relay can merge `FlowResponse`s or its
//! own wrappers.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::response::FlowResponse;

/// Something with a time to order by.
pub trait Timed {
    /// The time.
    fn time(&self) -> DateTime<Utc>;
}

impl Timed for FlowResponse {
    fn time(&self) -> DateTime<Utc> {
        self.time
    }
}

/// Upper bound of items held by [`merge_follow`].
pub const MAX_HELD: usize = 65_536;

/// Merges time-ordered lists into one time-ordered list (ties: lower list index first).
pub fn merge_sorted<T: Timed>(lists: Vec<Vec<T>>) -> Vec<T> {
    let mut iters: Vec<_> = lists
        .into_iter()
        .map(|l| l.into_iter().peekable())
        .collect();
    let mut out = Vec::new();
    loop {
        let next = iters
            .iter_mut()
            .enumerate()
            .filter_map(|(i, it)| it.peek().map(|item| (item.time(), i)))
            .min();
        let Some((_, i)) = next else {
            return out;
        };
        if let Some(item) = iters[i].next() {
            out.push(item);
        }
    }
}

/// Exact k-way merge of time-ordered streams (history): waits for the head of every open
/// stream, emits the oldest. Ends when every stream has ended.
pub fn merge_history<S, T>(streams: Vec<S>) -> impl Stream<Item = T>
where
    S: Stream<Item = T> + Unpin,
    T: Timed,
{
    struct State<S, T> {
        streams: Vec<S>,
        heads: Vec<Option<T>>,
        open: Vec<bool>,
    }
    let n = streams.len();
    let state = State {
        streams,
        heads: (0..n).map(|_| None).collect(),
        open: vec![true; n],
    };
    futures::stream::unfold(state, |mut st| async move {
        // Fetch the missing heads of the open streams concurrently.
        let pending: Vec<_> = st
            .streams
            .iter_mut()
            .zip(st.heads.iter())
            .zip(st.open.iter())
            .enumerate()
            .filter(|(_, ((_, head), open))| head.is_none() && **open)
            .map(|(i, ((s, _), _))| async move { (i, s.next().await) })
            .collect();
        for (i, item) in futures::future::join_all(pending).await {
            match item {
                Some(item) => st.heads[i] = Some(item),
                None => st.open[i] = false,
            }
        }
        let (_, i) = st
            .heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (h.time(), i)))
            .min()?;
        let item = st.heads[i].take()?;
        Some((item, st))
    })
}

/// Merges never-ending streams (following) with a reorder window; see the module doc.
pub fn merge_follow<S, T>(streams: Vec<S>, window: Duration) -> impl Stream<Item = T>
where
    S: Stream<Item = T> + Unpin,
    T: Timed,
{
    struct State<T, M> {
        input: M,
        input_done: bool,
        held: BTreeMap<(DateTime<Utc>, u64), T>,
        deadlines: VecDeque<(Instant, (DateTime<Utc>, u64))>,
        ready: VecDeque<T>,
        seq: u64,
        window: Duration,
    }
    impl<T, M> State<T, M> {
        /// Moves every held item up to and including `key` to `ready`, oldest first.
        fn release_through(&mut self, key: (DateTime<Utc>, u64)) {
            let rest = self.held.split_off(&(key.0, key.1.saturating_add(1)));
            let released = std::mem::replace(&mut self.held, rest);
            self.ready.extend(released.into_values());
        }
    }
    let state = State {
        input: futures::stream::select_all(streams),
        input_done: false,
        held: BTreeMap::new(),
        deadlines: VecDeque::new(),
        ready: VecDeque::new(),
        seq: 0,
        window,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                return Some((item, st));
            }
            // Forget deadlines of items already released.
            while st
                .deadlines
                .front()
                .is_some_and(|(_, key)| !st.held.contains_key(key))
            {
                st.deadlines.pop_front();
            }
            if st.input_done {
                let held = std::mem::take(&mut st.held);
                st.ready.extend(held.into_values());
                if st.ready.is_empty() {
                    return None;
                }
                continue;
            }
            let deadline = st.deadlines.front().copied();
            let next = match deadline {
                Some((at, key)) => {
                    tokio::select! {
                        item = st.input.next() => Some(item),
                        _ = tokio::time::sleep_until(at) => {
                            st.deadlines.pop_front();
                            st.release_through(key);
                            None
                        }
                    }
                }
                None => Some(st.input.next().await),
            };
            match next {
                None => {}
                Some(None) => st.input_done = true,
                Some(Some(item)) => {
                    let key = (item.time(), st.seq);
                    st.seq += 1;
                    st.held.insert(key, item);
                    st.deadlines.push_back((Instant::now() + st.window, key));
                    if st.held.len() > MAX_HELD
                        && let Some((&oldest, _)) = st.held.first_key_value()
                    {
                        st.release_through(oldest);
                    }
                }
            }
        }
    })
}
