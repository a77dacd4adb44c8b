//! The status line (what this backend sees and misses) and the key hints.
use ratatui::{
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
    Frame,
};

use crate::tui::app::App;

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = Vec::new();
    if app.paused {
        spans.push(Span::styled(
            " PAUSED ",
            Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    let text = match &app.data {
        None => " attaching…".to_string(),
        Some(d) => {
            let s = &d.summary;
            let unseen = s.totals.unseen;
            let c = &s.counters;
            let mut parts = vec![
                format!(" backend {}, paths {}", s.backend, s.paths_source),
                format!("{:.1}s", s.duration_ns as f64 / 1e9),
                format!("lost {}", s.events_lost),
                format!("unseen {unseen}"),
            ];
            for (name, v) in [
                ("no-entry", c.completions_without_entry),
                ("no-completion", c.entries_without_completion),
            ] {
                if v > 0 {
                    parts.push(format!("{name} {v}"));
                }
            }
            if !s.tables_full.is_empty() {
                let full: Vec<String> = s
                    .tables_full
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect();
                parts.push(format!("TABLE FULL: {}", full.join(", ")));
            }
            parts.push(format!("{} limits: see ?", s.limits.len()));
            parts.join(" │ ")
        }
    };
    spans.push(Span::raw(text));
    f.render_widget(
        Paragraph::new(Line::from(spans)).style(Style::default().bg(Color::DarkGray)),
        area,
    );
}

pub fn draw_keys(f: &mut Frame, app: &App, area: Rect) {
    let line = if app.editing_filter {
        Line::from(vec![
            Span::styled(" filter: ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{}▏", app.filter)),
            Span::styled(
                "  Enter keeps it, Esc clears it",
                Style::default().fg(Color::DarkGray),
            ),
        ])
    } else {
        let mut spans = Vec::new();
        for (k, what) in [
            ("q", "quit"),
            ("Tab", "screen"),
            ("↑↓", "move"),
            ("Enter", "open"),
            ("Esc", "back"),
            ("s", "sort"),
            ("/", "filter"),
            ("p", "pause"),
            ("?", "help"),
        ] {
            spans.push(Span::styled(
                format!(" {k}"),
                Style::default().add_modifier(Modifier::BOLD),
            ));
            spans.push(Span::raw(format!(" {what} ")));
        }
        if !app.filter.is_empty() {
            spans.push(Span::styled(
                format!(" filter \"{}\"", app.filter),
                Style::default().fg(Color::Yellow),
            ));
        }
        Line::from(spans)
    };
    f.render_widget(Paragraph::new(line), area);
}
