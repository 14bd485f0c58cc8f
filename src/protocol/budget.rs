//! Keeping a reply that lists entries under [`super::REPLY_BUDGET`]: a page of entries goes
//! in, in order, while it fits, and the reply says there is more ([`EntryBudget`]); or a
//! summary shows the first few of a list and counts the rest ([`Capped`]).

use serde::Serialize;

/// The bytes a reply has used so far, counted as it is built.
#[derive(Debug, Clone)]
pub struct EntryBudget {
    used: usize,
    limit: usize,
    entries: usize,
}

impl EntryBudget {
    /// A budget of [`super::REPLY_BUDGET`] for a reply whose fields other than its list take at
    /// most `fixed` bytes (status, flags, a cursor).
    pub fn new(fixed: usize) -> Self {
        EntryBudget {
            used: fixed,
            limit: super::REPLY_BUDGET,
            entries: 0,
        }
    }

    /// Counts `entry` in if it still fits (with its separating comma); false leaves the
    /// budget as it was, and the reply is full.
    pub fn take(&mut self, entry: &impl Serialize) -> bool {
        let size = entry_bytes(entry) + 1;
        if self.used + size > self.limit {
            return false;
        }
        self.used += size;
        self.entries += 1;
        true
    }

    /// How many entries went in.
    pub fn entries(&self) -> usize {
        self.entries
    }
}

/// How many bytes `entry` takes in a reply: its JSON, as written.
pub fn entry_bytes(entry: &impl Serialize) -> usize {
    serde_json::to_vec(entry).map_or(0, |bytes| bytes.len())
}

/// The start of a list a reply summarises: the first `cap` entries, and how many there were
/// in all. Entries are small and bounded (ids, names, short refusals), so a cap on their
/// number keeps the reply under the budget however long the list grows.
#[derive(Debug, Clone)]
pub struct Capped<T> {
    shown: Vec<T>,
    total: usize,
    cap: usize,
}

impl<T> Capped<T> {
    pub fn new(cap: usize) -> Self {
        Capped {
            shown: Vec::new(),
            total: 0,
            cap,
        }
    }

    /// Counts `entry`, keeping it only while fewer than `cap` are kept.
    pub fn push(&mut self, entry: T) {
        self.total += 1;
        if self.shown.len() < self.cap {
            self.shown.push(entry);
        }
    }

    /// How many entries were pushed, shown or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether some entries were counted but not kept.
    pub fn truncated(&self) -> bool {
        self.total > self.shown.len()
    }

    pub fn shown(&self) -> &[T] {
        &self.shown
    }

    pub fn into_shown(self) -> Vec<T> {
        self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_capped_list_keeps_the_first_entries_and_counts_them_all() {
        let mut ids = Capped::new(3);
        for id in 1..=10 {
            ids.push(id);
        }
        assert_eq!(ids.shown(), [1, 2, 3]);
        assert_eq!(ids.total(), 10);
        assert!(ids.truncated());
        let mut few = Capped::new(3);
        few.push("a");
        assert!(!few.truncated());
        assert_eq!(few.into_shown(), ["a"]);
    }

    #[test]
    fn entries_go_in_until_the_next_would_pass_the_budget() {
        let entry = json!({"id": "a".repeat(32), "last_seen": "2026-01-01T12:00:00.000Z"});
        let mut budget = EntryBudget::new(100);
        while budget.take(&entry) {}
        let each = entry.to_string().len() + 1;
        assert_eq!(budget.entries(), (super::super::REPLY_BUDGET - 100) / each);
        assert!(!budget.take(&entry), "a full budget stays full");
    }
}
