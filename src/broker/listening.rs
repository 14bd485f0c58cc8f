//! Which sessions have a long-poll open right now. A session waiting for mail is in use even
//! though its last recorded use may be minutes old (a wait is one request, and `count` is not
//! recorded at all), so a `register` that did not ask to take over must not take its name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::queries::SessionId;

/// Open long-polls per session id.
#[derive(Debug, Default)]
pub struct Listening {
    /// A std `Mutex`: it guards only the map and is never held across an `.await`; the
    /// writer thread reads it while deciding a `register`.
    open: Mutex<HashMap<SessionId, usize>>,
}

impl Listening {
    /// Marks `session_id` as waiting until the returned guard is dropped.
    pub fn start(self: &Arc<Self>, session_id: SessionId) -> Listener {
        *self.open().entry(session_id).or_default() += 1;
        Listener {
            listening: self.clone(),
            session_id,
        }
    }

    /// Whether `session_id` has a long-poll open now.
    pub fn is_waiting(&self, session_id: SessionId) -> bool {
        self.open().contains_key(&session_id)
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, usize>> {
        self.open.lock().expect("listening map poisoned")
    }
}

/// One open long-poll; dropping it (the wait ended, or its task was cancelled) ends it.
#[derive(Debug)]
pub struct Listener {
    listening: Arc<Listening>,
    session_id: SessionId,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut open = self.listening.open();
        if let Some(count) = open.get_mut(&self.session_id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.session_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_waits_while_any_of_its_long_polls_is_open() {
        let listening = Arc::new(Listening::default());
        let first = listening.start(SessionId(7));
        let second = listening.start(SessionId(7));
        drop(first);
        assert!(listening.is_waiting(SessionId(7)));
        drop(second);
        assert!(!listening.is_waiting(SessionId(7)));
        assert!(!listening.is_waiting(SessionId(8)));
    }
}
