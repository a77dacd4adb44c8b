//! A latest-value channel from the session loop to the UI thread. The producer
//! replaces whatever the UI has not taken yet, so it never waits for a slow screen
//! and the UI never sees a backlog: at any fault rate it draws the newest summary.
use std::sync::{Mutex, MutexGuard};

pub struct Feed<T> {
    slot: Mutex<Slot<T>>,
}

struct Slot<T> {
    value: Option<T>,
    closed: bool,
    published: u64,
}

impl<T> Default for Feed<T> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(Slot {
                value: None,
                closed: false,
                published: 0,
            }),
        }
    }
}

impl<T> Feed<T> {
    // A panic on the other side must not take this side down with it.
    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the pending value. The old one is dropped after the lock is
    /// released, so the critical section is a pointer swap however big T is.
    pub fn publish(&self, value: T) {
        let old = {
            let mut s = self.lock();
            s.published += 1;
            s.value.replace(value)
        };
        drop(old);
    }

    pub fn take(&self) -> Option<T> {
        self.lock().value.take()
    }

    /// The producer is gone: the UI should end once it has drawn what is left.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    #[cfg(test)]
    pub fn published(&self) -> u64 {
        self.lock().published
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_value() {
        let f = Feed::default();
        f.publish(1);
        f.publish(2);
        f.publish(3);
        assert_eq!(f.take(), Some(3));
        assert_eq!(f.take(), None);
        assert_eq!(f.published(), 3);
    }

    #[test]
    fn close_is_seen_by_the_consumer() {
        let f: Feed<u8> = Feed::default();
        assert!(!f.is_closed());
        f.close();
        assert!(f.is_closed());
    }
}
