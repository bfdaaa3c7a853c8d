//! Records that neither the spool nor the database could take: a disk that is
//! full or failing (or a file-size limit) during a database outage. They are
//! kept in memory up to `sink.memory_hold_max_bytes` and moved into the spool
//! as soon as it takes writes again, or into the database if that answers
//! first. Past the bound a record is dropped and counted: growing without one
//! would end with the kernel killing the process, every held record and every
//! open stream with it.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::store::RequestRecord;

/// A record with the bytes it is charged for (its spool encoding's length).
#[derive(Debug, Clone)]
pub struct Held {
    pub record: RequestRecord,
    pub bytes: usize,
}

/// The bounded in-memory hold, shared by the proxy threads and the sink.
pub struct HeldRecords {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: VecDeque<Held>,
    bytes: usize,
}

impl HeldRecords {
    pub fn new(max_bytes: usize) -> HeldRecords {
        HeldRecords {
            max_bytes,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `held` unless that would pass the bound; gives it back if not.
    pub fn hold(&self, held: Held) -> Result<(), Box<Held>> {
        let mut inner = self.lock();
        if inner.bytes + held.bytes > self.max_bytes {
            return Err(Box::new(held));
        }
        inner.bytes += held.bytes;
        inner.records.push_back(held);
        Ok(())
    }

    /// Takes every held record, oldest first.
    pub fn take_all(&self) -> Vec<Held> {
        let mut inner = self.lock();
        inner.bytes = 0;
        inner.records.drain(..).collect()
    }

    /// Puts back records taken by [`Self::take_all`] that still have nowhere
    /// to go, ahead of any held since. They were within the bound when held,
    /// so they are never dropped here.
    pub fn put_back(&self, records: Vec<Held>) {
        let mut inner = self.lock();
        for held in records.into_iter().rev() {
            inner.bytes += held.bytes;
            inner.records.push_front(held);
        }
    }

    /// Copies of the `n` oldest held records, which stay held until
    /// [`Self::remove_oldest`]: a write of them that is cut short (the
    /// process stopping) loses nothing.
    pub fn oldest(&self, n: usize) -> Vec<Held> {
        self.lock().records.iter().take(n).cloned().collect()
    }

    /// Removes the `n` oldest held records (written by their caller, who
    /// alone takes records from the front meanwhile).
    pub fn remove_oldest(&self, n: usize) {
        let mut inner = self.lock();
        let n = n.min(inner.records.len());
        let freed: usize = inner.records.iter().take(n).map(|h| h.bytes).sum();
        inner.records.drain(..n);
        inner.bytes -= freed;
    }

    /// Moves the `n` oldest held records behind the others (a chunk that
    /// cannot go in yet must not keep the rest from being tried).
    pub fn requeue_oldest(&self, n: usize) {
        let mut inner = self.lock();
        let n = n.min(inner.records.len());
        inner.records.rotate_left(n);
    }

    /// (records, bytes) held now.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.records.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: u128, bytes: usize) -> Held {
        let record = RequestRecord {
            id: uuid::Uuid::from_u128(id),
            ..RequestRecord::default()
        };
        Held { record, bytes }
    }

    fn ids(records: &[Held]) -> Vec<u128> {
        records.iter().map(|h| h.record.id.as_u128()).collect()
    }

    #[test]
    fn a_record_that_would_pass_the_bound_is_given_back() {
        let hold = HeldRecords::new(1000);
        assert!(hold.hold(held(1, 600)).is_ok());
        let refused = hold.hold(held(2, 401)).unwrap_err();
        assert_eq!(refused.record.id.as_u128(), 2);
        assert!(hold.hold(held(3, 400)).is_ok(), "exactly at the bound fits");
        assert_eq!(hold.size(), (2, 1000));
    }

    #[test]
    fn records_put_back_go_ahead_of_those_held_since() {
        let hold = HeldRecords::new(1000);
        hold.hold(held(1, 100)).unwrap();
        hold.hold(held(2, 100)).unwrap();
        let taken = hold.take_all();
        assert_eq!(hold.size(), (0, 0));
        hold.hold(held(3, 100)).unwrap();
        hold.put_back(taken);
        assert_eq!(hold.size(), (3, 300));
        assert_eq!(ids(&hold.take_all()), [1, 2, 3]);
    }

    #[test]
    fn the_oldest_stay_held_until_removed() {
        let hold = HeldRecords::new(1000);
        for id in 1..=3 {
            hold.hold(held(id, 100)).unwrap();
        }
        assert_eq!(ids(&hold.oldest(2)), [1, 2]);
        assert_eq!(hold.size(), (3, 300));
        hold.remove_oldest(2);
        assert_eq!(hold.size(), (1, 100));
        hold.remove_oldest(5);
        assert_eq!(hold.size(), (0, 0));
    }

    #[test]
    fn requeued_records_go_behind_the_others() {
        let hold = HeldRecords::new(1000);
        for id in 1..=4 {
            hold.hold(held(id, 100)).unwrap();
        }
        hold.requeue_oldest(2);
        assert_eq!(hold.size(), (4, 400));
        assert_eq!(ids(&hold.take_all()), [3, 4, 1, 2]);
    }
}
