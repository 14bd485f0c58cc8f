//! Doorbells: wake a long-polling `check` the moment mail for its instance is committed,
//! rather than having it poll the database. Beside the bells, one broker-wide change counter
//! that every commit of mail or delivery state bumps: the dashboard's live streams wait on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

/// One bell per instance name that has a waiter, plus a "closing" signal for shutdown.
pub struct Doorbells {
    /// A std `Mutex`: it guards only the map and is never held across an `.await`.
    bells: Mutex<HashMap<String, Arc<Notify>>>,
    closing: watch::Sender<bool>,
    /// Bumped after each commit that stored mail or changed its delivery state or presence.
    changes: watch::Sender<u64>,
}

impl Default for Doorbells {
    fn default() -> Self {
        Doorbells {
            bells: Mutex::new(HashMap::new()),
            closing: watch::channel(false).0,
            changes: watch::channel(0).0,
        }
    }
}

impl Doorbells {
    /// The bell for `name`; a waiter keeps the `Arc` while it waits. Bells nobody holds are
    /// dropped here, so the map only grows with the number of waiting instances.
    pub fn bell(&self, name: &str) -> Arc<Notify> {
        let mut bells = self.bells.lock().expect("doorbell map poisoned");
        bells.retain(|_, bell| Arc::strong_count(bell) > 1);
        bells.entry(name.to_owned()).or_default().clone()
    }

    /// Wakes whoever waits for `name`'s mail. Call after the commit, never before.
    pub fn ring(&self, name: &str) {
        self.changed();
        let bells = self.bells.lock().expect("doorbell map poisoned");
        if let Some(bell) = bells.get(name) {
            bell.notify_waiters();
        }
    }

    /// Wakes every waiter (a broadcast, a rename, shutdown).
    pub fn ring_all(&self) {
        self.changed();
        let bells = self.bells.lock().expect("doorbell map poisoned");
        for bell in bells.values() {
            bell.notify_waiters();
        }
    }

    /// Tells every waiter, present and future, to answer now: the broker is stopping.
    pub fn close(&self) {
        self.closing.send_replace(true);
        self.ring_all();
    }

    /// Tells the change watchers (the dashboard) that something was committed. Cheap: one
    /// atomic bump, and watchers that are not waiting are not woken.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes after each [`Doorbells::changed`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bells_nobody_holds_are_forgotten() {
        let doorbells = Doorbells::default();
        let held = doorbells.bell("alice");
        drop(doorbells.bell("bob"));
        doorbells.bell("carol");
        let names: Vec<String> = doorbells.bells.lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&"alice".to_owned()));
        assert!(!names.contains(&"bob".to_owned()));
        drop(held);
    }
}
