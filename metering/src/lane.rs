//! The three queue lanes. Lanes are part of a tier's feature map (the urgent
//! lane is sold), of a job's spec and of its place in the queue.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A queue lane: urgent work never waits behind queued standard or bulk work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Urgent,
    Standard,
    Bulk,
}

impl Lane {
    /// In queue order.
    pub const ALL: [Lane; 3] = [Lane::Urgent, Lane::Standard, Lane::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Standard => "standard",
            Lane::Bulk => "bulk",
        }
    }

    /// Position in the queue: lower goes first.
    pub fn rank(self) -> i64 {
        match self {
            Lane::Urgent => 0,
            Lane::Standard => 1,
            Lane::Bulk => 2,
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Lane::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown lane `{s}` (urgent, standard, bulk)"))
    }
}
