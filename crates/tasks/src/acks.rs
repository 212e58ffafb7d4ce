//! Late acks, batched: finished deliveries are acked by one task per channel, with
//! `basic.ack(multiple = true)` for the longest run of finished tags, so a burst of short
//! tasks costs one ack frame instead of one each.
//!
//! The rule that makes a crash safe is unchanged: a tag is acked only once its task finished
//! (result published). `multiple` acks every unacked tag up to the one it names, so it is
//! only used up to the end of a run in which **every** tag is known here and finished (or
//! settled on its own: rejected, nacked). A broker numbers one channel's deliveries 1, 2,
//! 3, ... (RabbitMQ and Warren both do), so a missing number is a delivery not seen here yet
//! and ends the run. Finished tags after a running (or unseen) one are acked one by one, so a
//! long task never holds back the acks, and so the prefetch credit, of later short ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::Notify;
use tracing::warn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// Delivered, its task not finished.
    Running,
    /// Finished: to be acked.
    Done,
    /// Settled on its own (rejected, nacked, or acked alone): never to be acked again.
    Settled,
}

#[derive(Debug, Default)]
struct State {
    /// Every tag up to this one is settled on the broker.
    floor: u64,
    /// Tags above `floor` seen here.
    tags: BTreeMap<u64, Mark>,
}

/// The frames one flush sends: a `multiple` ack up to the end of the run, single acks after.
#[derive(Debug, Default, PartialEq, Eq)]
struct Flush {
    multiple: Option<u64>,
    singles: Vec<u64>,
}

impl State {
    fn flush(&mut self) -> Flush {
        let mut out = Flush::default();
        let mut t = self.floor;
        while let Some(&m) = self.tags.get(&(t + 1)) {
            match m {
                Mark::Running => break,
                Mark::Done => out.multiple = Some(t + 1),
                Mark::Settled => {}
            }
            t += 1;
        }
        // Everything up to `t` is settled by the multiple ack (or was already).
        self.tags = self.tags.split_off(&(t + 1));
        self.floor = t;
        for (tag, m) in self.tags.iter_mut() {
            if *m == Mark::Done {
                out.singles.push(*tag);
                *m = Mark::Settled;
            }
        }
        out
    }
}

/// The acks of one channel's deliveries.
pub(crate) struct Acks {
    state: Mutex<State>,
    wake: Notify,
    /// Set by [`Acks::close`]: flush once more, then stop.
    closing: AtomicBool,
}

impl Acks {
    fn new() -> Acks {
        Acks { state: Mutex::new(State::default()), wake: Notify::new(), closing: AtomicBool::new(false) }
    }

    /// Starts the task that sends `ch`'s acks. It runs until [`Acks::close`] (or until the
    /// caller aborts it, when the connection is lost).
    pub(crate) fn start(ch: Channel) -> (Arc<Acks>, tokio::task::JoinHandle<()>) {
        let acks = Arc::new(Acks::new());
        let me = Arc::clone(&acks);
        let task = tokio::spawn(async move {
            loop {
                me.wake.notified().await;
                // Let the tasks finishing right now join this flush.
                tokio::task::yield_now().await;
                let (flush, closing) = me.round();
                let frames =
                    flush.multiple.map(|t| (t, true)).into_iter().chain(flush.singles.iter().map(|&t| (t, false)));
                for (tag, multiple) in frames {
                    if let Err(e) = ch.basic_ack(tag, BasicAckOptions { multiple }).await {
                        // The channel is gone: the broker requeues whatever was unacked.
                        warn!(delivery_tag = tag, multiple, "ack failed (the broker will redeliver): {e}");
                    }
                }
                if closing {
                    return;
                }
            }
        });
        (acks, task)
    }

