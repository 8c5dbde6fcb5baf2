//! The pace of a quota window: the share used against the share of the
//! window gone by, and when, at that rate, it would be used up.

use serde::Serialize;

/// How a window is being spent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pace {
    /// The share of the window's time gone by, percent.
    pub elapsed_percent: f64,
    /// The share it would have used by its reset at the rate so far.
    pub projected_percent: f64,
    /// When, at that rate, it is used up, unix seconds; only when that
    /// comes before the reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_out_at: Option<i64>,
}

impl Pace {
    /// The pace of a window of `minutes` that resets at `resets_at`, with
    /// `used_percent` used at `now`; `None` when it cannot be told (the
    /// window not started, over, of no length, or no finite share).
    pub fn of(used_percent: f64, minutes: i64, resets_at: i64, now: i64) -> Option<Pace> {
        let length = minutes.checked_mul(60).filter(|l| *l > 0)? as f64;
        let left = resets_at.checked_sub(now)? as f64;
        if !used_percent.is_finite() || used_percent < 0.0 || left <= 0.0 || left >= length {
            return None;
        }
        let elapsed = length - left;
        let projected_percent = used_percent * length / elapsed;
        let runs_out_at = (used_percent >= 100.0)
            .then_some(now)
            .or_else(|| {
                (projected_percent > 100.0).then(|| {
                    let to_full = elapsed * (100.0 - used_percent) / used_percent;
                    now.saturating_add(to_full.ceil() as i64)
                })
            })
            .filter(|at| *at < resets_at);
        Some(Pace {
            elapsed_percent: 100.0 * elapsed / length,
            projected_percent,
            runs_out_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 2_000_000_000;

    #[test]
    fn a_window_used_faster_than_it_passes_runs_out_before_its_reset() {
        // Half of a 5-hour window gone, 75 % used: full after 50 more
        // minutes, 100 minutes before the reset.
        let pace = Pace::of(75.0, 300, NOW + 150 * 60, NOW).unwrap();
        assert_eq!(pace.elapsed_percent, 50.0);
        assert_eq!(pace.projected_percent, 150.0);
        assert_eq!(pace.runs_out_at, Some(NOW + 50 * 60));
    }

    #[test]
    fn a_window_used_slower_than_it_passes_lasts() {
        let pace = Pace::of(20.0, 10_080, NOW + 5 * 86_400, NOW).unwrap();
        assert!((pace.elapsed_percent - 100.0 * 2.0 / 7.0).abs() < 1e-9);
        assert!((pace.projected_percent - 70.0).abs() < 1e-9);
        assert_eq!(pace.runs_out_at, None);
    }

    #[test]
    fn a_used_up_window_ran_out_now() {
        let pace = Pace::of(100.0, 300, NOW + 3600, NOW).unwrap();
        assert_eq!(pace.runs_out_at, Some(NOW));
    }

    #[test]
    fn what_cannot_be_told_is_none() {
        for (used, minutes, resets_at) in [
            (f64::NAN, 300, NOW + 60),
            (f64::INFINITY, 300, NOW + 60),
            (-1.0, 300, NOW + 60),
            (10.0, 0, NOW + 60),
            (10.0, -5, NOW + 60),
            (10.0, i64::MAX, NOW + 60),
            (10.0, 300, NOW),
            (10.0, 300, NOW - 1),
            (10.0, 300, NOW + 300 * 60),
            (10.0, 300, i64::MIN),
        ] {
            assert_eq!(
                Pace::of(used, minutes, resets_at, NOW),
                None,
                "{used} {minutes} {resets_at}"
            );
        }
        assert!(Pace::of(0.0, 300, NOW + 60, NOW).is_some());
    }
}
