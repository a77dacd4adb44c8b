//! Fault latency per handler (or per kind where there is no handler): the list on
//! the left, the histogram of the highlighted one on the right.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};
use rmaptrace_common::latency_bucket_floor;

use super::{count, header_style, ns, num, selected_style};
use crate::tui::app::App;

/// Octaves (four histogram buckets each) from the lowest to the highest one used.
pub fn octaves(hist: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = hist
        .chunks(4)
        .enumerate()
        .map(|(i, c)| (latency_bucket_floor(i * 4), c.iter().sum()))
        .collect();
    let first = out.iter().position(|o| o.1 > 0);
    let last = out.iter().rposition(|o| o.1 > 0);
    match (first, last) {
        (Some(a), Some(b)) => out.drain(a..=b).collect(),
        _ => {
            out.clear();
            out
        }
    }
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let groups = app.latency_groups();
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let header = Row::new([
        Cell::from("HANDLER / KIND"),
        num("TIMED".into()),
        num("P50".into()),
        num("P99".into()),
        num("MAX".into()),
    ])
    .style(header_style());
    let body: Vec<Row> = groups
        .iter()
        .map(|g| {
            Row::new([
                Cell::from(g.name.clone()),
                num(count(g.totals.timed as f64)),
                num(ns(g.totals.percentile(0.5))),
                num(ns(g.totals.percentile(0.99))),
                num(ns(Some(g.totals.latency_max_ns).filter(|&m| m > 0))),
            ])
        })
        .collect();
    let n = body.len();
    let table = Table::new(
        body,
        [
            Constraint::Min(16),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(header)
    .row_highlight_style(selected_style())
    .block(Block::default().borders(Borders::TOP).title(format!(
        " fault latency of {}{} ",
        app.scope_name(),
        sampling(app)
    )));
    let mut state = TableState::default();
    let sel = app.lat_sel.min(n.saturating_sub(1));
    if n > 0 {
        state.select(Some(sel));
    }
    f.render_stateful_widget(table, left, &mut state);

    let block = Block::default().borders(Borders::TOP | Borders::LEFT);
    let Some(g) = groups.get(sel) else {
        f.render_widget(Paragraph::new(" no timed faults yet").block(block), right);
        return;
    };
    let bins = octaves(&g.totals.hist.to_dense());
    let peak = bins.iter().map(|b| b.1).max().unwrap_or(1).max(1);
    let bar_width = right.width.saturating_sub(20) as u64;
    let lines: Vec<Line> = bins
        .iter()
        .map(|&(floor, n)| {
            let len = (n * bar_width).div_ceil(peak) as usize;
            Line::from(vec![
                Span::raw(format!("{:>8} ", format!("≥{}", ns(Some(floor))))),
                Span::styled("■".repeat(len), Style::default().fg(Color::Cyan)),
                Span::raw(format!(" {}", count(n as f64))),
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(block.title(format!(" {} ", g.name))),
        right,
    );
}

/// What the timed faults are: all of them, or a sample of the minor ones.
fn sampling(app: &App) -> String {
    match app.data.as_ref().map(|d| d.summary.latency_sample_period) {
        Some(n) if n > 1 => format!(" (sampled: 1 in {n} minor)"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmaptrace_common::{latency_bucket, LAT_BUCKETS};

    #[test]
    fn octaves_span_the_used_range_only() {
        let mut h = vec![0u64; LAT_BUCKETS];
        h[latency_bucket(2000)] += 5;
        h[latency_bucket(9000)] += 1;
        let o = octaves(&h);
        assert_eq!(o.first(), Some(&(1024, 5)));
        assert_eq!(o.last(), Some(&(8192, 1)));
        assert_eq!(o.len(), 4);
        assert!(octaves(&vec![0; LAT_BUCKETS]).is_empty());
    }
}
