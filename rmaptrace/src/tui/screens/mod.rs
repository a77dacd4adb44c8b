//! Drawing: one module per screen, plus the frame they share (tabs on top, status
//! and keys at the bottom). Everything reads the `App`, nothing changes it.
mod help;
mod latency;
mod mappings;
mod paths;
mod processes;
mod status;
mod story;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Tabs, Wrap},
    Frame,
};

use super::app::{App, Screen};

/// Below this the tables cannot show a useful row.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 12;

/// The mapping kinds in bar order, with their colours.
pub const KINDS: [(&str, Color); 7] = [
    ("anon", Color::Green),
    ("shmem", Color::Cyan),
    ("file", Color::Blue),
    ("driver", Color::Magenta),
    ("special", Color::Yellow),
    ("hugetlb", Color::LightRed),
    ("unknown", Color::DarkGray),
];

pub fn kind_color(kind: &str) -> Color {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, c)| *c)
        .unwrap_or(Color::Gray)
}

pub fn header_style() -> Style {
    Style::default()
        .add_modifier(Modifier::BOLD)
        .fg(Color::Black)
        .bg(Color::Gray)
}

pub fn selected_style() -> Style {
    Style::default()
        .add_modifier(Modifier::REVERSED)
        .add_modifier(Modifier::BOLD)
}

/// 1234 → "1234", 12345 → "12.3k": counts that fit a narrow column.
pub fn count(v: f64) -> String {
    if v >= 9_999_500.0 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 99_999.5 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 9_999.5 {
        format!("{:.1}k", v / 1e3)
    } else if v > 0.0 && v < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A number, right-aligned in its cell.
pub fn num(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).right_aligned())
}

/// Rows to build for a table `height` lines high (header and borders included)
/// with row `selected` in view: only those are built, however long the list.
pub fn visible(len: usize, selected: usize, height: u16) -> std::ops::Range<usize> {
    let shown = (height as usize).saturating_sub(3).max(1);
    let start = (selected + 1).saturating_sub(shown);
    start..(start + shown).min(len)
}

pub fn ns(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1_000_000_000 => format!("{:.1}s", v as f64 / 1e9),
        Some(v) if v >= 1_000_000 => format!("{:.1}ms", v as f64 / 1e6),
        Some(v) if v >= 1_000 => format!("{:.1}us", v as f64 / 1e3),
        Some(v) => format!("{v}ns"),
    }
}

/// A bar `width` cells wide split between kinds by count (largest remainder, so
/// the cells always add up and a kind with any faults gets at least one cell
/// when there is room).
pub fn kind_cells(by_kind: &[(&str, u64)], width: usize) -> Vec<(&'static str, usize)> {
    let total: u64 = by_kind.iter().map(|(_, n)| n).sum();
    if total == 0 || width == 0 {
        return Vec::new();
    }
    let present: Vec<(&'static str, u64)> = KINDS
        .iter()
        .filter_map(|(k, _)| {
            by_kind
                .iter()
                .find(|(name, _)| name == k)
                .filter(|(_, n)| *n > 0)
                .map(|(_, n)| (*k, *n))
        })
        .collect();
    let mut cells: Vec<(&'static str, usize, f64)> = present
        .iter()
        .map(|&(k, n)| {
            let exact = n as f64 * width as f64 / total as f64;
            (k, exact.floor() as usize, exact.fract())
        })
        .collect();
    let used: usize = cells.iter().map(|c| c.1).sum();
    // Kinds rounded down to nothing get a cell first, then the largest remainders.
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by(|&a, &b| {
        (cells[a].1 > 0)
            .cmp(&(cells[b].1 > 0))
            .then(cells[b].2.total_cmp(&cells[a].2))
    });
    for &i in order.iter().take(width.saturating_sub(used)) {
        cells[i].1 += 1;
    }
    cells
        .into_iter()
        .filter(|c| c.1 > 0)
        .map(|(k, n, _)| (k, n))
        .collect()
}

pub fn kind_bar(by_kind: &[(&str, u64)], width: usize) -> Line<'static> {
    let cells = kind_cells(by_kind, width);
    let mut spans: Vec<Span> = cells
        .into_iter()
        .map(|(k, n)| Span::styled("█".repeat(n), Style::default().fg(kind_color(k))))
        .collect();
    if spans.is_empty() {
        spans.push(Span::raw(""));
    }
    Line::from(spans)
}

pub fn legend() -> Line<'static> {
    let mut spans = vec![Span::raw(" ")];
    for (k, c) in KINDS {
        spans.push(Span::styled("█", Style::default().fg(c)));
        spans.push(Span::raw(format!("{k} ")));
    }
    Line::from(spans)
}

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "rmaptrace: terminal too small ({}x{}), needs {MIN_WIDTH}x{MIN_HEIGHT}. q quits.",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let [top, body, status_area, keys_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_tabs(f, app, top);
    match app.screen {
        Screen::Processes => processes::draw(f, app, body),
        Screen::Mappings => mappings::draw(f, app, body),
        Screen::Paths => paths::draw(f, app, body),
        Screen::Latency => latency::draw(f, app, body),
    }
    status::draw(f, app, status_area);
    status::draw_keys(f, app, keys_area);
    if app.story.is_some() && app.screen == Screen::Mappings {
        story::draw(f, app, body);
    }
    if app.help {
        help::draw(f, app, body);
    }
}

