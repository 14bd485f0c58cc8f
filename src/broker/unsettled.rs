//! Legacy replies on their way, per recipient: mail held while the broker waits for evidence
//! that the client took it. A `check` that finds nothing waits briefly for those to settle,
//! so mail whose reply was not taken reaches the very next check instead of being hidden
//! from it by the hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A std `Mutex`: it guards only the map and is never held across an `.await`.
type Pending = Arc<Mutex<HashMap<String, (usize, Arc<Notify>)>>>;

/// The count of unsettled replies for each recipient that has any.
#[derive(Default)]
pub struct Unsettled {
    pending: Pending,
}

/// One unsettled reply; dropping it (settled or abandoned) wakes whoever waits for it.
#[derive(Debug)]
pub struct InFlight {
    pending: Pending,
    recipient: String,
}

impl Unsettled {
    /// Counts a reply for `recipient` as on its way until the returned guard is dropped.
    pub fn start(&self, recipient: &str) -> InFlight {
        let mut pending = self.pending.lock().expect("unsettled map poisoned");
        pending.entry(recipient.to_owned()).or_default().0 += 1;
        InFlight {
            pending: self.pending.clone(),
            recipient: recipient.to_owned(),
        }
    }

    /// What to wait on while `recipient` has replies on their way; `None` if it has none.
    pub fn settling(&self, recipient: &str) -> Option<Arc<Notify>> {
        let pending = self.pending.lock().expect("unsettled map poisoned");
        pending.get(recipient).map(|(_, settled)| settled.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().expect("unsettled map poisoned");
        let Some((count, settled)) = pending.get_mut(&self.recipient) else {
            return;
        };
        *count -= 1;
        settled.notify_waiters();
        if *count == 0 {
            pending.remove(&self.recipient);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipient_is_settling_until_its_last_reply_is_settled() {
        let unsettled = Unsettled::default();
        assert!(unsettled.settling("alice").is_none());
        let first = unsettled.start("alice");
        let second = unsettled.start("alice");
        drop(first);
        assert!(unsettled.settling("alice").is_some());
        drop(second);
        assert!(unsettled.settling("alice").is_none());
    }
}
