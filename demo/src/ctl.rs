//! The operator's steps, run with `tollwayctl` as an operator would run
//! them: apply and delete deployments on a provincial broker, and show the
//! nodes and the national fleet view.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::configs::{NodeFiles, ProvinceFiles, SERVICE_USER};

/// A `tollwayctl` command that failed.
#[derive(Debug, thiserror::Error)]
#[error("`tollwayctl {args}` failed ({status}): {stderr}")]
pub struct CtlError {
    args: String,
    status: String,
    stderr: String,
}

/// Runs `tollwayctl` against one province and the national aggregator.
pub struct Ctl {
    pub program: PathBuf,
    pub aggregator_port: u16,
}

impl Ctl {
    /// Writes one deployment per node of `province` with the toll app
    /// `version`, applies the file and returns its path.
    ///
    /// The demo's three nodes of a province share one host, so each intake
    /// listens on its own port and each app needs its node's port. One
    /// deployment per gantry, selected by the node's unique `gantry` label,
    /// carries it. On real nodes the intake is on 127.0.0.1:1884, the app's
    /// default, and one deployment per province would do. The controller
    /// requires distinct app names across deployments, so each app is
    /// named after its deployment.
    pub fn apply_toll_app(
        &self,
        province: &ProvinceFiles,
        version: &str,
        dir: &Path,
    ) -> Result<PathBuf, CtlError> {
        let documents: Vec<String> = province
            .nodes
            .iter()
            .map(|node| deployment_yaml(node, version))
            .collect();
        let path = dir.join(format!("toll-app-{}-{version}.yaml", province.province));
        std::fs::write(&path, documents.join("---\n")).map_err(|err| CtlError {
            args: format!("apply -f {}", path.display()),
            status: "not run".to_string(),
            stderr: format!("cannot write the file: {err}"),
        })?;
        let file = path.display().to_string();
        self.run(province, &["apply", "-f", &file])?;
        Ok(path)
    }

    /// Writes one rollout per node of `province` that moves the node's toll
    /// app deployment to `version`, applies the file and returns the
    /// rollout names.
    ///
    /// A rollout moves one deployment, and the demo has one deployment per
    /// node (see [`Ctl::apply_toll_app`]), so each rollout has one wave of
    /// one node. The controller still prefetches, switches and waits for
    /// the app to settle on the new image, as for a province-wide rollout.
    // NOTE: waves, thresholds and pairs are therefore not exercised here;
    // the controller's own tests cover them on simulated fleets.
    pub fn apply_rollouts(
        &self,
        province: &ProvinceFiles,
        version: &str,
        dir: &Path,
    ) -> Result<Vec<String>, CtlError> {
        let names: Vec<String> = province
            .nodes
            .iter()
            .map(|node| rollout_name(node, version))
            .collect();
        let documents: Vec<String> = province
            .nodes
            .iter()
            .map(|node| rollout_yaml(node, version))
            .collect();
        let path = dir.join(format!("rollout-{}-{version}.yaml", province.province));
        std::fs::write(&path, documents.join("---\n")).map_err(|err| CtlError {
            args: format!("apply -f {}", path.display()),
            status: "not run".to_string(),
            stderr: format!("cannot write the file: {err}"),
        })?;
        let file = path.display().to_string();
        self.run(province, &["apply", "-f", &file])?;
        println!("  tollwayctl apply -f {file}");
        Ok(names)
    }

    /// Returns the output of `tollwayctl rollout status NAME`.
    pub fn rollout_status(&self, province: &ProvinceFiles, name: &str) -> Result<String, CtlError> {
        self.run(province, &["rollout", "status", name])
    }

    /// Deletes the toll app deployment of every node of `province`, so its
    /// apps stop and write their final counts.
    pub fn delete_toll_app(&self, province: &ProvinceFiles) -> Result<(), CtlError> {
        for node in &province.nodes {
            let name = deployment_name(node);
            self.run(province, &["delete", "deployment", &name])?;
        }
        Ok(())
    }

    /// Returns the output of `tollwayctl get nodes` for `province`.
    pub fn get_nodes(&self, province: &ProvinceFiles) -> Result<String, CtlError> {
        self.run(province, &["get", "nodes"])
    }

    /// Returns the output of `tollwayctl fleet`.
    pub fn fleet(&self, province: &ProvinceFiles) -> Result<String, CtlError> {
        self.run(province, &["fleet"])
    }

    /// Runs `tollwayctl ARGS` with `province`'s connection flags; returns
    /// its standard output.
    fn run(&self, province: &ProvinceFiles, args: &[&str]) -> Result<String, CtlError> {
        let port = province.ports.service.to_string();
        let password = province.password_file.display().to_string();
        let controller = format!("http://127.0.0.1:{}", province.controller_port);
        let aggregator = format!("http://127.0.0.1:{}", self.aggregator_port);
        let output = Command::new(&self.program)
            .args(args)
            .args(["--broker-host", "127.0.0.1", "--broker-port", &port])
            .args(["--username", SERVICE_USER, "--password-file", &password])
            .args([
                "--controller-url",
                &controller,
                "--aggregator-url",
                &aggregator,
            ])
            .output()
            .map_err(|err| CtlError {
                args: args.join(" "),
                status: "not started".to_string(),
                stderr: err.to_string(),
            })?;
        if !output.status.success() {
            return Err(CtlError {
                args: args.join(" "),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Returns the name of `node`'s toll app deployment.
pub fn deployment_name(node: &NodeFiles) -> String {
    format!("toll-app-{}", node.plan.id)
}

/// Returns the name of the rollout of `node`'s toll app to `version`.
pub fn rollout_name(node: &NodeFiles, version: &str) -> String {
    format!("upgrade-{}-{}", node.plan.id, version.replace('.', "-"))
}

/// Returns the YAML of the rollout of `node`'s toll app to `version`: one
/// wave, a settle time above the daemons' 2 s reconcile interval, and
/// short timeouts because the images are local.
fn rollout_yaml(node: &NodeFiles, version: &str) -> String {
    format!(
        r#"kind: Rollout
name: {name}
deployment: {deployment}
image: localhost/tollway/toll-app:{version}
waves:
  - percent: 100
settle_s: 5
prefetch_timeout_s: 60
wave_timeout_s: 120
"#,
        name = rollout_name(node, version),
        deployment = deployment_name(node),
    )
}

/// Returns the YAML of `node`'s toll app deployment at `version`.
fn deployment_yaml(node: &NodeFiles, version: &str) -> String {
    let plan = &node.plan;
    format!(
        r#"# The toll app of gantry {gantry} ({id}).
name: {name}
selector:
  - gantry = {gantry}
mode: per-node
app:
  name: {name}
  image: localhost/tollway/toll-app:{version}
  env:
    TOLL_APP_INTAKE: "127.0.0.1:{intake}"
    TOLL_APP_GANTRY: "{gantry}"
    TOLL_APP_PROVINCE: "{province}"
    TOLL_APP_RATE: "{rate}"
    TOLL_APP_COUNTS_DIR: /counts
  mounts:
    - source: {counts}
      target: /counts
  restart: always
"#,
        gantry = plan.gantry,
        id = plan.id,
        name = deployment_name(node),
        intake = node.intake_port,
        province = plan.province,
        rate = crate::plan::APP_RATE,
        counts = node.counts_dir.display(),
    )
}
