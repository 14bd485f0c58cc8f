//! Who gets a connection slot, so that nobody can lock the others out.
//!
//! Each listener (TCP, the Unix socket) has its own [`Admission`] table of `--max-connections`
//! slots. The rules, in order, for a new connection:
//!
//! 1. **Per-user quota.** A peer that is not the broker's own user (another uid, or a peer
//!    whose uid is unknown, counted by its address) holds at most a quarter of the cap, and
//!    all such peers together at most three quarters. So one local user cannot crowd out a
//!    second one, and the broker's own user always has the last quarter, even against
//!    authenticated long-polls (which anyone can open in open mode). A peer at its quota makes
//!    room by evicting one of its own unauthenticated connections, or is refused.
//! 2. **Eviction, not refusal, at the cap.** When the table is full, the new connection takes
//!    the slot of the unauthenticated connection that has been quiet longest (quiet: no
//!    request finished since) and is not in the middle of a request the broker is working
//!    on. The evicted connection is told why (`connection_evicted`) by its own task and
//!    closed. A connection is unauthenticated until one of its requests proves a session or
//!    registers; a flood of sockets that send nothing, or only `ping`, never authenticates,
//!    so it can always be evicted.
//! 3. Only when every slot holds an authenticated connection or a request in progress is the
//!    new connection refused (`too_many_connections`).
//!
//! Deciding takes one lock and a scan of the table; it never waits for a victim's I/O, so the
//! accept loop keeps accepting during a flood. A std `Mutex` guards the table; it is never
//! held across an `.await`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Whose connection it is, for the quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The broker's own user: never held to a quota.
    Broker,
    /// Another local user.
    Uid(u32),
    /// A peer whose user is unknown, counted by its address.
    Address(IpAddr),
}

/// Why a connection was not admitted. Each becomes its own error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot holds an authenticated connection or a request in progress.
    Full { cap: usize },
    /// This peer already holds its quota of authenticated or busy connections.
    PeerQuota { quota: usize },
    /// Peers other than the broker's user already hold their share together.
    OthersShare { share: usize },
}

/// The slot limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub cap: usize,
    /// Most connections one peer other than the broker's user may hold.
    pub per_peer: usize,
    /// Most connections all peers other than the broker's user may hold together.
    pub others: usize,
}

impl Rules {
    /// The rules for a cap: a quarter of it per other peer, three quarters for them all.
    pub fn for_cap(cap: usize) -> Rules {
        let cap = cap.max(1);
        Rules {
            cap,
            per_peer: (cap / 4).max(1),
            others: (cap - cap / 4).max(1),
        }
    }
}

/// One listener's connection slots.
pub struct Admission {
    rules: Rules,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    per_owner: HashMap<Owner, usize>,
    /// Connections of owners other than [`Owner::Broker`].
    others: usize,
}

struct Entry {
    owner: Owner,
    authenticated: bool,
    /// The broker is working on one of its requests: it must not be cut off mid-way.
    busy: bool,
    /// When its last request finished (or it was accepted).
    quiet_since: Instant,
    evicted: Arc<Notify>,
}

impl Entry {
    fn evictable(&self) -> bool {
        !self.authenticated && !self.busy
    }
}

impl Admission {
    pub fn new(rules: Rules) -> Arc<Admission> {
        Arc::new(Admission {
            rules,
            table: Mutex::new(Table::default()),
        })
    }

    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// Connections holding a slot now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives `owner` a slot, evicting an unauthenticated connection if that is what it takes.
    pub fn admit(self: &Arc<Self>, owner: Owner) -> Result<Ticket, Refusal> {
        let rules = self.rules;
        let mut table = self.lock();
        if owner != Owner::Broker {
            if table.count(owner) >= rules.per_peer && !table.evict(|e| e.owner == owner) {
                return Err(Refusal::PeerQuota {
                    quota: rules.per_peer,
                });
            }
            if table.others >= rules.others && !table.evict(|e| e.owner != Owner::Broker) {
                return Err(Refusal::OthersShare {
                    share: rules.others,
                });
            }
        }
        if table.entries.len() >= rules.cap && !table.evict(|_| true) {
            return Err(Refusal::Full { cap: rules.cap });
        }
        let (id, evicted) = table.insert(owner);
        Ok(Ticket {
            admission: self.clone(),
            id,
            evicted,
        })
    }

    /// Waits until every connection has given its slot back, or `deadline` passes; says
    /// which.
    pub async fn drained_by(&self, deadline: tokio::time::Instant) -> bool {
        while !self.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves consistent counts (each update is one step).
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Table {
    fn count(&self, owner: Owner) -> usize {
        self.per_owner.get(&owner).copied().unwrap_or(0)
    }

    fn insert(&mut self, owner: Owner) -> (u64, Arc<Notify>) {
        self.next_id += 1;
        let id = self.next_id;
        let evicted = Arc::new(Notify::new());
        self.entries.insert(
            id,
            Entry {
                owner,
                authenticated: false,
                busy: false,
                quiet_since: Instant::now(),
                evicted: evicted.clone(),
            },
        );
        *self.per_owner.entry(owner).or_default() += 1;
        if owner != Owner::Broker {
            self.others += 1;
        }
        (id, evicted)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(count) = self.per_owner.get_mut(&entry.owner) {
            *count -= 1;
            if *count == 0 {
                self.per_owner.remove(&entry.owner);
            }
        }
        if entry.owner != Owner::Broker {
            self.others -= 1;
        }
        Some(entry)
    }

    /// Evicts the evictable connection among `candidates` that has been quiet longest, and
    /// tells its task to go; says whether there was one.
    fn evict(&mut self, candidates: impl Fn(&Entry) -> bool) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.evictable() && candidates(entry))
            .min_by_key(|(id, entry)| (entry.quiet_since, **id))
            .map(|(id, _)| *id);
        let Some(entry) = victim.and_then(|id| self.remove(id)) else {
            return false;
        };
        // A stored permit: the victim sees it even if it is not waiting right now.
        entry.evicted.notify_one();
        true
    }
}

