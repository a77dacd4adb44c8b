//! The kernel path tree with live counts.
use ratatui::{
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Row, Table, TableState},
    Frame,
};

use super::{count, header_style, num, selected_style};
use crate::tui::{app::App, tree};

/// Where the road forks, and where it ends in somebody's code.
fn style_of(name: &str, leaf: bool) -> Style {
    match name {
        "do_anonymous_page" | "do_wp_page" | "do_swap_page" => Style::default().fg(Color::Green),
        "do_fault" | "__do_fault" => Style::default().fg(Color::Cyan),
        _ if leaf && name != "do_anonymous_page" => Style::default()
            .fg(Color::Magenta)
            .add_modifier(Modifier::BOLD),
        _ => Style::default(),
    }
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let root = app.path_tree();
    let lines = tree::lines(&root);
    let header = Row::new([Cell::from("PATH"), num("FAULTS".into()), num("/S".into())])
        .style(header_style());
    let body: Vec<Row> = lines
        .iter()
        .map(|(prefix, n)| {
            let leaf = n.children.is_empty();
            Row::new([
                Cell::from(Line::from(vec![
                    Span::styled(prefix.clone(), Style::default().fg(Color::DarkGray)),
                    Span::styled(n.name.clone(), style_of(&n.name, leaf)),
                ])),
                num(count(n.count as f64)),
                num(count(n.rate)),
            ])
        })
        .collect();
    let n = body.len();
    let table = Table::new(
        body,
        [
            Constraint::Min(30),
            Constraint::Length(9),
            Constraint::Length(8),
        ],
    )
    .header(header)
    .row_highlight_style(selected_style())
    .block(Block::default().borders(Borders::TOP).title(format!(
        " kernel paths of {} (paths {}) ",
        app.scope_name(),
        app.data
            .as_ref()
            .map(|d| d.summary.paths_source)
            .unwrap_or("derived")
    )));
    let mut state = TableState::default();
    if n > 0 {
        state.select(Some(app.path_scroll.min(n - 1)));
    }
    f.render_stateful_widget(table, area, &mut state);
}
