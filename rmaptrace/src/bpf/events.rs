//! Decodes ring buffer records. Records come from the kernel but are still checked
//! for size before they are read: a short record is an error, never a panic.
use rmaptrace_common::{event_kind, EventHeader};

use crate::model::event::Event;

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the types are repr(C) plain data valid for any bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

pub fn decode(bytes: &[u8]) -> Option<Event> {
    let header: EventHeader = read(bytes)?;
    match header.kind {
        event_kind::FAULT => read(bytes).map(Event::Fault),
        event_kind::MMAP_EXIT | event_kind::KERNEL_MMAP => read(bytes).map(Event::MmapExit),
        event_kind::MMAP_ENTER
        | event_kind::MUNMAP
        | event_kind::MREMAP_ENTER
        | event_kind::MREMAP_EXIT
        | event_kind::MUNMAP_EXIT => read(bytes).map(Event::Syscall),
        event_kind::EXIT => read(bytes).map(Event::Exit),
        event_kind::EXEC | event_kind::FORK => read(bytes).map(Event::Task),
        event_kind::UNRESOLVED_FAULT => read(bytes).map(Event::Unresolved),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmaptrace_common::ExitEvent;

    #[test]
    fn short_or_unknown_records_are_rejected() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[1, 0, 0, 0]).is_none());
        let mut bytes = vec![0u8; std::mem::size_of::<ExitEvent>()];
        bytes[0] = 99;
        assert!(decode(&bytes).is_none());
        bytes[0] = event_kind::EXIT as u8;
        assert!(matches!(decode(&bytes), Some(Event::Exit(_))));
        bytes[0] = event_kind::FAULT as u8;
        assert!(
            decode(&bytes).is_none(),
            "an exit-sized record is too short for a fault"
        );
    }
}
