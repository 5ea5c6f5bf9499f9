//! Progress of a run for a person, on stderr.
//!
//! Depends on `cli` (the output mode) only.

use crate::cli::Output;

/// Prints progress for a person on stderr (never in JSON mode's stdout).
pub struct Progress {
    pub json: bool,
    step: u32,
}

impl Progress {
    pub fn new(output: Output) -> Self {
        Progress {
            json: output == Output::Json,
            step: 0,
        }
    }
    pub fn step(&mut self, what: &str) {
        self.step += 1;
        if !self.json {
            eprintln!("[{}] {what}", self.step);
        }
    }
    pub fn note(&self, what: &str) {
        if !self.json {
            eprintln!("    {what}");
        }
    }
}
