//! Command-line interface of the `herald` binary (clap derive).
//!
//! Owns the shape of the command line only: which subcommands exist and which flags they take.
//! It does not read files or the environment (see [`crate::config`] for that) and does not act on
//! the command (that is `main.rs`). New subcommands (`trace`, `sessions`, …) are added as new
//! [`Command`] variants with their own argument structs.
//!
//! ```text
//! herald serve [--config FILE] [--listen ADDR] [--data-dir DIR] [--dev] [--log-format pretty|json]
//! herald config defaults
//! ```

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
    fn config_defaults() {
        let cli = parse(&["config", "defaults"]).expect("parses");
        assert!(matches!(cli.command, Command::Config(ConfigCmd::Defaults)));
    }
}
