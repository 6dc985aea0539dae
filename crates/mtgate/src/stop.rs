//! Why a running session must end early: the process is shutting down, or its
//! user was removed or disabled by a reload and the grace time has passed.
//!
//! Sessions start with the server's shutdown signal only; once the client is
//! authenticated the session also subscribes to its user's drain signal in
//! [`Drains`], which survives reloads (it lives in the runtime's shared part).

use crate::events::CloseReason;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// The signals one session listens to.
#[derive(Clone, Debug)]
pub struct Stop {
    global: watch::Receiver<bool>,
    user: Option<watch::Receiver<bool>>,
}

impl Stop {
    /// Only the process-wide shutdown signal.
    pub fn new(global: watch::Receiver<bool>) -> Self {
        Self { global, user: None }
    }

    /// Adds the drain signal of `user`.
    pub fn with_user(mut self, drains: &Drains, user: &str) -> Self {
        self.user = Some(drains.subscribe(user));
        self
    }

    /// Resolves when the session must end, with the reason to report.
    pub async fn wait(&mut self) -> CloseReason {
        match &mut self.user {
            Some(u) => tokio::select! {
                _ = self.global.changed() => CloseReason::Shutdown,
                _ = u.changed() => CloseReason::Drained,
            },
            None => {
                let _ = self.global.changed().await;
                CloseReason::Shutdown
            }
        }
    }
}

/// Per-user drain signals. Bounded by the number of configured users: an entry
/// is created when a user's first session subscribes and removed when drained.
#[derive(Debug, Default)]
pub struct Drains {
    users: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Drains {
    fn subscribe(&self, user: &str) -> watch::Receiver<bool> {
        let mut m = self.users.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(user) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(false);
                m.insert(user.to_owned(), tx);
                rx
            }
        }
    }

    /// Ends every session of `user` now; returns how many were told.
    pub fn drain(&self, user: &str) -> usize {
        let tx = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        match tx {
            Some(tx) => {
                let n = tx.receiver_count();
                let _ = tx.send(true);
                n
            }
            None => 0,
        }
    }

    /// Takes `user`'s signal out: sessions that start from now on get a new
    /// one; sending `true` on the returned sender ends the older sessions only.
    pub fn detach(&self, user: &str) -> Option<watch::Sender<bool>> {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user)
    }

    /// Sessions currently subscribed for `user` (for tests and metrics).
    pub fn sessions(&self, user: &str) -> usize {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .map(|tx| tx.receiver_count())
            .unwrap_or(0)
    }
}
