//! The UI thread's loop: take the newest summary, draw, wait for keys until the
//! next frame is due. It never waits on the trace: summaries arrive through a
//! latest-value feed, so a flood of faults changes what is drawn, not how often.
use std::{
    io,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event};
use ratatui::{backend::Backend, Terminal};

use super::{app::App, feed::Feed, screens, Update};

/// Where key presses and resizes come from: the terminal, or a script in tests.
pub trait Input {
    /// The next event, or None when `timeout` passes first.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>>;
}

pub struct TerminalInput;

impl Input for TerminalInput {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        if event::poll(timeout)? {
            event::read().map(Some)
        } else {
            Ok(None)
        }
    }
}

pub struct Options {
    /// Time between redraws when nothing is pressed.
    pub frame: Duration,
    /// Test hook: panic right after the first frame, to prove the terminal is restored.
    pub panic_after_first_draw: bool,
}

/// Runs until `q`/Ctrl-C or until the feed is closed; returns the frames drawn.
pub fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    feed: &Feed<Update>,
    input: &mut dyn Input,
    opts: &Options,
) -> io::Result<u64> {
    let mut frames = 0u64;
    loop {
        let closed = feed.is_closed();
        // Paused keeps what is shown; a screen started paused (a report)
        // still takes its first summary.
        if !app.paused || app.data.is_none() {
            if let Some(u) = feed.take() {
                app.on_update(u);
            }
        }
        if closed || app.quit {
            return Ok(frames);
        }
        terminal.draw(|f| screens::draw(f, app))?;
        frames += 1;
        if opts.panic_after_first_draw {
            panic!("RMAPTRACE_TEST_PANIC: panicking inside the UI loop after the first draw");
        }
        let due = Instant::now() + opts.frame;
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match input.next(left)? {
                Some(Event::Key(k)) => {
                    app.on_key(k);
                    break; // show the effect of a key at once
                }
                Some(Event::Resize(..)) => break,
                Some(_) => {}
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fake;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::backend::TestBackend;
    use std::collections::VecDeque;

    /// Scripted events, each after a delay; then quiet (sleeps out the timeout).
    struct Script(VecDeque<(Duration, Event)>);

    impl Input for Script {
        fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
            match self.0.front() {
                Some((delay, _)) if *delay <= timeout => {
                    std::thread::sleep(*delay);
                    Ok(self.0.pop_front().map(|(_, e)| e))
                }
                Some((delay, _)) => {
                    let rest = *delay - timeout;
                    std::thread::sleep(timeout);
                    self.0.front_mut().unwrap().0 = rest;
                    Ok(None)
                }
                None => {
                    std::thread::sleep(timeout);
                    Ok(None)
                }
            }
        }
    }

    fn key(c: KeyCode) -> Event {
        Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    #[test]
    fn keys_drive_the_app_and_q_ends_the_loop() {
        let feed = Feed::default();
        feed.publish(fake::update());
        let mut term = Terminal::new(TestBackend::new(100, 20)).unwrap();
        let mut app = App::new();
        let mut input = Script(
            [
                (Duration::from_millis(5), key(KeyCode::Down)),
                (Duration::from_millis(5), key(KeyCode::Enter)),
                (Duration::from_millis(5), Event::Resize(80, 15)),
                (Duration::from_millis(5), key(KeyCode::Char('q'))),
            ]
            .into(),
        );
        let opts = Options {
            frame: Duration::from_millis(50),
            panic_after_first_draw: false,
        };
        let frames = run(&mut term, &mut app, &feed, &mut input, &opts).unwrap();
        assert!(app.quit);
        assert_eq!(app.focus, Some(77));
        assert_eq!(frames, 4, "one frame, then one per event");
        assert!(term.backend().to_string().contains("postgres"));
    }

    #[test]
    fn a_closed_feed_ends_the_loop_after_the_last_summary() {
        let feed = Feed::default();
        feed.publish(fake::update());
        feed.close();
        let mut term = Terminal::new(TestBackend::new(100, 20)).unwrap();
        let mut app = App::new();
        let opts = Options {
            frame: Duration::from_millis(10),
            panic_after_first_draw: false,
        };
        run(
            &mut term,
            &mut app,
            &feed,
            &mut Script(VecDeque::new()),
            &opts,
        )
        .unwrap();
        assert!(app.data.is_some());
    }

    #[test]
    fn a_screen_started_paused_shows_its_first_summary_and_keeps_it() {
        let feed = Feed::default();
        feed.publish(fake::update());
        let mut term = Terminal::new(TestBackend::new(100, 20)).unwrap();
        let mut app = App::starting(true);
        let mut later = fake::update();
        later.summary.duration_ns += 1_000_000_000;
        let newer = later.summary.duration_ns;
        let mut input = Flood {
            feed: &feed,
            update: later,
            per_wait: 1,
            waits: 2,
            published: newer - 1,
        };
        let opts = Options {
            frame: Duration::from_secs(3600),
            panic_after_first_draw: false,
        };
        run(&mut term, &mut app, &feed, &mut input, &opts).unwrap();
        assert!(app.paused && app.quit);
        let shown = app.data.as_ref().map(|u| u.summary.duration_ns);
        assert_eq!(
            shown,
            Some(fake::update().summary.duration_ns),
            "paused: the later summaries wait"
        );
        let screen = term.backend().to_string();
        assert!(screen.contains("PAUSED"), "{screen}");
        assert!(screen.contains("postgres"), "{screen}");
    }

    /// A producer far faster than the UI: every wait for input sees `per_wait`
    /// new summaries published, then ends the frame; after `waits` of them, `q`.
    struct Flood<'a> {
        feed: &'a Feed<Update>,
        update: Update,
        per_wait: u64,
        waits: u64,
        published: u64,
    }

    impl Input for Flood<'_> {
        fn next(&mut self, _timeout: Duration) -> io::Result<Option<Event>> {
            if self.waits == 0 {
                return Ok(Some(key(KeyCode::Char('q'))));
            }
            self.waits -= 1;
            for _ in 0..self.per_wait {
                self.published += 1;
                self.update.summary.duration_ns = self.published;
                self.feed.publish(self.update.clone());
            }
            Ok(None)
        }
    }

    /// A busy machine: 600 processes with three mappings each.
    fn big_update() -> Update {
        let mut u = fake::update();
        let base = u.summary.processes[0].clone();
        for pid in 10_000..10_600 {
            let mut p = base.clone();
            p.pid = pid;
            u.summary.processes.push(p);
        }
        u
    }

    /// A producer publishing far more often than the UI draws does not slow
    /// the redraws down: one frame per wait, whatever was published meanwhile,
    /// each showing the newest summary (no backlog is worked through).
    #[test]
    fn each_frame_shows_the_newest_summary_however_many_came() {
        let feed = Feed::default();
        let mut input = Flood {
            feed: &feed,
            update: big_update(),
            per_wait: 50,
            waits: 20,
            published: 0,
        };
        let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
        let mut app = App::new();
        let opts = Options {
            frame: Duration::from_secs(3600),
            panic_after_first_draw: false,
        };
        let frames = run(&mut term, &mut app, &feed, &mut input, &opts).unwrap();
        assert_eq!(frames, 21, "the first frame, then one per wait");
        assert_eq!(feed.published(), 1000);
        let shown = app.data.as_ref().map(|u| u.summary.duration_ns);
        assert_eq!(shown, Some(1000), "the newest summary, not an older one");
    }
}
