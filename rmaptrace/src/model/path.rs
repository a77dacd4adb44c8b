//! The mm/ function that served a fault. Kernel-function backends observe it; the
//! tracepoint backend derives it here from the VMA kind, its flags and the x86
//! error code, following handle_pte_fault's own decisions.
use rmaptrace_common::{access, path_id};

use super::kind::{Kind, VM_SHARED};

pub fn observed_name(id: u8) -> Option<&'static str> {
    Some(match id {
        path_id::DO_ANONYMOUS_PAGE => "do_anonymous_page",
        path_id::DO_WP_PAGE => "do_wp_page",
        path_id::DO_SWAP_PAGE => "do_swap_page",
        path_id::DO_READ_FAULT => "do_read_fault",
        path_id::DO_COW_FAULT => "do_cow_fault",
        path_id::DO_SHARED_FAULT => "do_shared_fault",
        path_id::DO_HUGE_PMD_ANONYMOUS_PAGE => "do_huge_pmd_anonymous_page",
        path_id::HUGETLB_FAULT => "hugetlb_fault",
        _ => return None,
    })
}

/// Derives the path of a fault that completed. `swap_in_use`: with swap, a minor
/// not-present fault on anonymous memory may be a swap-cache hit in
/// `do_swap_page` as well as a first touch, and nothing here tells them apart.
pub fn derive(kind: Kind, vm_flags: u64, acc: u8, major: bool, swap_in_use: bool) -> &'static str {
    if kind == Kind::Hugetlb {
        return "hugetlb_fault";
    }
    if acc & access::NO_ENTRY != 0 || kind == Kind::Unknown {
        return "unknown";
    }
    let present = acc & access::PRESENT != 0;
    let write = acc & access::WRITE != 0;
    match (kind, present, write) {
        // A write to a present, read-only PTE: COW of the zero page or of a page
        // shared after fork, or ->page_mkwrite on a shared mapping.
        (_, true, true) => "do_wp_page",
        // Present and no write: spurious or access-flag faults, resolved in
        // handle_pte_fault itself.
        (_, true, false) => "handle_pte_fault",
        // Not present, anonymous: a major one had to read the page back from swap.
        (Kind::Anon, false, _) if major => "do_swap_page",
        (Kind::Anon, false, _) if swap_in_use => "do_anonymous_page|do_swap_page",
        (Kind::Anon, false, _) => "do_anonymous_page",
        (_, false, false) => "do_read_fault",
        (_, false, true) if vm_flags & VM_SHARED != 0 => "do_shared_fault",
        (_, false, true) => "do_cow_fault",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use access::*;

    #[test]
    fn anonymous_first_touch_then_cow() {
        assert_eq!(
            derive(Kind::Anon, 0, WRITE, false, false),
            "do_anonymous_page"
        );
        assert_eq!(derive(Kind::Anon, 0, 0, false, false), "do_anonymous_page");
        assert_eq!(
            derive(Kind::Anon, 0, WRITE | PRESENT, false, false),
            "do_wp_page"
        );
        assert_eq!(derive(Kind::Anon, 0, 0, true, false), "do_swap_page");
    }

    #[test]
    fn file_backed_paths_follow_do_fault() {
        assert_eq!(
            derive(Kind::Shmem, VM_SHARED, WRITE, false, false),
            "do_shared_fault"
        );
        assert_eq!(derive(Kind::File, 0, WRITE, false, false), "do_cow_fault");
        assert_eq!(derive(Kind::File, 0, 0, true, false), "do_read_fault");
        assert_eq!(
            derive(Kind::Driver, VM_SHARED, 0, false, false),
            "do_read_fault"
        );
        assert_eq!(
            derive(Kind::File, VM_SHARED, WRITE | PRESENT, false, false),
            "do_wp_page"
        );
        assert_eq!(
            derive(Kind::Hugetlb, 0, NO_ENTRY, false, false),
            "hugetlb_fault"
        );
        assert_eq!(derive(Kind::File, 0, NO_ENTRY, false, false), "unknown");
        assert_eq!(derive(Kind::Unknown, 0, WRITE, false, false), "unknown");
    }

    #[test]
    fn with_swap_a_minor_anonymous_fault_is_ambiguous() {
        assert_eq!(
            derive(Kind::Anon, 0, 0, false, true),
            "do_anonymous_page|do_swap_page"
        );
        assert_eq!(derive(Kind::Anon, 0, 0, true, true), "do_swap_page");
        assert_eq!(
            derive(Kind::Anon, 0, WRITE | PRESENT, false, true),
            "do_wp_page"
        );
    }

    #[test]
    fn observed_ids_have_kernel_names() {
        assert_eq!(
            observed_name(path_id::DO_ANONYMOUS_PAGE),
            Some("do_anonymous_page")
        );
        assert_eq!(observed_name(path_id::DERIVED), None);
    }
}
