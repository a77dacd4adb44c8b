//! The mappings of one process, like /proc/PID/maps, with what serves their faults.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Span,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{count, header_style, kind_color, ns, num, selected_style, visible};
use crate::tui::{app::App, tree::handler_label};

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let [head, table_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(2)]).areas(area);
    let Some(p) = app.focus_pid().and_then(|pid| app.process(pid)) else {
        f.render_widget(
            Paragraph::new(" no process selected: pick one on Processes and press Enter"),
            head,
        );
        return;
    };
    let kernel = match (&p.kernel, p.unseen) {
        (Some(k), Some(u)) => format!(
            "; kernel minflt {} majflt {}, unseen {u}",
            k.minflt, k.majflt
        ),
        _ => String::new(),
    };
    let label = app
        .label(p.pid)
        .map(|l| format!(" [{l}]"))
        .unwrap_or_default();
    let exited = if p.exited { " (exited)" } else { "" };
    let cgroup = p
        .cgroup_below_root()
        .map(|c| format!(" in cgroup {c}"))
        .unwrap_or_default();
    // The screen holds a process's busiest mappings; the export has them all.
    let dropped = match p.vmas_dropped {
        0 => String::new(),
        n => format!("; {n} quieter mappings not shown (all in --json)"),
    };
    let dropped = match p.vmas_ended {
        0 => dropped,
        n => format!("{dropped}; {n} ended mappings counted, not shown (in --json)"),
    };
    f.render_widget(
        Paragraph::new(format!(
            " pid {} {}{label}{cgroup}{exited}: {} faults ({} major), {}/s{kernel}{dropped}",
            p.pid,
            p.comm,
            p.faults.total,
            p.faults.major,
            count(app.history.rate(p.pid)),
        )),
        head,
    );

    let rows = app.vmas();
    let header = Row::new([
        Cell::from("RANGE"),
        Cell::from("PROT"),
        Cell::from("KIND"),
        num("FAULTS".into()),
        num("/S".into()),
        num("MAJOR".into()),
        num("P50".into()),
        num("P99".into()),
        Cell::from("HANDLER"),
        Cell::from("FILE"),
    ])
    .style(header_style());
    let selected = app.vma_sel.min(rows.len().saturating_sub(1));
    let window = visible(rows.len(), selected, table_area.height);
    let body: Vec<Row> = rows[window.clone()]
        .iter()
        .map(|v| {
            let rate = app
                .history
                .vma_rate
                .get(&(p.pid, v.key))
                .copied()
                .unwrap_or(0.0);
            let file = match (&v.file, &v.device) {
                (Some(f), Some(d)) => format!("{f} ({d})"),
                (Some(f), None) => f.clone(),
                (None, Some(d)) => format!("char device {d}"),
                (None, None) => String::new(),
            };
            Row::new([
                Cell::from(format!("{}-{}", v.start, v.end)),
                Cell::from(v.prot.clone()),
                Cell::from(Span::styled(
                    v.kind,
                    Style::default().fg(kind_color(v.kind)),
                )),
                num(count(v.faults as f64)),
                num(count(rate)),
                num(count(v.major as f64)),
                num(ns(v.latency_ns.p50)),
                num(ns(v.latency_ns.p99)),
                Cell::from(handler_label(v).unwrap_or_else(|| "-".into())),
                Cell::from(file),
            ])
            // Unmapped (or split) mappings stay listed, dimmed, after the live ones.
            .style(if v.unmapped_ns.is_some() {
                Style::default().add_modifier(Modifier::DIM)
            } else {
                Style::default()
            })
        })
        .collect();
    let n = rows.len();
    let table = Table::new(
        body,
        [
            Constraint::Length(29),
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(24),
            Constraint::Min(10),
        ],
    )
    .header(header)
    .row_highlight_style(selected_style())
    .block(Block::default().borders(Borders::TOP).title(format!(
        " {n} mappings with faults, sorted by {} ",
        app.vma_sort.name()
    )));
    let mut state = TableState::default();
    if n > 0 {
        state.select(Some(selected - window.start));
    }
    f.render_stateful_widget(table, table_area, &mut state);
}
