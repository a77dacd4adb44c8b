//! One mapping's story, top to bottom: the call that made it, what set it up
//! and with which flags, then its faults by kernel path and handler, with
//! latency. Opened with Enter on a row of the Mappings screen.
use ratatui::{
    layout::Rect,
    style::{Modifier, Style},
    text::{Line, Span},
    Frame,
};

use super::{count, ns};
use crate::{model::summary::VmaSummary, tui::app::App};

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let width = area.width.saturating_sub(4).min(110);
    let lines = match app.story_vma() {
        Some(v) => story(v),
        None => vec![Line::raw(
            " This mapping is no longer listed (ended and written to --json, or quieter than the rows kept).",
        )],
    };
    super::popup(f, area, width, lines, 2, " mapping: Esc or Enter closes ");
}

fn step<'a>(what: &'a str, text: String) -> Line<'a> {
    Line::from(vec![
        Span::styled(
            format!(" {what:<14}"),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(text),
    ])
}

// Names on the screen were escaped once, for the whole summary
// (Summary::escape_for_terminal).
fn function(name: Option<&str>, module: Option<&str>) -> Option<String> {
    let name = name?;
    Some(match module {
        Some(m) => format!("{name} [{m}]"),
        None => name.to_string(),
    })
}

fn story(v: &VmaSummary) -> Vec<Line<'static>> {
    let file = v
        .file
        .as_deref()
        .map(|f| format!("  {f}"))
        .unwrap_or_default();
    let mut lines = vec![step(
        "mapping",
        format!("{}-{} {} {}{file}", v.start, v.end, v.prot, v.kind),
    )];
    lines.push(step(
        "created by",
        match &v.origin {
            Some(o) => o.clone(),
            None => "not seen (made before the trace, by execve, a split, brk or the stack)".into(),
        },
    ));
    let setup = v.setup.as_ref();
    lines.push(step(
        "set up by",
        match setup.and_then(|s| function(s.by.as_deref(), s.by_module.as_deref())) {
            Some(by) => by,
            None if setup.is_some() => {
                "nothing: no file, no f_op->mmap (the first write fault makes its anon_vma)".into()
            }
            None => "unknown: no VMA was found for these faults".into(),
        },
    ));
    if let Some(s) = setup {
        lines.push(step("flags", s.vm_flags.join(" ")));
        let prefilled = s
            .vm_flags
            .iter()
            .any(|f| matches!(f.as_ref(), "VM_PFNMAP" | "VM_MIXEDMAP"));
        let counted: Vec<String> = s
            .prefilled
            .iter()
            .flatten()
            .filter(|(_, n)| **n > 0)
            .map(|(f, n)| format!("{n} by {f}"))
            .collect();
        if !counted.is_empty() {
            lines.push(step(
                "pages",
                format!("installed at mmap: {}", counted.join(", ")),
            ));
        } else if prefilled {
            lines.push(step(
                "pages",
                "installed at mmap (VM_PFNMAP: remap_pfn_range, vmf_insert_pfn; VM_MIXEDMAP: vm_insert_page(s), vmf_insert_mixed)"
                    .into(),
            ));
        }
    }
    if let Some(s) = setup {
        lines.push(step(
            "anon_vma",
            match &s.anon_vma {
                Some(a) => anon_vma_story(a),
                None => "none that its faults found (shared or never written)".into(),
            },
        ));
    }
    lines.push(step(
        "faults",
        format!(
            "{} ({} major){}",
            v.faults,
            v.major,
            v.first_seen_ns
                .map(|t| format!(", first seen at {t} ns"))
                .unwrap_or_default()
        ),
    ));
    let handler = function(v.handler.as_deref(), v.module.as_deref());
    for (path, n) in v.paths.iter() {
        // do_fault's three ways call vm_ops->fault through __do_fault.
        let calls_handler = matches!(*path, "do_read_fault" | "do_cow_fault" | "do_shared_fault");
        let via = match (&handler, calls_handler) {
            (Some(h), true) => format!(" → __do_fault → {h}"),
            _ => String::new(),
        };
        lines.push(step("", format!("{n:>8}  {path}{via}")));
    }
    if v.latency_ns.samples > 0 {
        lines.push(step(
            "latency",
            format!(
                "p50 {} p99 {} max {} ({} timed)",
                ns(v.latency_ns.p50),
                ns(v.latency_ns.p99),
                ns(v.latency_ns.max),
                count(v.latency_ns.samples as f64)
            ),
        ));
    }
    if let Some(h) = &v.handler_time {
        lines.push(step(
            "in handler",
            format!("{} calls, {} on average", h.calls, ns(Some(h.mean_ns))),
        ));
    }
    for (i, site) in v.stacks.iter().take(CALL_SITES).enumerate() {
        lines.push(step(
            if i == 0 { "called from" } else { "" },
            format!("{:>8}  {}", site.count, call_chain(site)),
        ));
    }
    if v.stacks.len() > CALL_SITES {
        let rest: u64 = v.stacks[CALL_SITES..].iter().map(|s| s.count).sum();
        lines.push(step(
            "",
            format!(
                "{rest:>8}  from {} other call sites (all in --json, --folded)",
                v.stacks.len() - CALL_SITES
            ),
        ));
    }
    lines.push(step(
        "unmapped",
        match v.unmapped_ns {
            Some(t) => format!("at {t} ns"),
            None => "no: still mapped".into(),
        },
    ));
    lines
}

/// Call sites listed per mapping; the rest are summed in one line.
const CALL_SITES: usize = 5;
/// Frames of a call site shown, the leaf first.
const CHAIN_FRAMES: usize = 4;

/// `leaf ← caller ← ...` and the kernel path, as much as one line holds.
fn call_chain(site: &crate::model::stacks::CallSite) -> String {
    let mut chain: Vec<&str> = site
        .frames
        .iter()
        .take(CHAIN_FRAMES)
        .map(String::as_str)
        .collect();
    if site.frames.len() > CHAIN_FRAMES || site.truncated {
        chain.push("…");
    }
    format!("{}  ({})", chain.join(" ← "), site.path)
}

/// What made the anon_vma, when, and after how many of the mapping's faults.
fn anon_vma_story(a: &crate::model::summary::AnonVma) -> String {
    let when = a.ts_ns.map(|t| format!(" at {t} ns")).unwrap_or_default();
    let after = format!("after {} of its faults", a.faults_before);
    match a.by {
        "fault" => format!("made by a fault (__anon_vma_prepare){when}, {after}"),
        "fork" => format!("made at fork (anon_vma_fork){when}, chained to the parent's; {after}"),
        "other" => format!("made outside any fault (__anon_vma_prepare){when}, {after}"),
        _ => format!(
            "found by a fault's completion{when}, {after} (what made it is not probed here)"
        ),
    }
}
