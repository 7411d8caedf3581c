//! Keeping a remote transaction's stream alive while its owner is busy
//! elsewhere (docs/ARCHITECTURE.md, Remote transactions).
//!
//! A node expires a stream that sees no request for its idle timeout and
//! rolls its transaction back. A Postgres transaction may stay open far
//! longer than that without touching the node (a long local query, a client
//! thinking between statements), so the executor's runtime renews each open
//! stream on its own: while the stream has been idle for `every`, it sends
//! an empty pipeline request (`{"baton": b, "requests": []}`), which resets
//! the node's idle clock and returns the next baton.
//!
//! Batons are single-use, so the owner (the backend) and the renewer share
//! the current baton in a [`StreamKeeper`] and never send concurrently:
//! whoever sends checks the baton out and checks the next one back in; the
//! other side waits meanwhile. If the owner's process dies, the renewer dies
//! with it, and the node rolls the transaction back after its idle timeout.
//!
//! The owner may also bound how long the stream may go without a statement
//! (`idle_limit`): past it the renewer rolls the transaction back and closes
//! the stream, so an abandoned transaction does not hold the node's write
//! lock, and the owner's next use reports why.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a stream can no longer be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// It went without a statement for longer than the idle limit and was
    /// rolled back (or left to expire) on the node.
    Idle(Duration),
    /// A renewal failed (the node was unreachable, the stream had expired).
    Renewal(String),
    /// The owner's own request never gave the baton back (it was
    /// interrupted): the stream's state on the node is unknown.
    Interrupted,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Idle(limit) => write!(
                f,
                "it was rolled back after {} ms without a statement (conductor.remote_transaction_idle_timeout)",
                limit.as_millis()
            ),
            Lost::Renewal(why) => write!(f, "keeping it alive failed: {why}"),
            Lost::Interrupted => write!(f, "a request to it was interrupted"),
        }
    }
}

/// Who has the baton out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Owner,
    Renewer,
}

#[derive(Debug)]
struct State {
    baton: Option<String>,
    /// Who has the baton out, if anyone.
    holder: Option<Holder>,
    /// The last request of either side (renewals count).
    last_request: Instant,
    /// The last statement of the owner (renewals do not count).
    last_statement: Instant,
    /// No statement for this long: roll back (None: no limit).
    idle_limit: Option<Duration>,
    /// The owner is done with the stream (committed, rolled back).
    closed: bool,
    lost: Option<Lost>,
}

/// The shared state of one open stream: its current baton and who holds it.
#[derive(Debug)]
pub struct StreamKeeper {
    state: Mutex<State>,
    changed: Condvar,
}

/// What the renewer does at one tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Stop: the owner closed the stream or it is lost.
    Stop,
    /// Nothing to do now (recently used, or the owner has the baton).
    Wait,
    /// Send an empty request with this baton, then [`StreamKeeper::renewed`].
    Renew(String),
    /// The idle limit passed: send ROLLBACK + close with this baton.
    RollBack(String),
}

