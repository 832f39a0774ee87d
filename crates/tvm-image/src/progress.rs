//! Progress display: a spinner with the current step on a terminal, plain lines otherwise (CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub(crate) struct Step {
    bar: Option<ProgressBar>,
    name: String,
    started: Instant,
    last_plain: Instant,
}

impl Step {
    pub(crate) fn start(name: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(name.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        if bar.is_none() {
            eprintln!("==> {name} ...");
        }
        Self {
            bar,
            name: name.to_string(),
            started: Instant::now(),
            last_plain: Instant::now(),
        }
    }

    /// Shows what is happening now (on a terminal every time; in plain mode every 30 s).
    pub(crate) fn message(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => {
                if self.last_plain.elapsed() > Duration::from_secs(30) {
                    eprintln!(
                        "    {} [{}s] {msg}",
                        self.name,
                        self.started.elapsed().as_secs()
                    );
                    self.last_plain = Instant::now();
                }
            }
        }
    }

    pub(crate) fn finish(self, outcome: &str) -> Duration {
        let took = self.started.elapsed();
        let line = format!("{} {} ({:.1}s)", self.name, outcome, took.as_secs_f64());
        match self.bar {
            Some(b) => b.finish_with_message(format!("{outcome} ({:.1}s)", took.as_secs_f64())),
            None => eprintln!("==> {line}"),
        }
        took
    }
}
