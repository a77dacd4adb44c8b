//! Decodes ring buffer records. Records come from the kernel but are still checked
//! for size before they are read: a short record is an error, never a panic.
use rmaptrace_common::{event_kind, EventHeader, FaultVmaEvent, MmapExitEvent};

use crate::model::event::Event;

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the types are repr(C) plain data valid for any bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// An mmap record, sent with only the path components it filled.
fn read_mmap(bytes: &[u8]) -> Option<MmapExitEvent> {
    if bytes.len() < MmapExitEvent::sent_len(0) {
        return None;
    }
    let mut whole = [0u8; std::mem::size_of::<MmapExitEvent>()];
    let n = bytes.len().min(whole.len());
    whole[..n].copy_from_slice(&bytes[..n]);
    let ev: MmapExitEvent = read(&whole)?;
    (bytes.len() >= MmapExitEvent::sent_len(ev.depth as usize)).then_some(ev)
}

pub fn decode(bytes: &[u8]) -> Option<Event> {
    let header: EventHeader = read(bytes)?;
    match header.kind {
        event_kind::FAULT => read(bytes).map(|f| Event::Fault(f, None)),
        event_kind::FAULT_VMA => {
            read::<FaultVmaEvent>(bytes).map(|e| Event::Fault(e.fault, Some(Box::new(e.vma))))
        }
        event_kind::FAULT_OUTCOME => read(bytes).map(Event::FaultOutcome),
        event_kind::MMAP_EXIT | event_kind::KERNEL_MMAP => read_mmap(bytes).map(Event::MmapExit),
        event_kind::MMAP_ENTER
        | event_kind::MUNMAP
        | event_kind::MREMAP_ENTER
        | event_kind::MREMAP_EXIT
        | event_kind::MUNMAP_EXIT => read(bytes).map(Event::Syscall),
        event_kind::MMAP_SETUP => read(bytes).map(Event::MmapSetup),
        event_kind::EXIT => read(bytes).map(Event::Exit),
        event_kind::EXEC | event_kind::FORK => read(bytes).map(Event::Task),
        event_kind::UNRESOLVED_FAULT => read(bytes).map(Event::Unresolved),
        _ => None,
    }
}

/// Ring buffer records kept to be decoded later, as the bytes they came in: a
/// process mapping fast sends tens of thousands during one table read, and a
/// decoded mmap record is four times its record (the path at full size).
#[derive(Default)]
pub struct Kept(Vec<u8>);

impl Kept {
    pub fn push(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).expect("a ring buffer record is < 4 GiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(record);
    }

    /// The records, in the order kept.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest = self.0.as_slice();
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let (record, tail) = tail.split_at(u32::from_ne_bytes(*len) as usize);
            rest = tail;
            Some(record)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmaptrace_common::{ExitEvent, FaultEvent};

    #[test]
    fn kept_records_come_back_in_order() {
        let mut k = Kept::default();
        k.push(&[1, 2, 3]);
        k.push(&[]);
        k.push(&[4]);
        let back: Vec<&[u8]> = k.iter().collect();
        assert_eq!(back, [&[1u8, 2, 3][..], &[], &[4]]);
    }

    #[test]
    fn short_or_unknown_records_are_rejected() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[1, 0, 0, 0]).is_none());
        let mut bytes = vec![0u8; std::mem::size_of::<ExitEvent>()];
        bytes[0] = 99;
        assert!(decode(&bytes).is_none());
        bytes[0] = event_kind::EXIT as u8;
        assert!(matches!(decode(&bytes), Some(Event::Exit(_))));
        let mut fault = vec![0u8; std::mem::size_of::<FaultEvent>()];
        fault[0] = event_kind::FAULT as u8;
        assert!(matches!(decode(&fault), Some(Event::Fault(_, None))));
        fault[0] = event_kind::FAULT_VMA as u8;
        assert!(
            decode(&fault).is_none(),
            "a fault record without the VMA its kind says it carries"
        );
        fault.resize(std::mem::size_of::<FaultVmaEvent>(), 0);
        assert!(matches!(decode(&fault), Some(Event::Fault(_, Some(_)))));
    }

    #[test]
    fn mmap_records_carry_only_their_filled_path() {
        let mut ev: MmapExitEvent =
            read(&[0u8; std::mem::size_of::<MmapExitEvent>()]).expect("a whole record");
        ev.depth = 2;
        ev.header.kind = event_kind::MMAP_EXIT;
        ev.path[1][0] = b'x';
        // SAFETY: a repr(C) plain-data record, viewed as its bytes.
        let whole = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const MmapExitEvent).cast::<u8>(),
                std::mem::size_of::<MmapExitEvent>(),
            )
        };
        let sent = &whole[..MmapExitEvent::sent_len(2)];
        match decode(sent) {
            Some(Event::MmapExit(m)) => assert_eq!((m.depth, m.path[1][0]), (2, b'x')),
            other => panic!("{other:?}"),
        }
        assert!(
            decode(&sent[..MmapExitEvent::sent_len(1)]).is_none(),
            "shorter than its own depth says"
        );
    }
}
