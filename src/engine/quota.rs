//! The quota model: how much of an account's 5-hour and weekly windows is used.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The last known quota of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// The 5-hour window (Codex's "primary").
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_window"
    )]
    pub five_hour: Option<Window>,
    /// The weekly window (Codex's "secondary").
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_window"
    )]
    pub weekly: Option<Window>,
    /// Where the numbers came from.
    pub source: Source,
    /// When they were observed, unix seconds.
    pub observed_at: i64,
    /// The plan the backend named with them (`plus`, `pro`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_type: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Where a quota's numbers came from, written as its name in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Source {
    /// An upstream answer's `x-codex-*` headers.
    Headers,
    /// A `GET /wham/usage` answer.
    Usage,
    /// A client's report to the socket API.
    Report,
    /// A 429 `usage_limit_reached` body.
    UsageLimit,
    /// A `codex.rate_limits` event on a WebSocket connection.
    Websocket,
    /// A name this version does not know, kept as it was written.
    Other(String),
}

impl Source {
    pub fn as_str(&self) -> &str {
        match self {
            Source::Headers => "headers",
            Source::Usage => "usage",
            Source::Report => "report",
            Source::UsageLimit => "usage_limit",
            Source::Websocket => "websocket",
            Source::Other(name) => name,
        }
    }
}

impl From<String> for Source {
    fn from(name: String) -> Source {
        match name.as_str() {
            "headers" => Source::Headers,
            "usage" => Source::Usage,
            "report" => Source::Report,
            "usage_limit" => Source::UsageLimit,
            "websocket" => Source::Websocket,
            _ => Source::Other(name),
        }
    }
}

