//! One budget for the memory that requests still arriving may hold, shared by every
//! connection: a thousand half-sent 1 MiB requests must not take a gigabyte.
//!
//! Each connection reads into a small buffer of its own for free. Growing it past that takes a
//! [`Loan`] from the [`ByteBudget`] (the connection borrows enough for the largest request in
//! one go; see `Connection::make_room`); when the budget is spent, the connection stops
//! reading (the client's writes back up in the kernel) until other requests finish and give
//! bytes back, still under its read timeout. A loan is returned when the buffer shrinks back
//! after its request, or when the connection ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Lending more than this at once counts as a large use of the budget, after which the
/// memory is handed back to the operating system once everything is returned.
const LARGE_USE: usize = 8 * 1024 * 1024;

/// Bytes that request buffers may hold beyond their initial size, all connections together.
#[derive(Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    /// Set when more than [`LARGE_USE`] was out at once since the memory was last trimmed.
    used_much: Arc<AtomicBool>,
}

impl ByteBudget {
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        ByteBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            used_much: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Once all is returned after a large use, gives the freed heap back to the operating
    /// system: glibc keeps freed memory for reuse, so a flood's buffers would otherwise stay
    /// in the broker's resident size long after it ended.
    fn returned(&self) {
        if self.available() == self.total && self.used_much.swap(false, Ordering::Relaxed) {
            trim_heap();
        }
    }

    /// An empty loan, to grow as a request needs.
    pub fn loan(&self) -> Loan {
        Loan {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes not lent out right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// Bytes lent to one connection's buffer; given back when dropped.
pub struct Loan {
    budget: ByteBudget,
    bytes: usize,
}

impl Loan {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Borrows `more` bytes, waiting until they are free. Cancel-safe: a wait that is given
    /// up borrows nothing.
    pub async fn grow(&mut self, more: usize) {
        let Ok(more_permits) = u32::try_from(more) else {
            // Larger than any request could be; wait for ever rather than lend it.
            return std::future::pending().await;
        };
        let permit = self
            .budget
            .bytes
            .acquire_many(more_permits)
            .await
            .expect("the budget's semaphore is never closed");
        permit.forget();
        self.bytes += more;
        if self.budget.total - self.budget.available() > LARGE_USE {
            self.budget.used_much.store(true, Ordering::Relaxed);
        }
    }

    /// Gives back what is lent beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.bytes.add_permits(self.bytes - bytes);
            self.bytes = bytes;
            self.budget.returned();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

impl Drop for Loan {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_spent_budget_makes_the_next_borrower_wait_until_bytes_come_back() {
        let budget = ByteBudget::new(100);
        let mut first = budget.loan();
        first.grow(80).await;
        let mut second = budget.loan();
        let waited = tokio::time::timeout(Duration::from_millis(50), second.grow(30)).await;
        assert!(waited.is_err(), "only 20 bytes are free");
        assert_eq!(second.bytes(), 0, "a wait given up borrows nothing");
        first.shrink_to(50);
        second.grow(30).await;
        assert_eq!(budget.available(), 20);
        drop(first);
        drop(second);
        assert_eq!(budget.available(), 100);
    }
}
