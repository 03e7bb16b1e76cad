//! Command-line interface of the `herald` binary (clap derive).
//!
//! Owns the shape of the command line only: which subcommands exist and which flags they take.
//! It does not read files (see [`crate::config`] for that) and does not act on the command
//! (`main.rs` runs the server; [`crate::cmd`] runs the operator commands). The only environment
//! it reads are the operator commands' defaults (`HERALD_SERVER`, `HERALD_API_KEY`).
//!
//! ```text
//! herald serve [--config FILE] [--listen ADDR] [--data-dir DIR] [--dev] [--log-format pretty|json]
//! herald config defaults
//! herald trace <MESSAGE-ID> [--json] [--limit N] [--offset N]
//! herald messages [--from UID] [--to user:UID|chan:NAME] [--since WHEN] [--until WHEN] [--limit N] [--json]
//! herald sessions [--uid UID] [--json]
//! herald kick <SESSION>
//! herald events [--type KIND] [--uid UID] [--since WHEN] [--limit N] [--follow] [--json]
//! ```
//! The operator commands take `--server URL` (or `HERALD_SERVER`, default
//! `http://127.0.0.1:7070`) and `--api-key KEY` (or `HERALD_API_KEY`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// herald: a real-time messaging server that never loses a message silently.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Operator commands against a running server's HTTP API.
    #[command(flatten)]
    Client(ClientCmd),
}

/// Operator commands: each talks to a running server's HTTP API.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ClientCmd {
    /// What became of a message: stored, sent to which devices, acknowledged when — or why not.
    Trace(TraceArgs),
    /// Search stored messages by sender, recipient and time.
    Messages(MessagesArgs),
    /// List sessions (connected and waiting for a resume).
    Sessions(SessionsArgs),
    /// End a session: its connection gets `evicted` with reason `kicked`.
    Kick(KickArgs),
    /// Show or follow the event feed: evictions, failed resumes, gaps, kicks.
    Events(EventsArgs),
}

/// The server the operator commands talk to unless told otherwise.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Where the server is and how to authenticate (every operator command).
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Base URL of the server's HTTP API (an empty value means the default).
    #[arg(long, value_name = "URL", env = "HERALD_SERVER", default_value = DEFAULT_SERVER)]
    pub(crate) server: String,

    /// API key, sent as `Authorization: Bearer KEY` (not needed against a --dev server).
    #[arg(
        long,
        value_name = "KEY",
        env = "HERALD_API_KEY",
        hide_env_values = true
    )]
    pub(crate) api_key: Option<String>,
}

/// Flags of `herald trace`.
#[derive(Debug, Clone, Args)]
pub(crate) struct TraceArgs {
    /// The message id (`m_…`), as returned by a publish or shown by `herald messages`.
    #[arg(value_name = "MESSAGE-ID")]
    pub(crate) id: String,

    /// Print the API's JSON answer verbatim instead of the timeline.
    #[arg(long)]
    pub(crate) json: bool,

    /// Most recipients to list (channel messages can have many; the counts cover all).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) limit: Option<u64>,

    /// Recipients to skip before listing (with --limit, to page through them).
    #[arg(long, value_name = "N")]
    pub(crate) offset: Option<u64>,

    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// Flags of `herald messages`.
#[derive(Debug, Clone, Args)]
pub(crate) struct MessagesArgs {
    /// Only messages sent by this uid.
    #[arg(long, value_name = "UID")]
    pub(crate) from: Option<String>,

    /// Only messages to this recipient: `user:<uid>` (its inbox) or `chan:<name>`.
    #[arg(long, value_name = "TARGET", value_parser = parse_target)]
    pub(crate) to: Option<String>,

    /// Only messages accepted at or after WHEN: a duration ago (`30s`, `15m`, `1h`, `2d`,
    /// `1h30m`), a UTC time (`2025-06-01T12:00:00Z`), or milliseconds since the epoch.
    #[arg(long, value_name = "WHEN", value_parser = When::parse)]
    pub(crate) since: Option<When>,

    /// Only messages accepted at or before WHEN (same forms as --since).
    #[arg(long, value_name = "WHEN", value_parser = When::parse)]
    pub(crate) until: Option<When>,

    /// Most messages to list, oldest first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) limit: Option<u64>,

    /// Print the API's JSON answer verbatim instead of a table.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// Flags of `herald sessions`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SessionsArgs {
    /// Only the sessions of this uid.
    #[arg(long, value_name = "UID")]
    pub(crate) uid: Option<String>,

    /// Print the API's JSON answer verbatim instead of a table.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// Flags of `herald kick`.
#[derive(Debug, Clone, Args)]
pub(crate) struct KickArgs {
    /// The session id (`s_…`, see `herald sessions`).
    #[arg(value_name = "SESSION")]
    pub(crate) session: String,

    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// Flags of `herald events`.
#[derive(Debug, Clone, Args)]
pub(crate) struct EventsArgs {
    /// Only events of this kind (`eviction`, `resume_failed`, `gap`, `kick`, …).
    #[arg(long = "type", value_name = "KIND")]
    pub(crate) kind: Option<String>,