impl From<Source> for String {
    fn from(source: Source) -> String {
        match source {
            Source::Other(name) => name,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// The largest used share believed: backends report a little over 100.
const MAX_PERCENT: f64 = 1000.0;
/// The longest window believed, minutes (a year).
const MAX_WINDOW_MINUTES: i64 = 366 * 24 * 60;
/// The farthest reset believed, seconds from now (a year).
const MAX_RESET_AHEAD: i64 = 366 * 86_400;

impl Window {
    /// A window from numbers that came from outside, or `None` when the
    /// used share is not a finite percentage: NaN, infinities and absurd
    /// values are never stored. An implausible window length or reset time
    /// is dropped, not believed.
    pub fn checked(
        used_percent: f64,
        window_minutes: Option<i64>,
        resets_at: Option<i64>,
        now: i64,
    ) -> Option<Window> {
        if !used_percent.is_finite() || !(0.0..=MAX_PERCENT).contains(&used_percent) {
            return None;
        }
        Some(Window {
            used_percent,
            window_minutes: window_minutes.filter(|m| (1..=MAX_WINDOW_MINUTES).contains(m)),
            resets_at: resets_at.filter(|at| {
                now.checked_sub(MAX_RESET_AHEAD)
                    .zip(now.checked_add(MAX_RESET_AHEAD))
                    .is_some_and(|(from, to)| (from..=to).contains(at))
            }),
        })
    }
}

/// A stored window that is not one [`Window::checked`] accepts (such as a
/// `null` share written by an older version) reads as unknown, so that the
/// store stays readable.
fn lenient_window<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Window>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(value
        .and_then(|v| serde_json::from_value::<Window>(v).ok())
        .filter(|w| w.used_percent.is_finite()))
}

/// The headers of the 5-hour (primary) and weekly (secondary) windows:
/// used percent, window length in minutes, reset time.
const WINDOW_HEADERS: [[&str; 3]; 2] = [
    [
        "x-codex-primary-used-percent",
        "x-codex-primary-window-minutes",
        "x-codex-primary-reset-at",
    ],
    [
        "x-codex-secondary-used-percent",
        "x-codex-secondary-window-minutes",
        "x-codex-secondary-reset-at",
    ],
];

impl Quota {
    /// Reads Codex's `x-codex-primary-*` (5-hour) and `x-codex-secondary-*`
    /// (weekly) response headers; `header` looks a header up by its
    /// lower-case name. `None` when the response carried no quota.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>, now: i64) -> Option<Quota> {
        let window = |[used, minutes, reset]: [&str; 3]| {
            let get = |name: &str| header(name).map(str::trim);
            Window::checked(
                get(used)?.parse::<f64>().ok()?,
                get(minutes).and_then(|v| v.parse().ok()),
                get(reset).and_then(|v| v.parse().ok()),
                now,
            )
        };
        let [primary, secondary] = WINDOW_HEADERS;
        Quota::seen(window(primary), window(secondary), Source::Headers, now)
    }

    /// A quota of the windows seen; `None` when neither was.
    fn seen(
        five_hour: Option<Window>,
        weekly: Option<Window>,
        source: Source,
        now: i64,
    ) -> Option<Quota> {
        if five_hour.is_none() && weekly.is_none() {
            return None;
        }
        Some(Quota {
            five_hour,
            weekly,
            source,
            observed_at: now,
            plan_type: None,
            extra: Map::new(),
        })
    }

    /// Reads a 429 `usage_limit_reached` body: the account is used up until
    /// `resets_at`. The window it names (`five_hour` unless the reset is more
    /// than five hours away) is marked full on top of `previous`.
    pub fn from_usage_limit(body: &Value, previous: Option<&Quota>, now: i64) -> Option<Quota> {
        let error = body.get("error")?;
        if error.get("type").and_then(Value::as_str) != Some("usage_limit_reached") {
            return None;
        }
        let resets_at = error
            .get("resets_at")
            .and_then(Value::as_i64)
            .or_else(|| {
                error
                    .get("resets_in_seconds")
                    .and_then(Value::as_i64)
                    .and_then(|s| now.checked_add(s))
            })
            .and_then(|at| Window::checked(100.0, None, Some(at), now)?.resets_at);
        let mut quota = previous.cloned().unwrap_or(Quota {
            five_hour: None,
            weekly: None,
            source: Source::UsageLimit,
            observed_at: now,
            plan_type: None,
            extra: Map::new(),
        });
        let weekly = resets_at.is_some_and(|at| at - now > 5 * 3600);
        let slot = if weekly {
            &mut quota.weekly
        } else {
            &mut quota.five_hour
        };
        let window_minutes = slot.as_ref().and_then(|w| w.window_minutes);
        *slot = Some(Window {
            used_percent: 100.0,
            window_minutes: window_minutes.or(Some(if weekly {
                WEEKLY_MINUTES
            } else {
                FIVE_HOUR_MINUTES
            })),
            resets_at,
        });
        quota.source = Source::UsageLimit;
        quota.observed_at = now;
        quota.plan_type = plan_type(error).or(quota.plan_type);
        Some(quota)
    }
}

impl Quota {
    /// Reads a `codex.rate_limits` event of the WebSocket transport: the
    /// same windows as the `x-codex-*` headers. An event about another
    /// metered limit than Codex's own (`metered_limit_name`) is not the
    /// account's quota.
    pub fn from_rate_limits_event(event: &Value, now: i64) -> Option<Quota> {
        if event.get("type").and_then(Value::as_str) != Some("codex.rate_limits") {
            return None;
        }
        let limit = ["metered_limit_name", "limit_name"]
            .iter()
            .find_map(|k| event.get(*k).and_then(Value::as_str));
        if limit.is_some_and(|l| !l.trim().eq_ignore_ascii_case("codex")) {
            return None;
        }
        let limits = event.get("rate_limits")?;
        let window = |name: &str| {
            let w = limits.get(name)?;
            Window::checked(
                w.get("used_percent")?.as_f64()?,
                w.get("window_minutes").and_then(Value::as_i64),
                w.get("reset_at").and_then(Value::as_i64),
                now,
            )
        };
        let mut quota = Quota::seen(
            window("primary"),
            window("secondary"),
            Source::Websocket,
            now,
        )?;
        quota.plan_type = plan_type(event);
        Some(quota)
    }