    /// Sends the acks of every finished task, then stops the ack task (at shutdown, once no
    /// task runs any more, before the connection closes).
    pub(crate) async fn close(&self, task: &mut tokio::task::JoinHandle<()>) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            warn!("acks not all sent within 5 s; the broker will redeliver those tasks");
        }
    }

    /// One round of the ack task: what to send, and whether it is the last. `closing` is
    /// read before the flush: `close` is called once every task has finished, so a flush
    /// after seeing it takes them all. Read after, it could end the task without the tags
    /// that finished while this round was being flushed (their tasks would run again
    /// elsewhere: what `test_graceful_shutdown_loses_nothing_and_runs_nothing_twice` saw).
    fn round(&self) -> (Flush, bool) {
        let closing = self.closing.load(Ordering::Acquire);
        (self.lock().flush(), closing)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A delivery arrived (before its task starts).
    pub(crate) fn delivered(&self, tag: u64) {
        let mut st = self.lock();
        if tag > st.floor {
            st.tags.insert(tag, Mark::Running);
        }
    }

    /// Its task finished (result published): ack it.
    pub(crate) fn finished(&self, tag: u64) {
        self.set(tag, Mark::Done);
    }

    /// Its handling is over: if it was not [`finished`](Acks::finished), it was settled
    /// otherwise (rejected, nacked, or acked on its own, all awaited before this call).
    pub(crate) fn handled(&self, tag: u64) {
        self.set(tag, Mark::Settled);
    }

    /// Marks a running tag (a tag already done stays done).
    fn set(&self, tag: u64, mark: Mark) {
        {
            let mut st = self.lock();
            if let Some(m) = st.tags.get_mut(&tag)
                && *m == Mark::Running
            {
                *m = mark;
            }
        }
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(marks: &[(u64, Mark)]) -> State {
        State { floor: 0, tags: marks.iter().copied().collect() }
    }

    #[test]
    fn a_run_of_finished_tags_is_one_multiple_ack() {
        let mut st = state(&[(1, Mark::Done), (2, Mark::Done), (3, Mark::Done)]);
        assert_eq!(st.flush(), Flush { multiple: Some(3), singles: vec![] });
        assert_eq!((st.floor, st.tags.len()), (3, 0));
        assert_eq!(st.flush(), Flush::default());
    }

    #[test]
    fn a_running_task_ends_the_run_and_later_finished_ones_are_acked_alone() {
        use Mark::*;
        let mut st = state(&[(1, Done), (2, Settled), (3, Done), (4, Running), (5, Done), (6, Running), (7, Done)]);
        assert_eq!(st.flush(), Flush { multiple: Some(3), singles: vec![5, 7] });
        assert_eq!(st.floor, 3);
        // 5 and 7 are not acked again; once 4 and 6 finish the floor passes them all.
        st.tags.insert(4, Done);
        assert_eq!(st.flush(), Flush { multiple: Some(4), singles: vec![] });
        st.tags.insert(6, Done);
        assert_eq!(st.flush(), Flush { multiple: Some(6), singles: vec![] });
        assert_eq!((st.floor, st.tags.len()), (7, 0));
    }

    #[test]
    fn an_unseen_tag_ends_the_run() {
        // Tag 2 was delivered but not registered yet: a multiple ack of 3 would ack it.
        let mut st = state(&[(1, Mark::Done), (3, Mark::Done)]);
        assert_eq!(st.flush(), Flush { multiple: Some(1), singles: vec![3] });
        assert_eq!(st.floor, 1);
    }

    #[test]
    fn the_last_round_acks_every_task_finished_before_close() {
        let acks = Acks::new();
        acks.delivered(1);
        acks.delivered(2);
        acks.finished(1);
        // A round starts; task 2 finishes and `close` is called while its acks go out.
        let (first, last) = acks.round();
        assert_eq!((first, last), (Flush { multiple: Some(1), singles: vec![] }, false));
        acks.finished(2);
        acks.closing.store(true, Ordering::Release);
        // Not the last round: the next one (woken by `close`) sends 2's ack, then stops.
        let (second, last) = acks.round();
        assert_eq!((second, last), (Flush { multiple: Some(2), singles: vec![] }, true));
    }

    #[test]
    fn a_run_of_settled_tags_needs_no_frame() {
        let mut st = state(&[(1, Mark::Settled), (2, Mark::Settled), (3, Mark::Running)]);
        assert_eq!(st.flush(), Flush::default());
        assert_eq!(st.floor, 2);
    }
}
