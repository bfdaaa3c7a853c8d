//! Per-thread reuse of the parsers' larger parts.
//!
//! Every proxied request needs two or three scanners (its request body's,
//! its response's, and on a stream the stray lines' one), each ~1 KiB of
//! state in a box plus the buffers its captures grow, all allocated and
//! freed per request. A request now takes them from its thread's free list
//! and gives them back, cleaned, when its parser is dropped; a thread that
//! keeps serving allocates none (~8 allocations and frees fewer per JSON
//! request; benches/README.md, session 15).
//!
//! What goes back is cleaned first ([`Recycle::clean`]), so nothing one
//! request saw can reach the next: the same reset that readies a stream's
//! scanner for its next event, which also gives up any buffer larger than
//! a usual request needs. Each list keeps at most [`KEEP`] values.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// Most values of one kind a thread keeps: the requests a proxy thread
/// finishes between two that start; a burst of open streams beyond it
/// allocates, as before.
pub(crate) const KEEP: usize = 64;

/// A thread's free list of one kind. Boxed: a value moves between the list
/// and its user as a pointer, never as its ~1 KiB self.
pub(crate) type FreeList<T> = RefCell<Vec<Box<T>>>;

/// A value with a per-thread free list.
pub(crate) trait Recycle: Sized + 'static {
    /// This kind's free list on the current thread.
    fn free_list() -> &'static LocalKey<FreeList<Self>>;

    /// Forgets everything the last user left, and frees any buffer larger
    /// than is worth keeping.
    fn clean(&mut self);
}

/// A boxed value that goes back to its thread's free list when dropped.
pub(crate) struct Recycled<T: Recycle>(Option<Box<T>>);

impl<T: Recycle> Recycled<T> {
    /// A clean value from this thread's free list, or a new one from `make`.
    /// The flag says which (`true`: reused).
    pub(crate) fn take(make: impl FnOnce() -> T) -> (Recycled<T>, bool) {
        let reused = T::free_list()
            .try_with(|list| list.borrow_mut().pop())
            .ok()
            .flatten();
        match reused {
            Some(value) => (Recycled(Some(value)), true),
            None => (Recycled(Some(Box::new(make()))), false),
        }
    }
}

impl<T: Recycle> Drop for Recycled<T> {
    fn drop(&mut self) {
        let Some(mut value) = self.0.take() else {
            return;
        };
        value.clean();
        // A thread being torn down has no list left: the value is dropped.
        let _ = T::free_list().try_with(|list| {
            let mut list = list.borrow_mut();
            if list.len() < KEEP {
                list.push(value);
            }
        });
    }
}

impl<T: Recycle> Deref for Recycled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_deref().expect("only Drop empties a Recycled")
    }
}

impl<T: Recycle> DerefMut for Recycled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_deref_mut().expect("only Drop empties a Recycled")
    }
}

impl<T: Recycle + std::fmt::Debug> std::fmt::Debug for Recycled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How many values this thread's free list of `T` holds (for tests).
#[cfg(test)]
pub(crate) fn kept<T: Recycle>() -> usize {
    T::free_list().with(|list| list.borrow().len())
}

/// Empties this thread's free list of `T` (for tests).
#[cfg(test)]
pub(crate) fn forget<T: Recycle>() {
    T::free_list().with(|list| list.borrow_mut().clear());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that remembers what it was given until cleaned, and gives up
    /// a buffer grown past 100.
    #[derive(Debug, Default)]
    struct Notes {
        items: Vec<u32>,
    }

    thread_local! {
        static FREE_NOTES: FreeList<Notes> = const { RefCell::new(Vec::new()) };
    }

    impl Recycle for Notes {
        fn free_list() -> &'static LocalKey<FreeList<Notes>> {
            &FREE_NOTES
        }

        fn clean(&mut self) {
            self.items.clear();
            if self.items.capacity() > 100 {
                self.items = Vec::new();
            }
        }
    }

    #[test]
    fn a_dropped_value_is_cleaned_and_taken_again_on_the_same_thread() {
        forget::<Notes>();
        let (mut first, reused) = Recycled::take(Notes::default);
        assert!(!reused);
        first.items.push(7);
        let at: *const Notes = &*first;
        drop(first);
        assert_eq!(kept::<Notes>(), 1);
        let (again, reused) = Recycled::take(|| unreachable!("the kept one is taken"));
        assert!(reused);
        assert!(std::ptr::eq(&*again, at));
        assert!(again.items.is_empty(), "what the last user left is gone");
        assert_eq!(kept::<Notes>(), 0);
    }

    #[test]
    fn the_list_is_bounded_and_a_kept_value_gives_up_large_buffers() {
        forget::<Notes>();
        let many: Vec<_> = (0..KEEP + 10)
            .map(|_| Recycled::take(Notes::default).0)
            .collect();
        drop(many);
        assert_eq!(kept::<Notes>(), KEEP);
        forget::<Notes>();
        let (mut large, _) = Recycled::take(Notes::default);
        large.items.extend(0..101);
        drop(large);
        let (again, reused) = Recycled::take(Notes::default);
        assert!(reused);
        assert_eq!(again.items.capacity(), 0, "the large buffer is freed");
    }

    #[test]
    fn each_thread_has_its_own_list() {
        forget::<Notes>();
        drop(Recycled::take(Notes::default).0);
        assert_eq!(kept::<Notes>(), 1);
        std::thread::spawn(|| assert_eq!(kept::<Notes>(), 0))
            .join()
            .unwrap();
    }
}
