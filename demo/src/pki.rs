//! The demo's certificates, made with `tollwayctl pki` as an operator would:
//! one CA, a server certificate for 127.0.0.1 shared by every broker, and a
//! client certificate per edge node.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `tollwayctl pki` step that failed.
#[derive(Debug, thiserror::Error)]
#[error("`tollwayctl {args}` failed: {detail}")]
pub struct PkiError {
    args: String,
    detail: String,
}

/// Paths of the demo's PKI files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Creates the CA, the brokers' server certificate and one client
    /// certificate per node under `dir`.
    pub fn create(tollwayctl: &Path, dir: &Path, nodes: &[String]) -> Result<Pki, PkiError> {
        let dir_arg = dir.display().to_string();
        run(tollwayctl, &["pki", "--dir", &dir_arg, "init"])?;
        run(
            tollwayctl,
            &["pki", "--dir", &dir_arg, "issue-server", "127.0.0.1"],
        )?;
        for node in nodes {
            run(tollwayctl, &["pki", "--dir", &dir_arg, "issue-node", node])?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("servers/127.0.0.1.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("servers/127.0.0.1.key")
    }

    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.dir.join(format!("nodes/{node}.crt"))
    }

    pub fn node_key(&self, node: &str) -> PathBuf {
        self.dir.join(format!("nodes/{node}.key"))
    }
}

fn run(tollwayctl: &Path, args: &[&str]) -> Result<(), PkiError> {
    let error = |detail: String| PkiError {
        args: args.join(" "),
        detail,
    };
    let output = Command::new(tollwayctl)
        .args(args)
        .output()
        .map_err(|err| error(err.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(error(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}
