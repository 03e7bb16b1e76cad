// Parts of auth and config are used only once the transport is wired in.
#[allow(dead_code)]
mod auth;
mod cli;
#[allow(dead_code)]
mod config;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ConfigCmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCmd::Defaults) => {
            print!("{}", config::defaults_toml());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            let cfg = match config::load(&args) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("herald: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = auth::Authenticator::from_config(&cfg) {
                eprintln!("herald: {e}");
                return ExitCode::from(2);
            }
            let _ = (cfg.engine_config(), args.log_format);
            eprintln!("herald: serve is not wired yet");
            ExitCode::FAILURE
        }
    }
}
