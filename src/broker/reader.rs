//! Whether the reader of a request is still there. The connection watches its socket while
//! the rules work, and says so the moment the client closes it, so a long-poll stops waiting
//! (and reads nothing, leases nothing) for a reader who is gone.

use tokio::sync::watch;

/// The connection's half: it calls [`ReaderLeft::left`] when its client closed or reset.
pub struct ReaderLeft(watch::Sender<bool>);

/// The rules' half: a request's long-poll waits on [`Presence::gone`] beside its doorbell.
#[derive(Clone)]
pub struct Presence(watch::Receiver<bool>);

/// A pair for one request.
pub fn watch_reader() -> (ReaderLeft, Presence) {
    let (left, presence) = watch::channel(false);
    (ReaderLeft(left), Presence(presence))
}

impl ReaderLeft {
    pub fn left(&self) {
        self.0.send_replace(true);
    }
}

impl Presence {
    /// A reader nobody watches (a request from inside the process): never gone.
    pub fn unwatched() -> Presence {
        watch_reader().1
    }

    pub fn is_gone(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the reader is gone; never, if nobody watches it any more.
    pub async fn gone(&mut self) {
        if self.0.wait_for(|gone| *gone).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_is_gone_only_once_its_connection_says_so() {
        let (left, mut presence) = watch_reader();
        assert!(!presence.is_gone());
        left.left();
        presence.gone().await;
        assert!(presence.is_gone());
    }

    #[tokio::test]
    async fn an_unwatched_reader_never_leaves() {
        let mut presence = Presence::unwatched();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), presence.gone()).await;
        assert!(waited.is_err());
    }
}
