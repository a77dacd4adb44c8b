//! Which capabilities rmaptrace holds, from /proc/self/status. Root is not
//! required: loading the programs needs CAP_BPF and attaching them to
//! tracepoints CAP_PERFMON (Linux 5.8+; CAP_SYS_ADMIN counts as both), and
//! since 5.11 the kernel charges BPF memory to the memory cgroup, so no
//! RLIMIT_MEMLOCK raise (CAP_SYS_RESOURCE) is needed on any supported kernel.
//! CAP_SYSLOG only lets kallsyms show addresses, to name fault handlers.

/// Capability numbers (include/uapi/linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYSLOG: u32 = 34;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective set as a bit mask (0 if unreadable).
pub fn effective() -> u64 {
    std::fs::read("/proc/self/status")
        .ok()
        .and_then(|b| parse_effective(&String::from_utf8_lossy(&b)))
        .unwrap_or(0)
}

pub fn parse_effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

pub fn has(set: u64, cap: u32) -> bool {
    set & (1 << cap) != 0
}

/// The capabilities tracing needs that `set` lacks, by name.
pub fn missing_for_tracing(set: u64) -> Vec<&'static str> {
    if has(set, CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(set, cap))
        .map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let root = parse_effective("Name:\tx\nCapEff:\t000001fffeffffff\n").unwrap();
        assert!(missing_for_tracing(root).is_empty());
        assert_eq!(missing_for_tracing(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_for_tracing(1 << CAP_BPF), ["CAP_PERFMON"]);
        assert!(missing_for_tracing(1 << CAP_BPF | 1 << CAP_PERFMON).is_empty());
        assert!(missing_for_tracing(1 << CAP_SYS_ADMIN).is_empty());
        assert!(has(root, CAP_SYSLOG));
        assert_eq!(parse_effective("no caps here"), None);
    }
}
