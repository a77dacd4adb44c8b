//! Processes, busiest first: how fast each faults, and what kind of memory it is
//! faulting on.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{count, header_style, kind_bar, legend, num, selected_style, visible};
use crate::tui::app::App;

const BAR: usize = 20;
const SPARK: usize = 20;

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let notes = app.data.as_ref().map(|d| d.notes.as_slice()).unwrap_or(&[]);
    let notes_height = if notes.is_empty() {
        0
    } else {
        (notes.len() as u16 + 2).min(area.height / 2)
    };
    let [table_area, notes_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(notes_height)]).areas(area);

    let rows = app.processes();
    let header = Row::new([
        num("PID".into()),
        Cell::from("COMM"),
        num("FAULTS/S".into()),
        num("TOTAL".into()),
        num("MAJOR".into()),
        Cell::from("KINDS"),
        Cell::from("LAST 60s"),
    ])
    .style(header_style());
    let selected = app.selected_index(&rows);
    let window = visible(rows.len(), selected, table_area.height.saturating_sub(1));
    let body: Vec<Row> = rows[window.clone()]
        .iter()
        .map(|p| {
            let by_kind: Vec<(&str, u64)> = p.by_kind.iter().map(|(k, n)| (*k, *n)).collect();
            // A process that exited before its name was read has none.
            let comm = if p.comm.is_empty() { "?" } else { &p.comm };
            let name = match app.label(p.pid) {
                Some(l) => format!("{comm} [{l}]"),
                None => comm.to_string(),
            };
            let style = if p.exited {
                Style::default().fg(Color::DarkGray)
            } else {
                Style::default()
            };
            Row::new([
                num(p.pid.to_string()),
                Cell::from(name),
                num(count(app.history.rate(p.pid))),
                num(count(p.faults.total as f64)),
                num(count(p.faults.major as f64)),
                Cell::from(kind_bar(&by_kind, BAR)),
                Cell::from(Span::styled(
                    app.history.sparkline(p.pid, SPARK),
                    Style::default().fg(Color::Yellow),
                )),
            ])
            .style(style)
        })
        .collect();
    let empty = body.is_empty();
    let table = Table::new(
        body,
        [
            Constraint::Length(7),
            Constraint::Min(12),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(BAR as u16),
            Constraint::Length(SPARK as u16),
        ],
    )
    .header(header)
    .row_highlight_style(selected_style())
    .block(
        Block::default()
            .borders(Borders::TOP)
            .title(format!(
                " {} processes, sorted by {} ",
                rows.len(),
                app.proc_sort.name()
            ))
            .title_bottom(legend()),
    );
    let mut state = TableState::default();
    if !empty {
        state.select(Some(selected - window.start));
    }
    f.render_stateful_widget(table, table_area, &mut state);
    if empty {
        let msg = if app.data.is_none() {
            "attaching…"
        } else {
            "no faults yet"
        };
        let inner = Rect {
            y: table_area.y + 2,
            height: table_area.height.saturating_sub(2),
            ..table_area
        };
        f.render_widget(Paragraph::new(format!("  {msg}")), inner);
    }

    if notes_height > 0 {
        let lines: Vec<Line> = notes
            .iter()
            .map(|n| {
                let style = if n.ok {
                    Style::default()
                } else {
                    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
                };
                Line::from(Span::styled(format!(" {}", n.text), style))
            })
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(" notes ")),
            notes_area,
        );
    }
}