    /// Only events of this uid.
    #[arg(long, value_name = "UID")]
    pub(crate) uid: Option<String>,

    /// Only events at or after WHEN (same forms as `herald messages --since`).
    #[arg(long, value_name = "WHEN", value_parser = When::parse)]
    pub(crate) since: Option<When>,

    /// Most events to list first (the newest ones).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) limit: Option<u64>,

    /// Keep running and print new events as they are recorded (polls every second).
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,

    /// One JSON object per event and line instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// A point in time given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// This many milliseconds before now.
    Ago(u64),
    /// Milliseconds since the Unix epoch.
    At(u64),
}

impl When {
    /// `now`, a duration ago (`500ms`, `30s`, `15m`, `1h`, `2d`, `1w`, combined as `1h30m`), a
    /// UTC time (`2025-06-01`, `2025-06-01T12:00:00Z`, `2025-06-01 12:00:00.123 UTC`), or
    /// milliseconds since the epoch.
    pub(crate) fn parse(s: &str) -> Result<When, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("now") {
            return Ok(When::Ago(0));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(When::At)
                .map_err(|_| format!("{s:?} is too large for milliseconds since the epoch"));
        }
        if let Some(ms) = parse_duration(s) {
            return Ok(When::Ago(ms));
        }
        if let Some(ms) = parse_utc(s) {
            return Ok(When::At(ms));
        }
        Err(format!(
            "{s:?} is not a time: use a duration ago (30s, 15m, 1h, 2d, 1h30m), a UTC time \
             (2025-06-01T12:00:00Z) or milliseconds since the epoch"
        ))
    }

