//! The state of the live screen and what each key does to it. No terminal here:
//! keys and summaries come in as values, so every behaviour is unit-tested.
use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    history::History,
    tree::{self, Node},
    Update,
};
use crate::model::{
    snapshot::FaultTotals,
    summary::{ProcessSummary, VmaSummary},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Processes,
    Mappings,
    Paths,
    Latency,
}

impl Screen {
    pub const ALL: [Screen; 4] = [
        Screen::Processes,
        Screen::Mappings,
        Screen::Paths,
        Screen::Latency,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Processes => "Processes",
            Screen::Mappings => "Mappings",
            Screen::Paths => "Fault paths",
            Screen::Latency => "Latency",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&s| s == self).unwrap_or(0)
    }

    fn step(self, by: isize) -> Screen {
        let n = Self::ALL.len() as isize;
        Self::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcSort {
    Rate,
    Total,
    Major,
    Pid,
}

impl ProcSort {
    pub fn name(self) -> &'static str {
        match self {
            ProcSort::Rate => "faults/s",
            ProcSort::Total => "total",
            ProcSort::Major => "major",
            ProcSort::Pid => "pid",
        }
    }
    fn next(self) -> Self {
        match self {
            ProcSort::Rate => ProcSort::Total,
            ProcSort::Total => ProcSort::Major,
            ProcSort::Major => ProcSort::Pid,
            ProcSort::Pid => ProcSort::Rate,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaSort {
    Rate,
    Newest,
    Faults,
    Address,
}

impl VmaSort {
    pub fn name(self) -> &'static str {
        match self {
            VmaSort::Rate => "faults/s",
            VmaSort::Newest => "newest",
            VmaSort::Faults => "faults",
            VmaSort::Address => "address",
        }
    }
    fn next(self) -> Self {
        match self {
            VmaSort::Rate => VmaSort::Newest,
            VmaSort::Newest => VmaSort::Faults,
            VmaSort::Faults => VmaSort::Address,
            VmaSort::Address => VmaSort::Rate,
        }
    }
}

/// Latencies of one handler (or of one kind, for mappings without a handler).
pub struct LatencyGroup {
    pub name: String,
    pub totals: FaultTotals,
}

pub struct App {
    pub screen: Screen,
    pub data: Option<Update>,
    pub history: History,
    /// The highlighted process; followed by pid so re-sorting does not move it.
    pub selected_pid: Option<u32>,
    /// The process chosen with Enter: Mappings, Paths and Latency show it alone.
    pub focus: Option<u32>,
    pub proc_sort: ProcSort,
    pub vma_sort: VmaSort,
    pub vma_sel: usize,
    pub lat_sel: usize,
    pub path_scroll: usize,
    pub filter: String,
    pub editing_filter: bool,
    pub paused: bool,
    pub help: bool,
    /// The mapping whose story is open over the Mappings screen (its key).
    pub story: Option<u64>,
    pub quit: bool,
}

const PAGE: isize = 10;
/// How long an exited process stays listed after its last fault.
const EXITED_KEEP_NS: u64 = 15_000_000_000;

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    pub fn new() -> Self {
        Self {
            screen: Screen::Processes,
            data: None,
            history: History::default(),
            selected_pid: None,
            focus: None,
            proc_sort: ProcSort::Rate,
            vma_sort: VmaSort::Rate,
            vma_sel: 0,
            lat_sel: 0,
            path_scroll: 0,
            filter: String::new(),
            editing_filter: false,
            paused: false,
            help: false,
            story: None,
            quit: false,
        }
    }

    /// A new screen, paused or not.
    pub fn starting(paused: bool) -> Self {
        Self {
            paused,
            ..Self::new()
        }
    }

    pub fn on_update(&mut self, u: Update) {
        self.history.observe(&u.summary);
        self.data = Some(u);
    }

    fn matches(&self, fields: &[&str]) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let f = self.filter.to_lowercase();
        fields.iter().any(|s| s.to_lowercase().contains(&f))
    }

    pub fn label(&self, pid: u32) -> Option<&str> {
        self.data.as_ref()?.labels.get(&pid).map(String::as_str)
    }

    /// Processes as listed: filtered, sorted; exited ones stay a while after
    /// their last fault, so short-lived ones (the demo's) can be compared.
    pub fn processes(&self) -> Vec<&ProcessSummary> {
        let Some(d) = &self.data else {
            return Vec::new();
        };
        let h = &self.history;
        let mut rows: Vec<&ProcessSummary> = d
            .summary
            .processes
            .iter()
            .filter(|p| {
                !p.exited
                    || h.last_active.get(&p.pid).is_some_and(|t| {
                        h.now_ns.saturating_sub(*t) <= EXITED_KEEP_NS && p.faults.total > 0
                    })
            })
            .filter(|p| {
                self.matches(&[&p.comm, &p.pid.to_string(), self.label(p.pid).unwrap_or("")])
            })
            .collect();
        let recent = |p: &ProcessSummary| h.last_active.get(&p.pid).copied().unwrap_or(0);
        match self.proc_sort {
            // Ties (most rows are idle) go to whoever faulted last, then the biggest.
            ProcSort::Rate => rows.sort_by(|a, b| {
                h.rate(b.pid)
                    .total_cmp(&h.rate(a.pid))
                    .then(recent(b).cmp(&recent(a)))
                    .then(b.faults.total.cmp(&a.faults.total))
                    .then(a.pid.cmp(&b.pid))
            }),
            ProcSort::Total => {
                rows.sort_by(|a, b| b.faults.total.cmp(&a.faults.total).then(a.pid.cmp(&b.pid)))
            }
            ProcSort::Major => rows.sort_by(|a, b| {
                b.faults
                    .major
                    .cmp(&a.faults.major)
                    .then(b.faults.total.cmp(&a.faults.total))
                    .then(a.pid.cmp(&b.pid))
            }),
            ProcSort::Pid => rows.sort_by_key(|p| p.pid),
        }
        rows
    }

    /// The row index of the highlighted process (the first row when it is gone).
    pub fn selected_index(&self, rows: &[&ProcessSummary]) -> usize {
        self.selected_pid
            .and_then(|pid| rows.iter().position(|p| p.pid == pid))
            .unwrap_or(0)
    }

    /// The process Mappings shows: the chosen one, else the highlighted one.
    pub fn focus_pid(&self) -> Option<u32> {
        self.focus.or(self.selected_pid).or_else(|| {
            let rows = self.processes();
            rows.first().map(|p| p.pid)
        })
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessSummary> {
        self.data
            .as_ref()?
            .summary
            .processes
            .iter()
            .find(|p| p.pid == pid)
    }

    /// `rmaptrace demo`: the next scenario (by name, after the one in focus),
    /// its latest process's busiest mapping, with its story open. Nothing
    /// outside the demo (no labelled processes).
    fn next_demo_story(&mut self) {
        let Some(d) = &self.data else {
            return;
        };
        let mut latest: BTreeMap<&str, u32> = BTreeMap::new();
        for p in &d.summary.processes {
            if let Some(l) = d.labels.get(&p.pid) {
                let e = latest.entry(l.as_str()).or_insert(p.pid);
                *e = (*e).max(p.pid);
            }
        }
        let current = self.focus.and_then(|pid| self.label(pid));
        let next = latest
            .iter()
            .find(|(l, _)| current.is_none_or(|c| *l > &c))
            .or_else(|| latest.iter().next())
            .map(|(_, pid)| *pid);
        let Some(pid) = next else {
            return;
        };
        self.focus = Some(pid);
        self.selected_pid = Some(pid);
        self.screen = Screen::Mappings;
        self.vma_sort = VmaSort::Faults;
        self.vma_sel = 0;
        self.story = self.vmas().first().map(|v| v.key);
    }

    /// The mapping whose story is open, as the latest summary has it.
    pub fn story_vma(&self) -> Option<&VmaSummary> {
        let key = self.story?;
        let p = self.process(self.focus_pid()?)?;
        p.vmas.iter().find(|v| v.key == key)
    }

    pub fn vmas(&self) -> Vec<&VmaSummary> {
        let Some(p) = self.focus_pid().and_then(|pid| self.process(pid)) else {
            return Vec::new();
        };
        let h = &self.history;
        let mut rows: Vec<&VmaSummary> = p
            .vmas
            .iter()
            .filter(|v| {
                self.matches(&[
                    &v.start,
                    v.kind,
                    v.file.as_deref().unwrap_or(""),
                    v.handler.as_deref().unwrap_or(""),
                    v.module.as_deref().unwrap_or(""),
                ])
            })
            .collect();
        let rate = |v: &VmaSummary| h.vma_rate.get(&(p.pid, v.key)).copied().unwrap_or(0.0);
        let seen = |v: &VmaSummary| h.first_seen.get(&(p.pid, v.key)).copied().unwrap_or(0);
        match self.vma_sort {
            VmaSort::Rate => rows.sort_by(|a, b| {
                rate(b)
                    .total_cmp(&rate(a))
                    .then(b.faults.cmp(&a.faults))
                    .then(a.start_addr.cmp(&b.start_addr))
            }),
            VmaSort::Newest => {
                rows.sort_by(|a, b| seen(b).cmp(&seen(a)).then(b.start_addr.cmp(&a.start_addr)))
            }
            VmaSort::Faults => rows.sort_by(|a, b| {
                b.faults
                    .cmp(&a.faults)
                    .then(a.start_addr.cmp(&b.start_addr))
            }),
            VmaSort::Address => rows.sort_by_key(|v| v.start_addr),
        }
        // Mappings still there first, in the chosen order; ended ones after them.
        rows.sort_by_key(|v| v.unmapped_ns.is_some());
        rows
    }

    /// Mappings that Paths and Latency cover: the chosen process, or everything.
    pub fn scope_vmas(&self) -> Vec<(u32, &VmaSummary)> {
        let Some(d) = &self.data else {
            return Vec::new();
        };
        d.summary
            .processes
            .iter()
            .filter(|p| self.focus.is_none_or(|f| f == p.pid))
            .flat_map(|p| p.vmas.iter().map(move |v| (p.pid, v)))
            .collect()
    }

    pub fn scope_name(&self) -> String {
        match self.focus {
            Some(pid) => {
                let comm = self.process(pid).map(|p| p.comm.as_str()).unwrap_or("?");
                match self.label(pid) {
                    Some(l) => format!("pid {pid} {comm} [{l}]"),
                    None => format!("pid {pid} {comm}"),
                }
            }
            None => "all traced processes".into(),
        }
    }

    pub fn path_tree(&self) -> Node {
        tree::build(self.scope_vmas(), &self.history)
    }

    pub fn latency_groups(&self) -> Vec<LatencyGroup> {
        let mut groups: Vec<LatencyGroup> = Vec::new();
        for (_, v) in self.scope_vmas() {
            let name = match tree::handler_label(v) {
                Some(h) => format!("{h} ({})", v.kind),
                None => v.kind.to_string(),
            };
            let i = match groups.iter().position(|g| g.name == name) {
                Some(i) => i,
                None => {
                    groups.push(LatencyGroup {
                        name,
                        totals: FaultTotals::default(),
                    });
                    groups.len() - 1
                }
            };
            let t = &mut groups[i].totals;
            t.hist.merge(&v.latency_hist);
            t.timed += v.latency_ns.samples;
            t.minor += v.minor;
            t.major += v.major;
            t.latency_max_ns = t.latency_max_ns.max(v.latency_ns.max.unwrap_or(0));
        }
        groups.retain(|g| g.totals.hist.total() > 0);
        groups.sort_by(|a, b| {
            b.totals
                .timed
                .cmp(&a.totals.timed)
                .then(a.name.cmp(&b.name))
        });
        groups
    }

    fn move_selection(&mut self, by: isize) {
        let clamp = |cur: usize, len: usize| -> usize {
            if len == 0 {
                0
            } else {
                (cur as isize + by).clamp(0, len as isize - 1) as usize
            }
        };
        match self.screen {
            Screen::Processes => {
                let rows = self.processes();
                let i = clamp(self.selected_index(&rows), rows.len());
                self.selected_pid = rows.get(i).map(|p| p.pid);
            }
            Screen::Mappings => self.vma_sel = clamp(self.vma_sel, self.vmas().len()),
            Screen::Paths => {
                let n = tree::lines(&self.path_tree()).len();
                self.path_scroll = clamp(self.path_scroll, n);
            }
            Screen::Latency => self.lat_sel = clamp(self.lat_sel, self.latency_groups().len()),
        }
    }

    pub fn on_key(&mut self, k: KeyEvent) {
        if k.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            self.quit = true;
            return;
        }
        if self.editing_filter {
            match k.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !ctrl && self.filter.chars().count() < 64 => {
                    self.filter.push(c)
                }
                _ => {}
            }
            self.vma_sel = 0;
            return;
        }
        if self.help {
            match k.code {
                KeyCode::Char('q') => self.quit = true,
                _ => self.help = false,
            }
            return;
        }
        if self.story.is_some() && self.screen == Screen::Mappings {
            match k.code {
                KeyCode::Char('q') => self.quit = true,
                KeyCode::Esc | KeyCode::Enter | KeyCode::Backspace => self.story = None,
                KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
                _ => {}
            }
            return;
        }
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Tab => self.screen = self.screen.step(1),
            KeyCode::BackTab => self.screen = self.screen.step(-1),
            KeyCode::Char(c @ '1'..='4') => {
                self.screen = Screen::ALL[(c as u8 - b'1') as usize];
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(PAGE),
            KeyCode::PageUp => self.move_selection(-PAGE),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(-(isize::MAX / 2)),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            KeyCode::Char('s') => match self.screen {
                Screen::Processes => self.proc_sort = self.proc_sort.next(),
                Screen::Mappings => {
                    self.vma_sort = self.vma_sort.next();
                    self.vma_sel = 0;
                }
                _ => {}
            },
            KeyCode::Char('n') => self.next_demo_story(),
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            KeyCode::Enter if self.screen == Screen::Mappings => {
                self.story = self.vmas().get(self.vma_sel).map(|v| v.key);
            }
            KeyCode::Enter if self.screen == Screen::Processes => {
                let rows = self.processes();
                let pid = rows.get(self.selected_index(&rows)).map(|p| p.pid);
                if let Some(pid) = pid {
                    self.focus = Some(pid);
                    self.selected_pid = Some(pid);
                    self.vma_sel = 0;
                    self.path_scroll = 0;
                    self.lat_sel = 0;
                    self.screen = Screen::Mappings;
                }
            }
            KeyCode::Esc => {
                if self.screen != Screen::Processes {
                    self.screen = Screen::Processes;
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                } else {
                    self.focus = None;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fake;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn app() -> App {
        let mut a = App::new();
        a.on_update(fake::update());
        a
    }

    fn press(a: &mut App, keys: &[KeyCode]) {
        for &k in keys {
            a.on_key(key(k));
        }
    }

    #[test]
    fn processes_sort_by_rate_and_hide_idle_exited_ones() {
        let a = app();
        let pids: Vec<u32> = a.processes().iter().map(|p| p.pid).collect();
        assert_eq!(pids, [4242, 77]);
    }

    #[test]
    fn s_cycles_the_sort_order() {
        let mut a = app();
        press(&mut a, &[KeyCode::Char('s')]);
        assert_eq!(a.proc_sort, ProcSort::Total);
        press(&mut a, &[KeyCode::Char('s'), KeyCode::Char('s')]);
        assert_eq!(a.proc_sort, ProcSort::Pid);
        let pids: Vec<u32> = a.processes().iter().map(|p| p.pid).collect();
        assert_eq!(pids, [77, 4242]);
        press(&mut a, &[KeyCode::Char('s')]);
        assert_eq!(a.proc_sort, ProcSort::Rate);
    }

    #[test]
    fn arrows_and_jk_move_and_stop_at_the_ends() {
        let mut a = app();
        press(&mut a, &[KeyCode::Down]);
        assert_eq!(a.selected_pid, Some(77));
        press(&mut a, &[KeyCode::Char('j'), KeyCode::Char('j')]);
        assert_eq!(a.selected_pid, Some(77));
        press(&mut a, &[KeyCode::Char('k')]);
        assert_eq!(a.selected_pid, Some(4242));
        press(&mut a, &[KeyCode::Up, KeyCode::PageUp]);
        assert_eq!(a.selected_pid, Some(4242));
    }

    #[test]
    fn enter_opens_the_mappings_of_the_row_and_esc_goes_back() {
        let mut a = app();
        press(&mut a, &[KeyCode::Down, KeyCode::Enter]);
        assert_eq!(a.screen, Screen::Mappings);
        // Enter on a mapping opens its story; Esc closes it, not the screen.
        press(&mut a, &[KeyCode::Enter]);
        let key = a.vmas()[a.vma_sel].key;
        assert_eq!(a.story, Some(key));
        assert_eq!(a.story_vma().map(|v| v.key), Some(key));
        press(&mut a, &[KeyCode::Esc]);
        assert_eq!((a.story, a.screen), (None, Screen::Mappings));
        assert_eq!(a.focus, Some(77));
        assert_eq!(a.vmas().len(), 1);
        assert_eq!(a.scope_vmas().len(), 1);
        press(&mut a, &[KeyCode::Esc]);
        assert_eq!(a.screen, Screen::Processes);
        assert_eq!(a.focus, Some(77));
        press(&mut a, &[KeyCode::Esc]);
        assert_eq!(a.focus, None);
        assert_eq!(a.scope_vmas().len(), 4);
    }

    #[test]
    fn tab_cycles_screens_both_ways() {
        let mut a = app();
        press(&mut a, &[KeyCode::Tab, KeyCode::Tab]);
        assert_eq!(a.screen, Screen::Paths);
        press(&mut a, &[KeyCode::Tab, KeyCode::Tab]);
        assert_eq!(a.screen, Screen::Processes);
        press(&mut a, &[KeyCode::BackTab]);
        assert_eq!(a.screen, Screen::Latency);
    }

    #[test]
    fn slash_filters_by_name_and_esc_clears() {
        let mut a = app();
        press(
            &mut a,
            &[
                KeyCode::Char('/'),
                KeyCode::Char('p'),
                KeyCode::Char('o'),
                KeyCode::Char('q'),
                KeyCode::Backspace,
                KeyCode::Enter,
            ],
        );
        assert!(!a.quit, "q while typing a filter is text");
        assert_eq!(a.filter, "po");
        let pids: Vec<u32> = a.processes().iter().map(|p| p.pid).collect();
        assert_eq!(pids, [77]);
        press(&mut a, &[KeyCode::Esc]);
        assert_eq!(a.processes().len(), 2);
    }

    #[test]
    fn n_steps_through_the_demo_scenarios_stories() {
        let mut a = app();
        press(&mut a, &[KeyCode::Char('n')]);
        assert_eq!((a.focus, a.screen), (Some(4242), Screen::Mappings));
        let story = a.story_vma().expect("the busiest mapping's story");
        assert_eq!((story.kind, story.faults), ("anon", 1000));
        // The only scenario: n comes back to it.
        press(&mut a, &[KeyCode::Esc, KeyCode::Char('n')]);
        assert_eq!(a.focus, Some(4242));
        assert!(a.story.is_some());
    }

    #[test]
    fn filter_matches_demo_labels() {
        let mut a = app();
        a.filter = "anon-write".into();
        assert_eq!(a.processes()[0].pid, 4242);
    }

    #[test]
    fn mappings_sort_by_rate_newest_or_faults() {
        let mut a = app();
        press(&mut a, &[KeyCode::Enter]);
        let kinds = |a: &App| a.vmas().iter().map(|v| v.kind).collect::<Vec<_>>();
        // The shmem mapping was unmapped: after the live ones in every order.
        assert_eq!(kinds(&a), ["anon", "driver", "shmem"]);
        press(&mut a, &[KeyCode::Char('s')]);
        assert_eq!(a.vma_sort, VmaSort::Newest);
        assert_eq!(kinds(&a), ["driver", "anon", "shmem"]);
        press(&mut a, &[KeyCode::Char('s'), KeyCode::Char('s')]);
        assert_eq!(kinds(&a), ["anon", "driver", "shmem"]);
    }

    #[test]
    fn p_pauses_help_shows_q_and_ctrl_c_quit() {
        let mut a = app();
        press(&mut a, &[KeyCode::Char('p')]);
        assert!(a.paused);
        press(&mut a, &[KeyCode::Char('?')]);
        assert!(a.help);
        press(&mut a, &[KeyCode::Esc]);
        assert!(!a.help);
        press(&mut a, &[KeyCode::Char('q')]);
        assert!(a.quit);
        let mut b = app();
        b.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(b.quit);
    }

    #[test]
    fn a_report_starts_paused_and_p_resumes() {
        let mut a = App::starting(true);
        assert!(a.paused);
        press(&mut a, &[KeyCode::Char('p')]);
        assert!(!a.paused);
        assert!(!App::starting(false).paused);
    }

    #[test]
    fn no_key_panics_without_data() {
        let mut a = App::new();
        for k in [
            KeyCode::Enter,
            KeyCode::Down,
            KeyCode::Up,
            KeyCode::End,
            KeyCode::Tab,
            KeyCode::Down,
            KeyCode::Tab,
            KeyCode::End,
            KeyCode::Tab,
            KeyCode::PageDown,
            KeyCode::Char('s'),
            KeyCode::Esc,
            KeyCode::Char('x'),
            KeyCode::F(5),
        ] {
            a.on_key(key(k));
        }
        assert!(!a.quit);
    }

    #[test]
    fn latency_groups_by_handler_or_kind() {
        let a = app();
        let names: Vec<String> = a.latency_groups().into_iter().map(|g| g.name).collect();
        assert_eq!(
            names,
            [
                "anon",
                "shmem_fault (shmem)",
                "filemap_fault (file)",
                "kvm_vcpu_fault [kvm] (driver)"
            ]
        );
    }
}
