//! The help box: keys, screens, and the limits of this backend in full.
use ratatui::{
    layout::Rect,
    style::{Modifier, Style},
    text::{Line, Span},
    Frame,
};

use crate::tui::app::App;

const KEYS: &[(&str, &str)] = &[
    (
        "Tab / Shift-Tab, 1-4",
        "next / previous screen, or jump to one",
    ),
    ("↑ ↓  j k  PgUp PgDn", "move"),
    (
        "Enter",
        "open: a process (on Processes), a mapping's story (on Mappings)",
    ),
    (
        "Esc",
        "back to Processes; there: clear filter, then back to all",
    ),
    (
        "s",
        "sort: faults/s, total, major, pid | rate, newest, faults, address",
    ),
    ("/", "filter by name, pid, file, handler"),
    ("n", "demo: the next scenario's busiest mapping, its story"),
    ("p", "pause the display (tracing goes on)"),
    ("q  Ctrl-C", "quit"),
];

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let width = area.width.saturating_sub(4).min(90);
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<22}"), bold),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(" What this backend cannot see:", bold));
    if let Some(d) = &app.data {
        for l in &d.summary.limits {
            lines.push(Line::raw(format!("  - {l}")));
        }
    }
    lines.push(Line::raw(
        "  unseen = the kernel's own minflt+majflt minus the faults seen here.",
    ));
    // Room for the limits' lines to wrap.
    super::popup(f, area, width, lines, 4, " help: any key closes ");
}