/// A connection's slot, given back when dropped. Through it the connection reports what it
/// is doing, and learns when it has been evicted.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Ticket {
    /// Marks a request in progress, so the connection is not evicted while the broker works
    /// on it. False if it was evicted already: the request must not be served.
    pub fn begin_request(&self) -> bool {
        let mut table = self.admission.lock();
        match table.entries.get_mut(&self.id) {
            Some(entry) => {
                entry.busy = true;
                true
            }
            None => false,
        }
    }

    /// The request is answered; `authenticated` if it proved a session (once proved, a
    /// connection stays authenticated).
    pub fn end_request(&self, authenticated: bool) {
        let mut table = self.admission.lock();
        if let Some(entry) = table.entries.get_mut(&self.id) {
            entry.busy = false;
            entry.authenticated |= authenticated;
            entry.quiet_since = Instant::now();
        }
    }

    /// What tells this connection it has been evicted.
    pub fn eviction(&self) -> Eviction {
        Eviction(self.evicted.clone())
    }
}

/// The notice that a connection was evicted to make room for another.
pub struct Eviction(Arc<Notify>);

impl Eviction {
    /// Resolves once the connection has been evicted.
    pub async fn wait(&self) {
        self.0.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: Owner = Owner::Uid(4242);

    fn is_evicted(ticket: &Ticket) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(10), ticket.eviction().wait())
                .await
                .is_ok()
        })
    }

    #[test]
    fn at_the_cap_the_longest_quiet_unauthenticated_connection_makes_room() {
        let admission = Admission::new(Rules::for_cap(3));
        let oldest = admission.admit(Owner::Broker).unwrap();
        let pinged = admission.admit(Owner::Broker).unwrap();
        let member = admission.admit(Owner::Broker).unwrap();
        assert!(pinged.begin_request());
        pinged.end_request(false);
        assert!(member.begin_request());
        member.end_request(true);
        let newcomer = admission.admit(Owner::Broker).unwrap();
        assert!(is_evicted(&oldest), "quiet since it was accepted");
        assert!(!is_evicted(&pinged) && !is_evicted(&member));
        assert!(
            !oldest.begin_request(),
            "an evicted connection serves nothing"
        );
        assert_eq!(admission.len(), 3);
        let again = admission.admit(Owner::Broker).unwrap();
        assert!(is_evicted(&pinged), "a ping does not authenticate");
        assert!(!is_evicted(&newcomer) && !is_evicted(&member));
        drop((again, oldest));
    }

    #[test]
    fn authenticated_and_busy_connections_are_never_evicted() {
        let admission = Admission::new(Rules::for_cap(2));
        let member = admission.admit(Owner::Broker).unwrap();
        assert!(member.begin_request());
        member.end_request(true);
        let busy = admission.admit(Owner::Broker).unwrap();
        assert!(busy.begin_request());
        assert_eq!(
            admission.admit(Owner::Broker).err(),
            Some(Refusal::Full { cap: 2 })
        );
        busy.end_request(false);
        assert!(admission.admit(Owner::Broker).is_ok());
        assert!(is_evicted(&busy));
        assert!(!is_evicted(&member));
    }

    #[test]
    fn another_user_gets_a_quarter_and_the_brokers_user_always_has_room() {
        let admission = Admission::new(Rules::for_cap(8));
        let authenticate = |ticket: Ticket| {
            assert!(ticket.begin_request());
            ticket.end_request(true);
            ticket
        };
        let theirs: Vec<Ticket> = (0..2)
            .map(|_| authenticate(admission.admit(OTHER).unwrap()))
            .collect();
        assert_eq!(
            admission.admit(OTHER).err(),
            Some(Refusal::PeerQuota { quota: 2 })
        );
        let more: Vec<Ticket> = [Owner::Uid(1), Owner::Uid(2), Owner::Uid(3)]
            .into_iter()
            .flat_map(|uid| [admission.admit(uid), admission.admit(uid)])
            .filter_map(Result::ok)
            .map(authenticate)
            .collect();
        assert_eq!(more.len(), 4, "others together stop at three quarters");
        let mine: Vec<Ticket> = (0..2)
            .map(|_| admission.admit(Owner::Broker).unwrap())
            .collect();
        assert_eq!(admission.len(), 8);
        drop((theirs, more, mine));
        assert!(admission.is_empty());
    }

    #[test]
    fn a_user_at_its_quota_evicts_its_own_unauthenticated_connections_first() {
        let admission = Admission::new(Rules::for_cap(8));
        let mine = admission.admit(Owner::Broker).unwrap();
        let first = admission.admit(OTHER).unwrap();
        let second = admission.admit(OTHER).unwrap();
        let third = admission.admit(OTHER).unwrap();
        assert!(is_evicted(&first), "its own oldest goes");
        assert!(!is_evicted(&mine) && !is_evicted(&second));
        drop((mine, second, third));
    }
}