impl StreamKeeper {
    /// A keeper for a stream whose current baton is `baton`, just used by a
    /// statement.
    pub fn new(baton: String, idle_limit: Option<Duration>) -> Self {
        let now = Instant::now();
        StreamKeeper {
            state: Mutex::new(State {
                baton: Some(baton),
                holder: None,
                last_request: now,
                last_statement: now,
                idle_limit,
                closed: false,
                lost: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until the renewer is not sending (it holds the baton for one
    /// short request, bounded by the request deadline). The owner never
    /// waits for itself: if it still has the baton out, its request was
    /// interrupted (see [`Lost::Interrupted`]).
    fn wait_idle(&self) -> MutexGuard<'_, State> {
        let mut s = self.lock();
        while s.holder == Some(Holder::Renewer) {
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(10))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s
    }

    /// The owner takes the baton for a statement. Fails with why the stream
    /// is lost, including when it went without a statement for longer than
    /// the idle limit (the baton then stays for [`StreamKeeper::finish`]).
    pub fn checkout(&self) -> Result<String, Lost> {
        let mut s = self.wait_idle();
        if let Some(lost) = &s.lost {
            return Err(lost.clone());
        }
        if s.holder == Some(Holder::Owner) {
            return Err(Lost::Interrupted);
        }
        if let Some(limit) = s.idle_limit {
            if s.last_statement.elapsed() > limit {
                return Err(Lost::Idle(limit));
            }
        }
        match s.baton.take() {
            Some(b) => {
                s.holder = Some(Holder::Owner);
                Ok(b)
            }
            None => Err(Lost::Renewal("the stream has no baton".into())),
        }
    }

    /// The owner hands the next baton back after its statement (None: the
    /// request failed or the node closed the stream; the stream is then
    /// unusable and the owner records why). `idle_limit` is the owner's
    /// current setting.
    pub fn checkin(&self, baton: Option<String>, idle_limit: Option<Duration>) {
        let mut s = self.lock();
        let now = Instant::now();
        s.baton = baton;
        s.holder = None;
        s.last_request = now;
        s.last_statement = now;
        s.idle_limit = idle_limit;
        drop(s);
        self.changed.notify_all();
    }

    /// The owner ends the stream (COMMIT or ROLLBACK): the renewer stops,
    /// and the baton, if the stream is not lost, is returned for the final
    /// request.
    pub fn finish(&self) -> Result<String, Lost> {
        let mut s = self.wait_idle();
        s.closed = true;
        if let Some(lost) = &s.lost {
            return Err(lost.clone());
        }
        if s.holder == Some(Holder::Owner) {
            return Err(Lost::Interrupted);
        }
        s.baton
            .take()
            .ok_or_else(|| Lost::Renewal("the stream has no baton".into()))
    }

    /// Why the stream is lost, if it is (without waiting).
    pub fn lost(&self) -> Option<Lost> {
        let s = self.lock();
        if let Some(l) = &s.lost {
            return Some(l.clone());
        }
        match s.idle_limit {
            Some(limit) if s.last_statement.elapsed() > limit => Some(Lost::Idle(limit)),
            _ => None,
        }
    }

    /// The renewer's decision at one tick, renewing when the stream has
    /// been unused for `every`.
    pub fn tick(&self, every: Duration) -> Tick {
        let mut s = self.lock();
        if s.closed || s.lost.is_some() {
            return Tick::Stop;
        }
        if s.holder.is_some() {
            return Tick::Wait;
        }
        if let Some(limit) = s.idle_limit {
            if s.last_statement.elapsed() > limit {
                return match s.baton.take() {
                    Some(b) => {
                        s.holder = Some(Holder::Renewer);
                        Tick::RollBack(b)
                    }
                    None => Tick::Stop,
                };
            }
        }
        if s.last_request.elapsed() < every {
            return Tick::Wait;
        }
        match s.baton.take() {
            Some(b) => {
                s.holder = Some(Holder::Renewer);
                Tick::Renew(b)
            }
            None => Tick::Stop,
        }
    }

    /// The renewer's request ended: the next baton, or why it failed.
    pub fn renewed(&self, result: Result<String, String>) {
        let mut s = self.lock();
        s.holder = None;
        s.last_request = Instant::now();
        match result {
            Ok(b) => s.baton = Some(b),
            Err(why) => s.lost = Some(Lost::Renewal(why)),
        }
        drop(s);
        self.changed.notify_all();
    }

    /// The renewer rolled the stream back after the idle limit.
    pub fn rolled_back(&self, limit: Duration) {
        let mut s = self.lock();
        s.holder = None;
        s.lost = Some(Lost::Idle(limit));
        drop(s);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baton_is_never_out_twice() {
        let k = StreamKeeper::new("b1".into(), None);
        assert_eq!(k.tick(Duration::ZERO), Tick::Renew("b1".into()));
        // The owner waits for the renewal to come back.
        std::thread::scope(|s| {
            let owner = s.spawn(|| k.checkout());
            std::thread::sleep(Duration::from_millis(30));
            k.renewed(Ok("b2".into()));
            assert_eq!(owner.join().unwrap(), Ok("b2".into()));
        });
        assert_eq!(k.tick(Duration::ZERO), Tick::Wait, "the owner has it");
        k.checkin(Some("b3".into()), None);
        assert_eq!(
            k.tick(Duration::from_secs(60)),
            Tick::Wait,
            "just used: no renewal"
        );
        assert_eq!(k.finish(), Ok("b3".into()));
        assert_eq!(k.tick(Duration::ZERO), Tick::Stop);
    }

    #[test]
    fn idle_limit_rolls_back_and_is_reported() {
        let k = StreamKeeper::new("b1".into(), Some(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(k.checkout(), Err(Lost::Idle(_))));
        assert_eq!(k.tick(Duration::ZERO), Tick::RollBack("b1".into()));
        k.rolled_back(Duration::from_millis(20));
        assert_eq!(k.tick(Duration::ZERO), Tick::Stop);
        assert!(matches!(k.finish(), Err(Lost::Idle(_))));
    }

    #[test]
    fn an_interrupted_owner_request_never_blocks_the_end() {
        let k = StreamKeeper::new("b1".into(), None);
        assert_eq!(k.checkout(), Ok("b1".into()));
        // The owner's request was cancelled: the baton never came back.
        assert_eq!(k.tick(Duration::ZERO), Tick::Wait);
        assert_eq!(k.checkout(), Err(Lost::Interrupted));
        assert_eq!(k.finish(), Err(Lost::Interrupted));
        assert_eq!(k.tick(Duration::ZERO), Tick::Stop);
    }

    #[test]
    fn a_failed_renewal_loses_the_stream() {
        let k = StreamKeeper::new("b1".into(), None);
        assert!(matches!(k.tick(Duration::ZERO), Tick::Renew(_)));
        k.renewed(Err("expired".into()));
        assert!(matches!(k.checkout(), Err(Lost::Renewal(_))));
    }
}
