//! The help box: keys, screens, and the limits of this backend in full.
use ratatui::{
    layout::Rect,
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Wrap},
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
        "on Processes: open that process (Mappings, Paths, Latency)",
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
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y,
        width,
        height: (lines.len() as u16 + 4).min(area.height),
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" help: any key closes "),
        ),
        popup,
    );
}
