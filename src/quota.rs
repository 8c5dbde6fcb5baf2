//! The quota model: how much of an account's 5-hour and weekly windows is used.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The last known quota of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// The 5-hour window (Codex's "primary").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub five_hour: Option<Window>,
    /// The weekly window (Codex's "secondary").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<Window>,
    /// Where the numbers came from: `headers`, `usage`, `report` or `usage_limit`.
    pub source: String,
    /// When they were observed, unix seconds.
    pub observed_at: i64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub used_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<i64>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<i64>,
}

impl Window {
    /// The share used now: a window whose reset time has passed is empty again.
    pub fn used_at(&self, now: i64) -> f64 {
        match self.resets_at {
            Some(reset) if reset <= now => 0.0,
            _ => self.used_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_window_is_empty() {
        let w = Window {
            used_percent: 93.0,
            window_minutes: Some(300),
            resets_at: Some(1_000),
        };
        assert_eq!(w.used_at(999), 93.0);
        assert_eq!(w.used_at(1_000), 0.0);
    }
}