    /// Milliseconds since the epoch, given the current time.
    pub(crate) fn resolve(self, now_ms: u64) -> u64 {
        match self {
            When::Ago(ms) => now_ms.saturating_sub(ms),
            When::At(ms) => ms,
        }
    }
}

/// `<n><unit>…` with units ms, s, m, h, d, w; `None` if `s` is not of that form.
fn parse_duration(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.mmm]]][Z| UTC]`, always UTC.
fn parse_utc(s: &str) -> Option<u64> {
    let s = s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix('Z'))
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut d = date.splitn(3, '-');
    let y = i64::from(exact_digits(d.next()?, 4)?);
    let m = exact_digits(d.next()?, 2)?;
    let day = exact_digits(d.next()?, 2)?;
    let (mut hour, mut min, mut sec, mut milli) = (0, 0, 0, 0);
    if let Some(time) = time {
        let (hms, frac) = match time.split_once('.') {
            Some((hms, frac)) => (hms, Some(frac)),
            None => (time, None),
        };
        let mut t = hms.split(':');
        hour = exact_digits(t.next()?, 2)?;
        min = exact_digits(t.next()?, 2)?;
        if let Some(x) = t.next() {
            sec = exact_digits(x, 2)?;
        }
        if t.next().is_some() {
            return None;
        }
        if let Some(frac) = frac {
            if frac.is_empty() || frac.len() > 3 {
                return None;
            }
            milli = exact_digits(frac, frac.len())? * 10u32.pow(3 - frac.len() as u32);
        }
    }
    herald_core::clock::utc_ms(y, m, day, hour, min, sec, milli)
}

/// `s` as a number if it is exactly `len` ASCII digits.
fn exact_digits(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `--to`: `user:<uid>` (also `inbox:<uid>`) or `chan:<name>`, as the API's `s` parameter.
fn parse_target(s: &str) -> Result<String, String> {
    let ok = ["user:", "inbox:", "chan:"]
        .iter()
        .any(|p| s.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} must be user:<uid> or chan:<name>"))
    }
}

/// Flags of `herald serve`.
///
/// `listen`, `data_dir` and `dev` are `None`/`false` unless given on the command line, so that
/// the config file and `HERALD_*` variables are not overridden by flag defaults. The effective
/// defaults (`127.0.0.1:7070`, `./herald-data`) live in [`crate::config::Config::default`].
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file (see `herald config defaults`).
    #[arg(long, short = 'c', value_name = "FILE", env = "HERALD_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:7070, or server.listen from the config].
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,

    /// Directory for the database [default: ./herald-data, or server.data_dir from the config].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Dev mode: accept `hello.uid` without a token and HTTP calls without an API key.
    /// Never use it in production.
    #[arg(long)]
    pub(crate) dev: bool,

    /// Log line format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Pretty)]
    pub(crate) log_format: LogFormat,
}

/// Subcommands of `herald config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub(crate) enum ConfigCmd {
    /// Print a complete, commented default config file to stdout.
    Defaults,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable, coloured when writing to a terminal.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args).expect("parses").command {
            Command::Serve(a) => a,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_without_flags_leaves_everything_to_the_config() {
        let a = serve(&["serve"]);
        assert_eq!(a.listen, None);
        assert_eq!(a.data_dir, None);
        assert!(!a.dev);
        assert_eq!(a.log_format, LogFormat::Pretty);
    }

    #[test]
    fn serve_flags() {
        let a = serve(&[
            "serve",
            "--config",
            "/etc/herald.toml",
            "--listen",
            "0.0.0.0:9000",
            "--data-dir",
            "/tmp/h",
            "--dev",
            "--log-format",
            "json",
        ]);
        assert_eq!(a.config, Some(PathBuf::from("/etc/herald.toml")));
        assert_eq!(a.listen, Some("0.0.0.0:9000".parse().expect("addr")));
        assert_eq!(a.data_dir, Some(PathBuf::from("/tmp/h")));
        assert!(a.dev);
        assert_eq!(a.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["serve", "--listen", "localhost"]).is_err());
        assert!(parse(&["serve", "--log-format", "xml"]).is_err());
        assert!(parse(&["serve", "--bogus"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn durations_are_relative_to_now() {
        let ago = |s: &str| When::parse(s).expect(s);
        assert_eq!(ago("30s"), When::Ago(30_000));
        assert_eq!(ago("15m"), When::Ago(900_000));
        assert_eq!(ago("1h"), When::Ago(3_600_000));
        assert_eq!(ago("2d"), When::Ago(172_800_000));
        assert_eq!(ago("1w"), When::Ago(604_800_000));
        assert_eq!(ago("250ms"), When::Ago(250));
        assert_eq!(ago("1h30m"), When::Ago(5_400_000));
        assert_eq!(ago(" 5s "), When::Ago(5_000));
        assert_eq!(ago("now"), When::Ago(0));
        assert_eq!(When::Ago(1_000).resolve(10_000), 9_000);
        assert_eq!(
            When::Ago(20_000).resolve(10_000),
            0,
            "never before the epoch"
        );
    }

    #[test]
    fn absolute_times() {
        let at = |s: &str| When::parse(s).expect(s);
        assert_eq!(at("1700000000000"), When::At(1_700_000_000_000));
        assert_eq!(at("0"), When::At(0));
        assert_eq!(at("2023-11-14T22:13:20Z"), When::At(1_700_000_000_000));
        assert_eq!(at("2023-11-14T22:13:20.5Z"), When::At(1_700_000_000_500));
        assert_eq!(
            at("2023-11-14 22:13:20.123 UTC"),
            When::At(1_700_000_000_123)
        );
        assert_eq!(at("2023-11-14T22:13"), When::At(1_699_999_980_000));
        assert_eq!(at("2023-11-14"), When::At(1_699_920_000_000));
        assert_eq!(When::At(5).resolve(10_000), 5);
        // What `herald trace` prints can be pasted back.
        let printed = herald_core::clock::format_utc(1_712_345_678_901);
        assert_eq!(When::parse(&printed), Ok(When::At(1_712_345_678_901)));
    }

    #[test]
    fn bad_times_are_refused() {
        for bad in [
            "",
            "s",
            "5x",
            "h1",
            "1h 30m",
            "-5s",
            "1.5h",
            "2023-13-01",
            "2023-02-30",
            "2023-1-01",
            "2023-11-14T25:00",
            "2023-11-14T22:13:20.1234Z",
            "yesterday",
            "99999999999999999999999",
            "99999999999999999999d",
        ] {
            assert!(When::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn operator_commands_parse() {
        let cli = parse(&["trace", "m_1", "--json", "--server", "http://h:1"]).expect("parses");
        match cli.command {
            Command::Client(ClientCmd::Trace(a)) => {
                assert_eq!(a.id, "m_1");
                assert!(a.json);
                assert_eq!(a.server.server, "http://h:1");
            }
            other => panic!("expected trace, got {other:?}"),
        }
        let cli = parse(&[
            "messages", "--from", "alice", "--to", "user:bob", "--since", "1h", "--until", "5m",
            "--limit", "7",
        ])
        .expect("parses");
        match cli.command {
            Command::Client(ClientCmd::Messages(a)) => {
                assert_eq!(a.from.as_deref(), Some("alice"));
                assert_eq!(a.to.as_deref(), Some("user:bob"));
                assert_eq!(a.since, Some(When::Ago(3_600_000)));
                assert_eq!(a.until, Some(When::Ago(300_000)));
                assert_eq!(a.limit, Some(7));
            }
            other => panic!("expected messages, got {other:?}"),
        }
        assert!(parse(&["messages", "--to", "bob"]).is_err());
        assert!(parse(&["messages", "--to", "user:"]).is_err());
        assert!(parse(&["messages", "--since", "soon"]).is_err());
        assert!(parse(&["messages", "--limit", "0"]).is_err());
        assert!(parse(&["trace"]).is_err(), "the id is required");
        assert!(parse(&["kick"]).is_err(), "the session is required");
        let cli = parse(&["events", "--type", "eviction", "--uid", "u", "-f"]).expect("parses");
        match cli.command {
            Command::Client(ClientCmd::Events(a)) => {
                assert_eq!(a.kind.as_deref(), Some("eviction"));
                assert_eq!(a.uid.as_deref(), Some("u"));
                assert!(a.follow);
            }
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn config_defaults() {
        let cli = parse(&["config", "defaults"]).expect("parses");
        assert!(matches!(cli.command, Command::Config(ConfigCmd::Defaults)));
    }
}
