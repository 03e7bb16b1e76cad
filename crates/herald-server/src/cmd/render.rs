//! Text for humans: tables, event lines, body previews, times and durations. Pure functions
//! of the API's JSON, so they are tested without a server.

use herald_core::clock::format_utc;
use serde_json::Value;

/// Longest body preview, in characters.
const PREVIEW_CHARS: usize = 100;

/// A body as compact JSON, cut at [`PREVIEW_CHARS`].
pub(crate) fn preview(body: &Value) -> String {
    let text = serde_json::to_string(body).unwrap_or_default();
    if text.chars().count() <= PREVIEW_CHARS {
        text
    } else {
        let cut: String = text.chars().take(PREVIEW_CHARS).collect();
        format!("{cut}… ({} bytes)", text.len())
    }
}

/// A span of milliseconds, short: `850 ms`, `2.5 s`, `3m 05s`, `2h 07m`, `3d 04h`.
pub(crate) fn span(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => {
            let tenths = ms % 1000 / 100;
            if tenths == 0 {
                format!("{s} s")
            } else {
                format!("{s}.{tenths} s")
            }
        }
        60_000..3_600_000 => format!("{}m {:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `ms` as a UTC time, or `-` when absent.
pub(crate) fn time(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_string(), format_utc)
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// `herald messages`: one row per message, oldest first.
pub(crate) fn messages(items: &[Value]) -> String {
    if items.is_empty() {
        return "no messages match".to_string();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|m| {
            vec![
                time(num(m, "ts")),
                text(m, "id").to_string(),
                text(m, "s").to_string(),
                num(m, "o").map_or_else(|| "-".into(), |o| o.to_string()),
                text(m, "from").to_string(),
                preview(m.get("body").unwrap_or(&Value::Null)),
            ]
        })
        .collect();
    table(
        &["ACCEPTED", "ID", "STREAM", "OFFSET", "FROM", "BODY"],
        &rows,
    )
}

/// `herald sessions`: one row per session.
pub(crate) fn sessions(items: &[Value], now_ms: u64) -> String {
    if items.is_empty() {
        return "no sessions".to_string();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let subs = s
                .get("subs")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(chan, o)| format!("{chan}@{}", o.as_u64().unwrap_or(0)))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into());
            let seen = num(s, "last_seen_ms").map_or_else(
                || "-".into(),
                |t| format!("{} ago", span(now_ms.saturating_sub(t))),
            );
            vec![
                text(s, "id").to_string(),
                text(s, "uid").to_string(),
                text(s, "device").to_string(),
                text(s, "state").to_string(),
                text(s, "conn").to_string(),
                text(s, "addr").to_string(),
                seen,
                subs,
            ]
        })
        .collect();
    table(
        &[
            "SESSION",
            "UID",
            "DEVICE",
            "STATE",
            "CONN",
            "ADDR",
            "LAST SEEN",
            "SUBS",
        ],
        &rows,
    )
}

/// `key=value` pairs of a JSON object, nested keys joined with `.`.
fn pairs(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                pairs(&key, x, out);
            }
        }
        Value::Null => {}
        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
            out.push(format!("{prefix}={s}"));
        }
        other => out.push(format!("{prefix}={other}")),
    }
}

/// `herald events`: one line per event.
pub(crate) fn event_line(e: &Value) -> String {
    let mut fields = Vec::new();
    for key in ["uid", "device", "session", "conn"] {
        if let Some(v) = e.get(key).and_then(Value::as_str) {
            fields.push(format!("{key}={v}"));
        }
    }
    let mut data = Vec::new();
    pairs("", e.get("data").unwrap_or(&Value::Null), &mut data);
    let mut line = format!(
        "{}  #{:<5} {:<15} {}",
        time(num(e, "ts")),
        num(e, "id").unwrap_or(0),
        text(e, "kind"),
        fields.join(" ")
    );
    if !data.is_empty() {
        line.push_str("  ");
        line.push_str(&data.join(" "));
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spans() {
        assert_eq!(span(0), "0 ms");
        assert_eq!(span(77), "77 ms");
        assert_eq!(span(1_000), "1 s");
        assert_eq!(span(2_540), "2.5 s");
        assert_eq!(span(185_000), "3m 05s");
        assert_eq!(span(7_620_000), "2h 07m");
        assert_eq!(span(273_600_000), "3d 04h");
    }

    #[test]
    fn previews_are_compact_and_bounded() {
        assert_eq!(preview(&json!("hi")), "\"hi\"");
        assert_eq!(preview(&json!({"a": [1, 2]})), r#"{"a":[1,2]}"#);
        let long = preview(&json!("x".repeat(500)));
        assert!(long.starts_with("\"xxx"), "{long}");
        assert!(long.ends_with("… (502 bytes)"), "{long}");
        assert_eq!(
            long.chars().count(),
            PREVIEW_CHARS + "… (502 bytes)".len() - 2
        );
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["wide cell".into(), "x".into(), "last".into()],
                vec!["y".into(), "z".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "A          LONG HEADER  C\n\
             wide cell  x            last\n\
             y          z"
        );
    }

    #[test]
    fn message_rows() {
        let out = messages(&[json!({
            "id": "m_1", "s": "inbox:bob", "o": 3, "from": "alice", "ts": 1_700_000_000_000u64,
            "body": {"text": "hi"}, "receipt": false
        })]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ACCEPTED"));
        assert_eq!(
            lines[1],
            r#"2023-11-14 22:13:20.000 UTC  m_1  inbox:bob  3       alice  {"text":"hi"}"#
        );
        assert_eq!(messages(&[]), "no messages match");
    }

    #[test]
    fn session_rows() {
        let out = sessions(
            &[json!({
                "id": "s_1", "uid": "alice", "device": "p1", "state": "connected",
                "conn": "c_1", "addr": "127.0.0.1:5000", "last_seen_ms": 1_000,
                "subs": {"room": 4, "news": 0}
            })],
            13_500,
        );
        let row = out.lines().nth(1).expect("a row");
        assert_eq!(
            row,
            "s_1      alice  p1      connected  c_1   127.0.0.1:5000  12.5 s ago  news@0,room@4"
        );
        assert_eq!(sessions(&[], 0), "no sessions");
    }

    #[test]
    fn event_lines() {
        let line = event_line(&json!({
            "id": 7, "ts": 1_700_000_000_000u64, "kind": "eviction", "uid": "bob",
            "device": "b1", "session": "s_1", "conn": "c_1",
            "data": {"reason": "replaced", "addr": "127.0.0.1:1", "by": {"conn": "c_2", "addr": null}}
        }));
        assert_eq!(
            line,
            "2023-11-14 22:13:20.000 UTC  #7     eviction        uid=bob device=b1 session=s_1 \
             conn=c_1  addr=127.0.0.1:1 by.conn=c_2 reason=replaced"
        );
        let line = event_line(&json!({"id": 8, "ts": 0, "kind": "kick", "session": "s_2",
            "data": {"by": "api:127.0.0.1:9"}}));
        assert_eq!(
            line,
            "1970-01-01 00:00:00.000 UTC  #8     kick            session=s_2  by=api:127.0.0.1:9"
        );
    }
}
