//! Why a running session must end early: the process is shutting down, or its
//! user was removed or disabled by a reload and the grace time has passed.
//!
//! Sessions start with the server's shutdown signal only; once the client is
//! authenticated the session listens to its user's signal in [`Drains`]
//! instead, which survives reloads (it lives in the runtime's shared part) and
//! which the server's shutdown also fires ([`Drains::shutdown_all`]). One
//! receiver per session keeps an idle session's stop wait small.

use crate::events::CloseReason;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;

/// A user signal's values.
const RUN: u8 = 0;
const DRAINED: u8 = 1;
const SHUTDOWN: u8 = 2;

/// The signal one session listens to.
#[derive(Clone, Debug)]
pub enum Stop {
    /// Before authentication: the process-wide shutdown signal.
    Global(watch::Receiver<bool>),
    /// After: the user's signal (drain or shutdown).
    User(watch::Receiver<u8>),
}

impl Stop {
    /// Only the process-wide shutdown signal.
    pub fn new(global: watch::Receiver<bool>) -> Self {
        Self::Global(global)
    }

    /// Switches to the signal of `user`, which the process-wide shutdown also
    /// fires (already fired if the shutdown has begun).
    pub fn with_user(self, drains: &Drains, user: &str) -> Self {
        Self::User(drains.subscribe(user))
    }

    /// [`Stop::wait`] as a future that owns the signal (for hand-written
    /// futures such as the relay, which hold it as a field).
    pub async fn into_wait(mut self) -> CloseReason {
        self.wait().await
    }

    /// Resolves when the session must end, with the reason to report. A signal
    /// whose sender is gone counts as fired.
    pub async fn wait(&mut self) -> CloseReason {
        match self {
            Stop::Global(g) => {
                let _ = g.changed().await;
                CloseReason::Shutdown
            }
            Stop::User(u) => {
                let _ = u.changed().await;
                if *u.borrow_and_update() == SHUTDOWN {
                    CloseReason::Shutdown
                } else {
                    CloseReason::Drained
                }
            }
        }
    }
}

/// A detached user signal (see [`Drains::detach`]): firing it ends the
/// sessions that subscribed before the detach.
#[derive(Debug)]
pub struct DrainSignal(Arc<watch::Sender<u8>>);

impl DrainSignal {
    /// Ends the sessions listening to this signal.
    pub fn fire(&self) {
        self.0.send_replace(DRAINED);
    }
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, Arc<watch::Sender<u8>>>,
    /// Detached signals still held by a reload's grace timer; the shutdown
    /// fires them too.
    retired: Vec<Weak<watch::Sender<u8>>>,
    /// The shutdown has begun: new subscribers get a fired signal.
    closed: bool,
}

/// Per-user drain signals. Bounded by the number of configured users (plus
/// the detached ones a reload's grace timer holds): an entry is created when a
/// user's first session subscribes and removed when drained.
#[derive(Debug, Default)]
pub struct Drains {
    inner: Mutex<Inner>,
}

impl Drains {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, user: &str) -> watch::Receiver<u8> {
        let mut m = self.lock();
        if m.closed {
            let (_tx, mut rx) = watch::channel(SHUTDOWN);
            rx.mark_changed();
            return rx;
        }
        match m.users.get(user) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(RUN);
                m.users.insert(user.to_owned(), Arc::new(tx));
                rx
            }
        }
    }

    /// Ends every session of `user` now; returns how many were told.
    pub fn drain(&self, user: &str) -> usize {
        let tx = self.lock().users.remove(user);
        match tx {
            Some(tx) => {
                let n = tx.receiver_count();
                tx.send_replace(DRAINED);
                n
            }
            None => 0,
        }
    }

    /// Takes `user`'s signal out: sessions that start from now on get a new
    /// one; firing the returned signal ends the older sessions only.
    pub fn detach(&self, user: &str) -> Option<DrainSignal> {
        let mut m = self.lock();
        m.retired.retain(|w| w.strong_count() > 0);
        let tx = m.users.remove(user)?;
        m.retired.push(Arc::downgrade(&tx));
        Some(DrainSignal(tx))
    }

    /// The process is shutting down: fires every user's signal (detached ones
    /// included) with "shutdown", and every later subscriber's at once.
    pub fn shutdown_all(&self) {
        let mut m = self.lock();
        m.closed = true;
        for tx in m.users.values() {
            tx.send_replace(SHUTDOWN);
        }
        for tx in m.retired.iter().filter_map(Weak::upgrade) {
            tx.send_replace(SHUTDOWN);
        }
    }

    /// Sessions currently subscribed for `user` (for tests and metrics).
    pub fn sessions(&self, user: &str) -> usize {
        self.lock()
            .users
            .get(user)
            .map(|tx| tx.receiver_count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn ends(mut s: Stop) -> Option<CloseReason> {
        tokio::time::timeout(Duration::from_millis(200), s.wait())
            .await
            .ok()
    }

    #[tokio::test]
    async fn user_signal_tells_drain_from_shutdown() {
        let (_g, grx) = watch::channel(false);
        let d = Drains::default();
        let a = Stop::new(grx.clone()).with_user(&d, "a");
        let b = Stop::new(grx.clone()).with_user(&d, "b");
        assert_eq!(d.sessions("a"), 1);
        assert_eq!(ends(a.clone()).await, None);
        assert_eq!(d.drain("a"), 1);
        assert_eq!(ends(a).await, Some(CloseReason::Drained));
        assert_eq!(ends(b.clone()).await, None);
        d.shutdown_all();
        assert_eq!(ends(b).await, Some(CloseReason::Shutdown));
        // After the shutdown began, a new subscriber ends at once.
        let late = Stop::new(grx).with_user(&d, "b");
        assert_eq!(ends(late).await, Some(CloseReason::Shutdown));
    }

    #[tokio::test]
    async fn detached_signals_end_only_older_sessions_and_hear_the_shutdown() {
        let (_g, grx) = watch::channel(false);
        let d = Drains::default();
        let old = Stop::new(grx.clone()).with_user(&d, "a");
        let sig = d.detach("a").expect("signal");
        let new = Stop::new(grx.clone()).with_user(&d, "a");
        sig.fire();
        assert_eq!(ends(old.clone()).await, Some(CloseReason::Drained));
        assert_eq!(ends(new.clone()).await, None);
        // A detached signal still held (grace not over) hears the shutdown.
        let old2 = Stop::new(grx.clone()).with_user(&d, "a");
        let sig2 = d.detach("a").expect("signal");
        d.shutdown_all();
        assert_eq!(ends(old2).await, Some(CloseReason::Shutdown));
        assert_eq!(ends(new).await, Some(CloseReason::Shutdown));
        drop(sig2);
    }

    #[tokio::test]
    async fn global_signal_ends_unauthenticated_sessions() {
        let (g, grx) = watch::channel(false);
        let s = Stop::new(grx);
        assert_eq!(ends(s.clone()).await, None);
        g.send_replace(true);
        assert_eq!(ends(s).await, Some(CloseReason::Shutdown));
    }
}