/// A box of `lines` over the top of `area`, `width` wide, centred, as high as
/// its lines plus `spare` (borders, and room for lines that wrap).
fn popup(f: &mut Frame, area: Rect, width: u16, lines: Vec<Line>, spare: u16, title: &str) {
    let rect = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y,
        width,
        height: (lines.len() as u16 + spare).min(area.height),
    };
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        rect,
    );
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let title = app
        .data
        .as_ref()
        .map(|d| d.title.clone())
        .unwrap_or_else(|| "rmaptrace".into());
    let [left, right] =
        Layout::horizontal([Constraint::Min(10), Constraint::Length(56)]).areas(area);
    f.render_widget(
        Paragraph::new(Line::from(vec![Span::styled(
            format!(" {title}"),
            Style::default().add_modifier(Modifier::BOLD),
        )])),
        left,
    );
    let tabs = Tabs::new(
        Screen::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} {}", i + 1, s.title())),
    )
    .select(Screen::ALL.iter().position(|&s| s == app.screen))
    .highlight_style(selected_style())
    .divider("│");
    f.render_widget(tabs, right);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::{app::App, fake};
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::{backend::TestBackend, Terminal};

    fn render(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        t.backend().to_string()
    }

    fn app_with(keys: &[KeyCode]) -> App {
        let mut a = App::new();
        a.on_update(fake::update());
        for &k in keys {
            a.on_key(KeyEvent::new(k, KeyModifiers::NONE));
        }
        a
    }

    #[test]
    fn processes_screen() {
        insta::assert_snapshot!(render(&app_with(&[]), 130, 16));
    }

    #[test]
    fn mappings_screen() {
        insta::assert_snapshot!(render(&app_with(&[KeyCode::Enter]), 150, 14));
    }

    #[test]
    fn a_mappings_story() {
        // Processes → Mappings, sorted by address, the second row (the KVM
        // vCPU's: a driver's mmap handler and fault handler).
        let keys = [
            KeyCode::Enter,
            KeyCode::Char('s'),
            KeyCode::Char('s'),
            KeyCode::Char('s'),
            KeyCode::Down,
            KeyCode::Enter,
        ];
        insta::assert_snapshot!(render(&app_with(&keys), 110, 18));
    }

    #[test]
    fn a_private_anonymous_mappings_story() {
        // Processes → Mappings, the busiest row: no setup, its anon_vma made
        // by its first write fault.
        let keys = [KeyCode::Enter, KeyCode::Enter];
        insta::assert_snapshot!(render(&app_with(&keys), 110, 18));
    }

    #[test]
    fn unmapped_mappings_are_dimmed() {
        let mut t = Terminal::new(TestBackend::new(150, 14)).unwrap();
        t.draw(|f| draw(f, &app_with(&[KeyCode::Enter]))).unwrap();
        let buf = t.backend().buffer();
        let row_of = |needle: &str| {
            (0..buf.area.height)
                .find(|&y| {
                    let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
                    line.contains(needle)
                })
                .unwrap_or_else(|| panic!("no row with {needle}"))
        };
        let dim = |y: u16| buf[(0, y)].modifier.contains(ratatui::style::Modifier::DIM);
        assert!(dim(row_of("0x7fd824441000")), "the unmapped shmem row");
        assert!(!dim(row_of("0x7f89b03b1000")), "a live row");
    }

    #[test]
    fn paths_screen_whole_system() {
        insta::assert_snapshot!(render(&app_with(&[KeyCode::Tab, KeyCode::Tab]), 100, 24));
    }

    #[test]
    fn latency_screen() {
        insta::assert_snapshot!(render(&app_with(&[KeyCode::Char('4')]), 120, 20));
    }

    #[test]
    fn help_over_a_paused_screen() {
        let app = app_with(&[KeyCode::Char('p'), KeyCode::Char('?')]);
        insta::assert_snapshot!(render(&app, 100, 30));
    }

    #[test]
    fn filter_being_typed() {
        let app = app_with(&[KeyCode::Char('/'), KeyCode::Char('m'), KeyCode::Char('y')]);
        insta::assert_snapshot!(render(&app, 100, 14));
    }

    #[test]
    fn too_small_terminal_gets_a_message() {
        insta::assert_snapshot!(render(&app_with(&[]), 30, 5));
    }

    #[test]
    fn no_data_yet_and_tiny_sizes_do_not_panic() {
        let empty = App::new();
        for screen in ["1", "2", "3", "4"] {
            let mut a = App::new();
            a.on_key(KeyEvent::new(
                KeyCode::Char(screen.chars().next().unwrap()),
                KeyModifiers::NONE,
            ));
            render(&a, 80, 20);
        }
        render(&empty, 80, 20);
        let full = app_with(&[KeyCode::Enter]);
        for (w, h) in [(1, 1), (0, 0), (59, 11), (60, 12), (61, 13), (200, 60)] {
            let _ = render(&full, w.max(1), h.max(1));
        }
    }

    #[test]
    fn bar_cells_add_up_and_keep_small_kinds() {
        let cells = kind_cells(&[("anon", 1000), ("driver", 3), ("shmem", 100)], 20);
        assert_eq!(cells.iter().map(|c| c.1).sum::<usize>(), 20);
        assert_eq!(cells, [("anon", 18), ("shmem", 1), ("driver", 1)]);
        assert!(kind_cells(&[], 10).is_empty());
        assert_eq!(kind_cells(&[("file", 5)], 3), [("file", 3)]);
    }

    #[test]
    fn only_the_rows_in_view_are_built() {
        assert_eq!(visible(1000, 0, 13), 0..10);
        assert_eq!(visible(1000, 25, 13), 16..26);
        assert_eq!(visible(5, 4, 13), 0..5);
        assert_eq!(visible(0, 0, 2), 0..0);
    }

    #[test]
    fn numbers_fit_their_columns() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(2.5), "2.5");
        assert_eq!(count(1234.0), "1234");
        assert_eq!(count(12345.0), "12.3k");
        assert_eq!(count(123456.0), "123k");
        assert_eq!(count(12_345_678.0), "12.3M");
        assert_eq!(ns(Some(2048)), "2.0us");
    }
}
