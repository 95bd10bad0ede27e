//! `tollwayctl`: Operators' command-line tool for Tollway fleets.
//!
//! Exit codes: 0 success, 1 failure, 2 usage (bad flags or configuration).

mod apply;
mod connection;
mod files;
mod fleet;
mod get;
mod locale;
mod pki;
mod records;
mod rollout;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Deserialize;
use tollway_runtime::{CommonArgs, init_logging, load_config};
use tollway_topics::NodeId;

use crate::connection::{Connection, ConnectionArgs, ConnectionConfig};
use crate::get::{Output, Resource};

/// Operators' command-line tool for Tollway fleets.
#[derive(Debug, Parser)]
#[command(name = "tollwayctl", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(flatten)]
    connection: ConnectionArgs,

    /// Output format of `get`, `describe`, `fleet`, `records query` and
    /// `rollout status`.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the fleet's certificate authority and certificates.
    Pki {
        /// Directory holding `ca.crt`, `ca.key`, `nodes/` and `servers/`.
        #[arg(long, value_name = "DIR", default_value = "pki", global = true)]
        dir: PathBuf,

        /// Replace existing files instead of refusing to overwrite them.
        #[arg(long, global = true)]
        force: bool,

        #[command(subcommand)]
        action: PkiAction,
    },
    /// Validate deployments and rollouts in a YAML file and publish them.
    Apply {
        /// YAML file with one or more documents separated by `---`; each
        /// names `kind: Deployment` (the default) or `kind: Rollout`.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE",
            required_unless_present = "path",
            conflicts_with = "path"
        )]
        file: Option<PathBuf>,
        /// The YAML file, given without `-f`.
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
        /// Validate and print what would be published, without connecting.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a deployment (its instances stop on every node) or a rollout
    /// (its nodes return to the deployment's image).
    Delete {
        #[arg(value_enum)]
        kind: DeleteKind,
        /// Deployment or rollout name.
        name: String,
        /// Publish the delete even when the controller does not know the
        /// name (for example after it lost its store).
        #[arg(long)]
        force: bool,
    },
    /// Follow and steer a rollout.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// List nodes, deployments or apps from the provincial controller.
    Get {
        #[arg(value_enum)]
        resource: Resource,
    },
    /// Show one node in detail.
    Describe {
        #[arg(value_enum)]
        kind: DescribeKind,
        /// Node id.
        name: String,
    },
    /// Show the per-province fleet summary from the national aggregator.
    Fleet,
    /// Query toll records stored by a centre.
    Records {
        #[command(subcommand)]
        action: records::RecordsAction,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DeleteKind {
    Deployment,
    Rollout,
}

#[derive(Debug, Subcommand)]
enum RolloutAction {
    /// Show the wave, node counts per state, failures and interruptions.
    Status { name: String },
    /// Stop switching nodes; a later `resume` continues.
    Pause { name: String },
    /// Continue after an operator pause or a pause on failures (which
    /// repeats the wave that failed).
    Resume { name: String },
    /// Stop the rollout for good: switched nodes keep the new image, the
    /// others keep the previous one.
    Abort { name: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DescribeKind {
    Node,
}

#[derive(Debug, Subcommand)]
enum PkiAction {
    /// Create the CA certificate and key.
    Init {
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Common name of the CA, e.g. `Tollway national CA` or `Tollway
        /// Guangdong (44) CA`, so that the national and each province's CA
        /// can be distinguished in certificates and TLS errors.
        #[arg(long, default_value = pki::DEFAULT_CA_NAME)]
        name: String,
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

/// Configuration file (TOML); an unknown key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Broker and API addresses; flags override them.
    #[serde(default)]
    connection: ConnectionConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(cli.common.log_format, cli.common.log.as_deref()) {
        eprintln!("tollwayctl: {err}");
        return ExitCode::from(2);
    }
    let config = match load_config::<Config>(cli.common.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tollwayctl: {err}");
            return ExitCode::from(2);
        }
    };
    let connection = Connection::resolve(&cli.connection, &config.connection);

    match run(cli.command, cli.output, &connection) {
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

fn run(command: Command, output: Output, connection: &Connection) -> Result<String, String> {
    match command {
        Command::Pki { dir, force, action } => run_pki(dir, force, action),
        Command::Apply {
            file,
            path,
            dry_run,
        } => {
            let file = file.or(path).ok_or("apply needs a file: -f FILE")?;
            apply::apply(&file, dry_run, connection)
        }
        Command::Delete { kind, name, force } => apply::delete(
            matches!(kind, DeleteKind::Rollout),
            &name,
            force,
            connection,
        ),
        Command::Rollout { action } => match action {
            RolloutAction::Status { name } => rollout::status(&name, output, connection),
            RolloutAction::Pause { name } => {
                rollout::control(&name, rollout::Control::Pause, connection)
            }
            RolloutAction::Resume { name } => {
                rollout::control(&name, rollout::Control::Resume, connection)
            }
            RolloutAction::Abort { name } => {
                rollout::control(&name, rollout::Control::Abort, connection)
            }
        },
        Command::Get { resource } => get::get(resource, output, connection),
        Command::Describe {
            kind: DescribeKind::Node,
            name,
        } => get::describe_node(&name, output, connection),
        Command::Fleet => fleet::fleet(output, connection),
        Command::Records { action } => records::run(action, output),
    }
}

fn run_pki(dir: PathBuf, force: bool, action: PkiAction) -> Result<String, String> {
    let issued = match action {
        PkiAction::Init { days, name } => pki::init_ca(&dir, &name, days, force),
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
