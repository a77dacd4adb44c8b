//! The live screen (`rmaptrace` on a terminal): processes by fault rate, the
//! mappings of one process, the kernel path tree and fault latencies.
//!
//! It runs on its own thread. The session loop publishes a summary every tick into
//! a latest-value [`feed::Feed`] and never waits for the screen; the screen takes
//! the newest one when it is due to redraw. `app` holds the state and the keys,
//! `screens/` draws, `terminal` restores the terminal on every way out.
pub mod app;
mod event_loop;
pub mod feed;
mod history;
mod screens;
mod terminal;
mod tree;

#[cfg(test)]
pub(crate) mod fake;

use std::{collections::BTreeMap, sync::Arc, thread::JoinHandle, time::Duration};

use anyhow::{anyhow, Result};

use crate::model::summary::{Note, Summary};
use feed::Feed;

/// What the screen shows at one moment.
#[derive(Clone, Debug)]
pub struct Update {
    pub summary: Summary,
    /// Lines about what runs beside the trace (the demo's scenarios).
    pub notes: Vec<Note>,
    /// Names for pids that need more than their comm (demo scenario names).
    pub labels: BTreeMap<u32, String>,
    /// What is traced, for the top line.
    pub title: String,
}

/// The running screen, seen from the session loop.
pub struct Ui {
    feed: Arc<Feed<Update>>,
    thread: Option<JoinHandle<std::io::Result<u64>>>,
}

impl Ui {
    /// Takes over the terminal and starts the UI thread. `quit` is dropped when
    /// the screen ends for any reason (q, Ctrl-C, an error, a panic), which is
    /// how the session loop learns it should stop.
    pub fn start(quit: tokio::sync::mpsc::Sender<()>) -> Result<Ui> {
        Self::start_with(quit, false)
    }

    /// [`Ui::start`], the screen paused from the start when `paused` (a
    /// report of a finished trace: nothing will change; `p` resumes all the same).
    pub fn start_with(quit: tokio::sync::mpsc::Sender<()>, paused: bool) -> Result<Ui> {
        let feed = Arc::new(Feed::default());
        let (guard, mut term) = terminal::TerminalGuard::enter()
            .map_err(|e| anyhow!("setting up the terminal: {e}"))?;
        let opts = event_loop::Options {
            frame: Duration::from_millis(250),
            panic_after_first_draw: std::env::var_os("RMAPTRACE_TEST_PANIC").is_some(),
        };
        let thread_feed = feed.clone();
        let thread = std::thread::Builder::new()
            .name("rmaptrace-ui".into())
            .spawn(move || {
                let _guard = guard;
                let _quit = quit;
                let mut app = app::App::starting(paused);
                event_loop::run(
                    &mut term,
                    &mut app,
                    &thread_feed,
                    &mut event_loop::TerminalInput,
                    &opts,
                )
            })?;
        Ok(Ui {
            feed,
            thread: Some(thread),
        })
    }

    pub fn publish(&self, u: Update) {
        self.feed.publish(u);
    }

    /// Ends the screen and gives the terminal back; an error if the UI failed.
    pub fn finish(&mut self) -> Result<()> {
        self.feed.close();
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        match t.join() {
            Ok(Ok(_frames)) => Ok(()),
            Ok(Err(e)) => Err(anyhow!("the live screen failed: {e}")),
            Err(_) => Err(anyhow!(
                "the live screen panicked (message above); tracing was stopped cleanly"
            )),
        }
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
