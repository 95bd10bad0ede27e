//! `tollwayctl`: Operators' command-line tool for Tollway fleets.
//!
//! NOTE: only the `pki` and `records` commands exist so far; the fleet
//! commands are not built yet.

mod files;
mod pki;
mod records;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Deserialize;
use tollway_runtime::{CommonArgs, init_logging, load_config};
use tollway_topics::NodeId;

/// Operators' command-line tool for Tollway fleets.
#[derive(Debug, Parser)]
#[command(name = "tollwayctl", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the fleet's certificate authority and certificates.
    Pki {
        /// Directory holding `ca.crt`, `ca.key`, `nodes/` and `servers/`.
        #[arg(long, value_name = "DIR", default_value = "pki")]
        dir: PathBuf,

        /// Replace existing files instead of refusing to overwrite them.
        #[arg(long, global = true)]
        force: bool,

        #[command(subcommand)]
        action: PkiAction,
    },
    /// Query toll records stored by a centre.
    Records {
        #[command(subcommand)]
        action: records::RecordsAction,
    },
}

#[derive(Debug, Subcommand)]
enum PkiAction {
    /// Create the CA certificate and key.
    Init {
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node's client certificate; its CN is the node id.
    IssueNode {
        /// Node id: 1 to 64 ASCII letters, digits, '-' or '_'.
        node: String,
        /// Validity of the certificate, in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a broker's server certificate for a DNS name or IP address.
    IssueServer {
        /// Host name or IP address that clients connect to.
        host: String,
        /// Validity of the certificate, in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

/// Configuration file (TOML). No keys yet; an unknown key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollwayctl: {err}");
        return ExitCode::from(2);
    }
    if let Err(err) = load_config::<Config>(cli.common.config.as_deref()) {
        eprintln!("tollwayctl: {err}");
        return ExitCode::from(2);
    }

    match run(cli.command) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("tollwayctl: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<String, String> {
    let (dir, force, action) = match command {
        Command::Pki { dir, force, action } => (dir, force, action),
        Command::Records { action } => return records::run(action),
    };
    let issued = match action {
        PkiAction::Init { days } => pki::init_ca(&dir, days, force),
        PkiAction::IssueNode { node, days } => {
            let node = NodeId::new(node).map_err(|err| err.to_string())?;
            pki::issue_node(&dir, &node, days, force)
        }
        PkiAction::IssueServer { host, days } => pki::issue_server(&dir, &host, days, force),
    }
    .map_err(|err| err.to_string())?;
    Ok(format!(
        "wrote {} and {}",
        issued.cert.display(),
        issued.key.display()
    ))
}
