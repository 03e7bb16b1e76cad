//! The operator commands (`herald trace`, `messages`, `sessions`, `kick`, `events`): HTTP
//! clients of a running server's API. Each command lives in its own module and does three
//! things: ask the API ([`api::Api`]), turn the JSON answer into text ([`render`]), print it.
//!
//! Nothing here touches the engine or the store: the API is the contract, so these commands
//! work against any herald server the operator can reach. Exit codes: 0 done, 1 failed or not
//! found, 2 usage (clap's own errors exit with 2 as well).

mod api;
mod events;
mod render;
mod trace;

use std::io::Write;
use std::process::ExitCode;

use herald_core::{Clock, SystemClock};
use serde_json::Value;

use crate::cli::{ClientCmd, KickArgs, MessagesArgs, SessionsArgs};
use api::Api;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The command line is wrong in a way clap could not see.
    #[error("{0}")]
    Usage(String),
    #[error(
        "cannot reach the herald server at {url}: {cause}. Is it running? \
         Point the CLI at it with --server URL or HERALD_SERVER"
    )]
    Unreachable { url: String, cause: String },
    #[error("the server at {url} refused the request: {msg} (401). {hint}")]
    Unauthorized {
        url: String,
        msg: String,
        hint: &'static str,
    },
    /// 404: no such message, session, …; the server's words.
    #[error("{0}")]
    NotFound(String),
    #[error("the server at {url} answered {status}: {code}: {msg}")]
    Api {
        url: String,
        status: u16,
        code: String,
        msg: String,
    },
    #[error("unexpected answer from {url}: {msg}")]
    BadAnswer { url: String, msg: String },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Runs an operator command to completion.
pub(crate) fn run(cmd: ClientCmd) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        // `herald events --follow | head`: the reader left; that is not a failure.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(cmd: ClientCmd) -> Result<(), CliError> {
    let now_ms = SystemClock.now_ms();
    match cmd {
        ClientCmd::Trace(a) => trace::run(a).await,
        ClientCmd::Messages(a) => messages(a, now_ms).await,
        ClientCmd::Sessions(a) => sessions(a, now_ms).await,
        ClientCmd::Kick(a) => kick(a).await,
        ClientCmd::Events(a) => events::run(a, now_ms).await,
    }
}

/// Writes `text` to stdout and flushes (so a follower's reader sees each line at once).
pub(crate) fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// The `items` array of a list answer.
pub(crate) fn items(api: &Api, v: &Value) -> Result<Vec<Value>, CliError> {
    v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| api.bad_answer("no `items` array"))
}

/// `herald messages`: GET /v1/messages.
async fn messages(a: MessagesArgs, now_ms: u64) -> Result<(), CliError> {
    let api = Api::new(&a.server)?;
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(to) = a.to {
        q.push(("s", to));
    }
    if let Some(from) = a.from {
        q.push(("from", from));
    }
    if let Some(since) = a.since {
        q.push(("since", since.resolve(now_ms).to_string()));
    }
    if let Some(until) = a.until {
        q.push(("until", until.resolve(now_ms).to_string()));
    }
    if let Some(limit) = a.limit {
        q.push(("limit", limit.to_string()));
    }
    let raw = api.get(&["v1", "messages"], &q).await?;
    if a.json {
        return emit(&raw);
    }
    let v = api.json(&raw)?;
    let items = items(&api, &v)?;
    emit(&render::messages(&items))?;
    let limit = a.limit.unwrap_or(100) as usize;
    if items.len() >= limit {
        eprintln!(
            "herald: showing the first {limit} matches; narrow --since/--until or raise --limit \
             (up to 1000) for more"
        );
    }
    Ok(())
}

/// `herald sessions`: GET /v1/sessions.
async fn sessions(a: SessionsArgs, now_ms: u64) -> Result<(), CliError> {
    let api = Api::new(&a.server)?;
    let q: Vec<(&str, String)> = a.uid.map(|u| ("uid", u)).into_iter().collect();
    let raw = api.get(&["v1", "sessions"], &q).await?;
    if a.json {
        return emit(&raw);
    }
    let v = api.json(&raw)?;
    emit(&render::sessions(&items(&api, &v)?, now_ms))
}

/// `herald kick`: DELETE /v1/sessions/{id}.
async fn kick(a: KickArgs) -> Result<(), CliError> {
    let api = Api::new(&a.server)?;
    api.delete(&["v1", "sessions", &a.session]).await?;
    emit(&format!(
        "kicked {}: its connection (if any) was sent `evicted` (kicked) and closed",
        a.session
    ))
}
