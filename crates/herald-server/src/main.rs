//! The `herald` binary: `herald serve` runs the server; `herald config defaults` prints the
//! default configuration; `herald trace|messages|sessions|kick|events` are operator commands
//! against a running server ([`cmd`]). `anyhow` stops here: everything below returns typed
//! errors.

mod api;
mod app;
mod auth;
mod cli;
mod cmd;
mod config;
mod jwks;
mod metrics;
mod shutdown;
mod transport;
mod webhooks;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, ConfigCmd, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCmd::Defaults) => {
            print!("{}", config::defaults_toml());
            ExitCode::SUCCESS
        }
        Command::Client(cmd) => cmd::run(cmd),
        Command::Serve(args) => {
            let cfg = match config::load(&args) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("herald: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(args.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("herald: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(app::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("herald: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
    // A panic anywhere (a handler's is also answered 500 by `app::catch_panic`) is one log
    // line in the configured format, not a multi-line dump on stderr.
    std::panic::set_hook(Box::new(|info| {
        let what = app::panic_message(info.payload());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(panic = %what, location = %at, thread = thread.name().unwrap_or("?"), "panic");
    }));
}