    /// Reads the body of `GET {chatgpt_base}/wham/usage`.
    pub fn from_usage(body: &Value, now: i64) -> Option<Quota> {
        let limits = body.get("rate_limit")?;
        let window = |name: &str| {
            let w = limits.get(name)?;
            Window::checked(
                w.get("used_percent")?.as_f64()?,
                w.get("limit_window_seconds")
                    .and_then(Value::as_i64)
                    .map(|s| s / 60),
                w.get("reset_at").and_then(Value::as_i64).or_else(|| {
                    w.get("reset_after_seconds")
                        .and_then(Value::as_i64)
                        .and_then(|s| now.checked_add(s))
                }),
                now,
            )
        };
        Some(Quota {
            five_hour: window("primary_window"),
            weekly: window("secondary_window"),
            source: Source::Usage,
            observed_at: now,
            plan_type: plan_type(body),
            extra: Map::new(),
        })
    }
}

/// The `plan_type` an upstream body names: short and printable, or none.
fn plan_type(body: &Value) -> Option<String> {
    let plan = body.get("plan_type")?.as_str()?;
    let fits = !plan.is_empty()
        && plan.len() <= 32
        && plan
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    fits.then(|| plan.to_owned())
}

impl Quota {
    /// The `x-codex-primary-*` and `x-codex-secondary-*` headers an answer
    /// carrying this quota has ([`Quota::from_headers`] reads them back).
    pub fn headers(&self, now: i64) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        for (([used, minutes, reset], window), (_, standing)) in WINDOW_HEADERS
            .into_iter()
            .zip([&self.five_hour, &self.weekly])
            .zip(self.standing(now))
        {
            let (Some(window), Some(standing)) = (window, standing) else {
                continue;
            };
            headers.push((used.to_owned(), standing.used_percent.to_string()));
            if let Some(m) = window.window_minutes {
                headers.push((minutes.to_owned(), m.to_string()));
            }
            if let Some(at) = window.resets_at {
                headers.push((reset.to_owned(), at.to_string()));
            }
        }
        headers
    }
}

/// The usual lengths of the 5-hour and weekly windows, minutes.
pub const FIVE_HOUR_MINUTES: i64 = 300;
pub const WEEKLY_MINUTES: i64 = 7 * 24 * 60;

impl Window {
    /// The latest time the window resets: its reported reset time, else one
    /// window length (its own, else `usual_minutes`) after it was seen at
    /// `observed_at`. A share reported without a usable reset time (a
    /// header with none, a 429 without `resets_at`, a reset a century
    /// ahead) blocks no longer than the window lasts.
    pub fn resets_by(&self, observed_at: i64, usual_minutes: i64) -> i64 {
        self.resets_at.unwrap_or_else(|| {
            let minutes = self.window_minutes.unwrap_or(usual_minutes);
            observed_at.saturating_add(minutes.saturating_mul(60))
        })
    }
}

/// A window as it stands at a moment: the share used, and the latest time
/// it resets ([`Window::resets_by`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub used_percent: f64,
    pub resets_by: i64,
}

