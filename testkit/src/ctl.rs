//! `tollwayctl` as an operator runs it, pointed at a test broker's service
//! listener and a test controller's API through a configuration file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{BrokerFiles, SERVICE_USER, bin_path};

/// A `tollwayctl` configuration for one test province.
pub struct Ctl {
    config: PathBuf,
}

impl Ctl {
    /// Writes `dir/tollwayctl.toml` for `files`' broker and the controller
    /// API on `api_port`. The service password file must exist (see
    /// [`crate::center::write_password_file`]).
    pub fn new(files: &BrokerFiles, api_port: u16, dir: &Path) -> Self {
        let config = dir.join("tollwayctl.toml");
        std::fs::write(
            &config,
            format!(
                "[connection]\nbroker_port = {}\nusername = \"{SERVICE_USER}\"\npassword_file = \"{}\"\ncontroller_url = \"http://127.0.0.1:{api_port}\"\n",
                files.ports.service,
                files.dir.path().join("service.password").display(),
            ),
        )
        .unwrap();
        Ctl { config }
    }

    /// Runs `tollwayctl` with `args` in the C locale.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in_locale(args, "C")
    }

    /// Runs `tollwayctl` with `args` and `LANG` set to `lang`.
    pub fn run_in_locale(&self, args: &[&str], lang: &str) -> Output {
        Command::new(bin_path("tollwayctl"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("LC_ALL")
            .env_remove("LC_MESSAGES")
            .env("LANG", lang)
            .output()
            .unwrap()
    }

    /// Runs `tollwayctl` with `args`, panics unless it exits 0, and returns
    /// its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "tollwayctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Returns `tollwayctl rollout status NAME -o json` parsed, or the
    /// error output when the command fails (the controller may not have
    /// accepted the rollout yet).
    pub fn rollout_status(&self, name: &str) -> Result<serde_json::Value, String> {
        let output = self.run(&["rollout", "status", name, "-o", "json"]);
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(&text)
            .map_err(|err| format!("rollout status is not JSON ({err}): {text}"))
    }
}
