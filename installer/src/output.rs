//! How a command prints what it did: text for people, or one JSON document for scripts.

use clap::ValueEnum;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Text,
    Json,
}