impl Quota {
    /// The 5-hour and weekly windows (each named as routing and the status
    /// name it) as they stand at `now`: a window that has reset by then is
    /// empty again.
    pub fn standing(&self, now: i64) -> [(&'static str, Option<Standing>); 2] {
        let at = |window: &Option<Window>, usual| {
            window.as_ref().map(|w| {
                let resets_by = w.resets_by(self.observed_at, usual);
                Standing {
                    used_percent: if resets_by <= now {
                        0.0
                    } else {
                        w.used_percent
                    },
                    resets_by,
                }
            })
        };
        [
            ("5-hour", at(&self.five_hour, FIVE_HOUR_MINUTES)),
            ("weekly", at(&self.weekly, WEEKLY_MINUTES)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let headers = [
            ("x-codex-primary-used-percent", "42.5"),
            ("x-codex-primary-window-minutes", "300"),
            ("x-codex-primary-reset-at", "1795363200"),
            ("x-codex-secondary-used-percent", "7"),
        ];
        let lookup = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let q = Quota::from_headers(lookup, 1_795_000_000).unwrap();
        assert_eq!(q.five_hour.as_ref().unwrap().used_percent, 42.5);
        assert_eq!(q.five_hour.as_ref().unwrap().window_minutes, Some(300));
        assert_eq!(q.five_hour.as_ref().unwrap().resets_at, Some(1_795_363_200));
        assert_eq!(q.weekly.as_ref().unwrap().used_percent, 7.0);
        assert_eq!(
            (q.source.as_str(), q.observed_at),
            ("headers", 1_795_000_000)
        );
        assert!(Quota::from_headers(|_| None, 5).is_none());
        assert!(Quota::from_headers(|_| Some("lots"), 5).is_none());
    }

    #[test]
    fn usage_limit_body() {
        let now = 1_000_000;
        let body = serde_json::json!({"error": {"type": "usage_limit_reached",
            "message": "limit", "plan_type": "plus", "resets_at": now + 3600}});
        let q = Quota::from_usage_limit(&body, None, now).unwrap();
        let w = q.five_hour.unwrap();
        assert_eq!((w.used_percent, w.resets_at), (100.0, Some(now + 3600)));
        let body = serde_json::json!({"error": {"type": "usage_limit_reached",
            "resets_at": now + 3 * 86_400}});
        let q = Quota::from_usage_limit(&body, None, now).unwrap();
        assert_eq!(q.weekly.unwrap().used_percent, 100.0);
        let other = serde_json::json!({"error": {"type": "rate_limit_exceeded"}});
        assert!(Quota::from_usage_limit(&other, None, now).is_none());
    }

    #[test]
    fn rate_limits_event() {
        let now = 1_795_000_000;
        let event = serde_json::json!({"type": "codex.rate_limits", "plan_type": "plus",
            "rate_limits": {
                "primary": {"used_percent": 61.5, "window_minutes": 300, "reset_at": now + 600},
                "secondary": {"used_percent": 9.0, "window_minutes": 10080, "reset_at": null}},
            "credits": {"has_credits": false, "unlimited": false, "balance": null}});
        let q = Quota::from_rate_limits_event(&event, now).unwrap();
        let five = q.five_hour.unwrap();
        assert_eq!(
            (five.used_percent, five.window_minutes, five.resets_at),
            (61.5, Some(300), Some(now + 600))
        );
        assert_eq!(q.weekly.unwrap().used_percent, 9.0);
        assert_eq!((q.source.as_str(), q.observed_at), ("websocket", now));
        let mut other = event.clone();
        other["metered_limit_name"] = "codex_bengalfox".into();
        assert!(Quota::from_rate_limits_event(&other, now).is_none());
        other["metered_limit_name"] = "codex".into();
        assert!(Quota::from_rate_limits_event(&other, now).is_some());
        for bad in [
            serde_json::json!({"type": "codex.rate_limits"}),
            serde_json::json!({"type": "codex.rate_limits", "rate_limits": {
                "primary": {"used_percent": "NaN"}, "secondary": {"used_percent": 1e300}}}),
            serde_json::json!({"type": "response.created", "rate_limits": event["rate_limits"]}),
        ] {
            assert!(Quota::from_rate_limits_event(&bad, now).is_none(), "{bad}");
        }
    }

    #[test]
    fn sources_are_written_by_name_and_unknown_names_kept() {
        for (source, name) in [
            (Source::Headers, "headers"),
            (Source::Usage, "usage"),
            (Source::Report, "report"),
            (Source::UsageLimit, "usage_limit"),
            (Source::Websocket, "websocket"),
        ] {
            assert_eq!(serde_json::to_value(&source).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<Source>(name.into()).unwrap(),
                source
            );
        }
        let later: Source = serde_json::from_value("metrics_push".into()).unwrap();
        assert_eq!(later, Source::Other("metrics_push".into()));
        assert_eq!(serde_json::to_value(&later).unwrap(), "metrics_push");
        assert!(serde_json::from_value::<Source>(7.into()).is_err());
    }

    #[test]
    fn headers_read_back() {
        let now = 1_795_000_000;
        let quota = Quota {
            five_hour: Window::checked(61.5, Some(300), Some(now + 600), now),
            weekly: Window::checked(9.0, None, None, now),
            source: Source::Websocket,
            observed_at: now,
            plan_type: None,
            extra: Map::new(),
        };
        let headers = quota.headers(now);
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let back = Quota::from_headers(lookup, now).unwrap();
        assert_eq!(
            (back.five_hour, back.weekly),
            (quota.five_hour, quota.weekly)
        );
    }

    #[test]
    fn usage_endpoint() {
        let body = serde_json::json!({"plan_type": "plus", "rate_limit": {
            "allowed": true, "limit_reached": false,
            "primary_window": {"used_percent": 12.0, "limit_window_seconds": 18000,
                "reset_after_seconds": 60},
            "secondary_window": {"used_percent": 3.5, "limit_window_seconds": 604800,
                "reset_at": 99}}});
        let q = Quota::from_usage(&body, 10).unwrap();
        let five = q.five_hour.unwrap();
        assert_eq!((five.window_minutes, five.resets_at), (Some(300), Some(70)));
        assert_eq!(q.weekly.unwrap().resets_at, Some(99));
        assert!(Quota::from_usage(&serde_json::json!({}), 10).is_none());
    }

    #[test]
    fn non_finite_quota_is_never_stored() {
        let now = 1_795_000_000;
        for bad in ["NaN", "nan", "inf", "-inf", "1e400", "-5", "1e9"] {
            let lookup = |name: &str| (name == "x-codex-primary-used-percent").then_some(bad);
            assert!(Quota::from_headers(lookup, now).is_none(), "{bad}");
        }
        let absurd = [
            ("x-codex-primary-used-percent", "50"),
            ("x-codex-primary-window-minutes", "-300"),
            ("x-codex-primary-reset-at", "-9223372036854775808"),
        ];
        let lookup = |name: &str| absurd.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let w = Quota::from_headers(lookup, now).unwrap().five_hour.unwrap();
        assert_eq!((w.window_minutes, w.resets_at), (None, None));
        let body = serde_json::json!({"error": {"type": "usage_limit_reached",
            "resets_in_seconds": i64::MAX}});
        let q = Quota::from_usage_limit(&body, None, now).unwrap();
        assert_eq!(q.five_hour.unwrap().resets_at, None);
        // Whatever was accepted reads back.
        let q = Quota::from_headers(lookup, now).unwrap();
        let text = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<Quota>(&text).unwrap(), q);
    }

    #[test]
    fn a_null_share_from_an_older_version_reads_as_unknown() {
        let q: Quota = serde_json::from_str(
            r#"{"five_hour":{"used_percent":null},"weekly":{"used_percent":3.0},"source":"headers","observed_at":1}"#,
        )
        .unwrap();
        assert_eq!(q.five_hour, None);
        assert_eq!(q.weekly.unwrap().used_percent, 3.0);
    }

    fn quota(five_hour: Window, observed_at: i64) -> Quota {
        Quota::seen(Some(five_hour), None, Source::Headers, observed_at).unwrap()
    }

    #[test]
    fn a_reset_window_is_empty() {
        let w = Window {
            used_percent: 93.0,
            window_minutes: Some(300),
            resets_at: Some(1_000),
        };
        let q = quota(w, 500);
        let used = |now| q.standing(now)[0].1.unwrap().used_percent;
        assert_eq!(used(999), 93.0);
        assert_eq!(used(1_000), 0.0);
        assert_eq!(q.standing(999)[1], ("weekly", None));
    }

    #[test]
    fn a_full_window_without_a_reset_time_ends_one_window_length_after_it_was_seen() {
        let now = 1_800_000_000;
        // A header without a reset, a 429 without `resets_at`, a reset a
        // century ahead: none blocks for good.
        let header = Quota::from_headers(
            |name| (name == "x-codex-primary-used-percent").then_some("100"),
            now,
        )
        .unwrap();
        let body = serde_json::json!({"error": {"type": "usage_limit_reached"}});
        let no_reset = Quota::from_usage_limit(&body, None, now).unwrap();
        let body = serde_json::json!({"error": {"type": "usage_limit_reached", "resets_at": 1e20}});
        let far = Quota::from_usage_limit(&body, None, now).unwrap();
        for q in [header, no_reset, far] {
            let [(_, five), _] = q.standing(now + 60);
            let five = five.unwrap();
            assert_eq!((five.used_percent, five.resets_by), (100.0, now + 300 * 60));
            assert_eq!(q.standing(now + 300 * 60)[0].1.unwrap().used_percent, 0.0);
        }
        // Its own length, where it was reported, and the weekly window's
        // usual length otherwise.
        let w = Window::checked(100.0, Some(60), None, now).unwrap();
        assert_eq!(w.resets_by(now, FIVE_HOUR_MINUTES), now + 3600);
        let weekly = Quota::from_headers(
            |name| (name == "x-codex-secondary-used-percent").then_some("100"),
            now,
        )
        .unwrap();
        assert_eq!(
            weekly.standing(now)[1].1.unwrap().resets_by,
            now + 7 * 86_400
        );
        // A reported reset is kept as it is.
        let w = Window::checked(100.0, Some(300), Some(now + 10), now).unwrap();
        assert_eq!(w.resets_by(now - 1_000_000, FIVE_HOUR_MINUTES), now + 10);
    }
}
