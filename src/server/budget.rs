//! One budget for the memory that requests still arriving may hold, shared by every
//! connection: a thousand half-sent 1 MiB requests must not take a gigabyte.
//!
//! Each connection reads into a small buffer of its own for free. Growing it past that takes a
//! [`Loan`] from the [`ByteBudget`]: enough for the largest request, in one go (see
//! `Connection::make_room`), so no connection ever waits while holding part of what it needs.
//! When the budget is spent, the connection stops reading (the client's writes back up in the
//! kernel) until other requests finish and give bytes back, still under its read timeout. A
//! loan is returned when the buffer shrinks back after its request, or when the connection
//! ends.
//!
//! A quarter of the budget is kept for authenticated connections, so strangers holding
//! half-sent requests cannot make a known client's large `send` wait for their read timeouts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Lending more than this at once counts as a large use of the budget, after which the
/// memory is handed back to the operating system once everything is returned.
const LARGE_USE: usize = 8 * 1024 * 1024;

/// Bytes that request buffers may hold beyond their initial size, all connections together.
#[derive(Clone)]
pub struct ByteBudget {
    /// Lent to any connection.
    anyone: Arc<Semaphore>,
    /// Lent only to authenticated connections, when `anyone` is spent.
    members: Arc<Semaphore>,
    total: usize,
    /// Set when more than [`LARGE_USE`] was out at once since the memory was last trimmed.
    used_much: Arc<AtomicBool>,
}

impl ByteBudget {
    /// `total` bytes, of which a quarter (at least `largest` bytes, one largest request) is
    /// kept for authenticated connections. `total` is raised to two largest requests if lower.
    pub fn new(total: usize, largest: usize) -> Self {
        let total = total
            .max(largest.saturating_mul(2))
            .min(Semaphore::MAX_PERMITS);
        let members = (total / 4).max(largest);
        ByteBudget {
            anyone: Arc::new(Semaphore::new(total - members)),
            members: Arc::new(Semaphore::new(members)),
            total,
            used_much: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Nothing lent yet: it is borrowed when a request needs it.
    pub fn loan(&self) -> Loan {
        Loan {
            budget: self.clone(),
            lent: None,
        }
    }

    /// Bytes not lent out right now.
    pub fn available(&self) -> usize {
        self.anyone.available_permits() + self.members.available_permits()
    }

    /// Once all is returned after a large use, gives the freed heap back to the operating
    /// system: glibc keeps freed memory for reuse, so a flood's buffers would otherwise stay
    /// in the broker's resident size long after it ended.
    fn returned(&self) {
        if self.available() == self.total && self.used_much.swap(false, Ordering::Relaxed) {
            trim_heap();
        }
    }
}

/// What one connection has borrowed: nothing, or one amount from one pool. Given back when
/// dropped.
pub struct Loan {
    budget: ByteBudget,
    lent: Option<(Arc<Semaphore>, usize)>,
}

impl Loan {
    pub fn bytes(&self) -> usize {
        self.lent.as_ref().map_or(0, |(_, bytes)| *bytes)
    }

    /// Borrows `bytes` (the loan must be empty), waiting until they are free; an
    /// `authenticated` connection may also take them from the members' share. Cancel-safe: a
    /// wait that is given up borrows nothing.
    pub async fn borrow(&mut self, bytes: usize, authenticated: bool) {
        debug_assert!(
            self.lent.is_none(),
            "a loan is borrowed once, then given back"
        );
        let Ok(permits) = u32::try_from(bytes) else {
            // Larger than any request could be; wait for ever rather than lend it.
            return std::future::pending().await;
        };
        let (anyone, members) = (&self.budget.anyone, &self.budget.members);
        let closed = "the budget's semaphores are never closed";
        let (pool, permit) = if authenticated {
            tokio::select! {
                permit = anyone.acquire_many(permits) => (anyone, permit.expect(closed)),
                permit = members.acquire_many(permits) => (members, permit.expect(closed)),
            }
        } else {
            (anyone, anyone.acquire_many(permits).await.expect(closed))
        };
        permit.forget();
        self.lent = Some((pool.clone(), bytes));
        if self.budget.total - self.budget.available() > LARGE_USE {
            self.budget.used_much.store(true, Ordering::Relaxed);
        }
    }

    /// Gives back everything borrowed.
    pub fn give_back(&mut self) {
        if let Some((pool, bytes)) = self.lent.take() {
            pool.add_permits(bytes);
            self.budget.returned();
        }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        self.give_back();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_spent_budget_makes_the_next_borrower_wait_until_bytes_come_back() {
        let budget = ByteBudget::new(400, 100);
        let mut loans: Vec<Loan> = (0..3).map(|_| budget.loan()).collect();
        for loan in &mut loans {
            loan.borrow(100, false).await;
        }
        let mut stranger = budget.loan();
        let waited = tokio::time::timeout(WAIT, stranger.borrow(100, false)).await;
        assert!(waited.is_err(), "strangers have only three quarters");
        assert_eq!(stranger.bytes(), 0, "a wait given up borrows nothing");
        let mut member = budget.loan();
        member.borrow(100, true).await;
        assert_eq!(budget.available(), 0);
        loans[0].give_back();
        stranger.borrow(100, false).await;
        drop((loans, stranger, member));
        assert_eq!(budget.available(), 400);
    }

    #[tokio::test]
    async fn the_members_share_goes_back_to_the_members() {
        let budget = ByteBudget::new(200, 100);
        let mut first = budget.loan();
        first.borrow(100, false).await;
        let mut member = budget.loan();
        member.borrow(100, true).await;
        first.give_back();
        member.give_back();
        let mut strangers = (budget.loan(), budget.loan());
        strangers.0.borrow(100, false).await;
        let waited = tokio::time::timeout(WAIT, strangers.1.borrow(100, false)).await;
        assert!(
            waited.is_err(),
            "the members' share was not handed to strangers"
        );
    }
}
