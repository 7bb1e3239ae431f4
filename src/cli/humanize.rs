//! How kubectl writes durations, timestamps, labels and selectors, and how to read fields of
//! Kubernetes-shaped JSON without ceremony.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

/// The moment and time zone the output is rendered for (fixed in tests).
#[derive(Debug, Clone)]
pub struct Clock {
    pub now: Timestamp,
    pub tz: TimeZone,
}

impl Clock {
    pub fn system() -> Clock {
        Clock {
            now: Timestamp::now(),
            tz: TimeZone::system(),
        }
    }

    /// A fixed instant in UTC (tests).
    pub fn fixed(now: &str) -> Clock {
        Clock {
            now: now.parse().unwrap_or(Timestamp::UNIX_EPOCH),
            tz: TimeZone::UTC,
        }
    }

    /// kubectl's `translateTimestampSince`: `<unknown>` for a missing time, else the age.
    pub fn since(&self, timestamp: Option<&str>) -> String {
        match parse_time(timestamp) {
            Some(t) => {
                let seconds = self.now.as_second() - t.as_second();
                human_duration(seconds)
            }
            None => "<unknown>".to_string(),
        }
    }

    /// RFC 1123 with a numeric zone (Go's `time.RFC1123Z`), as `kubectl describe` prints times.
    pub fn rfc1123z(&self, timestamp: Option<&str>) -> String {
        match parse_time(timestamp) {
            Some(t) => t
                .to_zoned(self.tz.clone())
                .strftime("%a, %d %b %Y %H:%M:%S %z")
                .to_string(),
            None => "<unknown>".to_string(),
        }
    }
}

fn parse_time(timestamp: Option<&str>) -> Option<Timestamp> {
    timestamp.filter(|s| !s.is_empty())?.parse().ok()
}

/// kubectl's `duration.HumanDuration`: precise when short, coarse when long
/// (`59s`, `119s`, `2m`, `9m59s`, `10m`, `179m`, `3h`, `7h59m`, `8h`, `47h`, `2d`, `7d23h`,
/// `8d`, `729d`, `2y`, `7y364d`, `8y`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `k=v,k2=v2` sorted by key, or `<none>` (kubectl's `labels.FormatLabels`).
pub fn format_labels(labels: Option<&Value>) -> String {
    let Some(map) = labels.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return "<none>".to_string();
    };
    let mut pairs: Vec<(&String, &Value)> = map.iter().collect();
    pairs.sort_by_key(|(k, _)| *k);
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", scalar(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `metav1.LabelSelector` as kubectl prints it (`FormatLabelSelector`): requirements sorted
/// by key, `k=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`; `<none>` when empty.
pub fn format_label_selector(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return "<none>".to_string();
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            reqs.push((k.clone(), format!("{k}={}", scalar(v))));
        }
    }
    for expr in array(selector, "/matchExpressions") {
        let key = str_at(expr, "/key");
        let mut values: Vec<String> = array(expr, "/values").iter().map(scalar).collect();
        values.sort();
        let text = match str_at(expr, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({})", values.join(",")),
        };
        reqs.push((key.to_string(), text));
    }
    if reqs.is_empty() {
        return "<none>".to_string();
    }
    reqs.sort();
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// A JSON scalar as text (strings unquoted); intstr fields (`25%` or `1`) print naturally.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The string at a JSON pointer, or "".
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The integer at a JSON pointer, or `default`.
pub fn int_at(v: &Value, pointer: &str, default: i64) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

/// The array at a JSON pointer, or an empty slice.
pub fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The object at a JSON pointer, if any.
pub fn object<'a>(v: &'a Value, pointer: &str) -> Option<&'a Map<String, Value>> {
    v.pointer(pointer).and_then(Value::as_object)
}

/// `s`, or `<none>` when empty.
pub fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_duration_follows_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (7 * 3600 + 59 * 60, "7h59m"),
            (8 * 3600, "8h"),
            (45 * 3600, "45h"),
            (48 * 3600, "2d"),
            (7 * 86400 + 23 * 3600, "7d23h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (8 * 365 * 86400, "8y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}s");
        }
    }

    #[test]
    fn ages_and_times_from_timestamps() {
        let clock = Clock::fixed("2024-05-01T12:00:00Z");
        assert_eq!(clock.since(Some("2024-05-01T11:56:48Z")), "3m12s");
        assert_eq!(clock.since(None), "<unknown>");
        assert_eq!(clock.since(Some("garbage")), "<unknown>");
        assert_eq!(
            clock.rfc1123z(Some("2024-05-01T11:56:48Z")),
            "Wed, 01 May 2024 11:56:48 +0000"
        );
    }

    #[test]
    fn labels_and_selectors() {
        assert_eq!(
            format_labels(Some(&json!({"tier": "web", "app": "x"}))),
            "app=x,tier=web"
        );
        // By key, as kubectl: `app` sorts before `app.kubernetes.io/...`.
        assert_eq!(
            format_labels(Some(&json!({"app.kubernetes.io/x": "y", "app": "x"}))),
            "app=x,app.kubernetes.io/x=y"
        );
        assert_eq!(format_labels(Some(&json!({}))), "<none>");
        assert_eq!(format_labels(None), "<none>");
        let sel = json!({"matchLabels": {"app": "x"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]});
        assert_eq!(
            format_label_selector(Some(&sel)),
            "app=x,!canary,env in (dev,prod)"
        );
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
    }
}
