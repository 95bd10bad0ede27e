//! Checks made before a scenario starts anything: that its report can be
//! written and that every program it runs exists. Both would otherwise
//! show only after a run of many minutes.

use std::path::{Path, PathBuf};

use crate::options::OptionsError;
use crate::servers::{BrokerKind, Programs};

const BUILD_HINT: &str = "build the workspace (`cargo build --release --workspace`)";

/// A program a scenario runs, and how a user supplies it.
pub struct Program {
    /// The option that names it, e.g. `--broker-bin`.
    pub option: &'static str,
    pub path: PathBuf,
    /// The fix to print when it is missing.
    pub fix: String,
}

impl Program {
    /// Returns the programs that start the given brokers.
    pub fn brokers(programs: &Programs, brokers: &[BrokerKind]) -> Vec<Program> {
        let mut needed = Vec::new();
        if brokers.contains(&BrokerKind::Tollway) {
            needed.push(Program {
                option: "--broker-bin",
                path: programs.tollway_broker.clone(),
                fix: format!("{BUILD_HINT} or pass the program's path"),
            });
        }
        if brokers.contains(&BrokerKind::Mosquitto) {
            let fix = "install the distribution's mosquitto package or pass the program's path";
            needed.push(Program {
                option: "--mosquitto-bin",
                path: programs.mosquitto.clone(),
                fix: fix.to_string(),
            });
            needed.push(Program {
                option: "--mosquitto-passwd-bin",
                path: programs.mosquitto_passwd.clone(),
                fix: fix.to_string(),
            });
        }
        needed
    }

    /// Returns `tollway-center`, named by `--center-bin`.
    pub fn center(path: PathBuf) -> Program {
        Program {
            option: "--center-bin",
            path,
            fix: format!("{BUILD_HINT} or pass the program's path"),
        }
    }
}

/// Checks that `report` can be created and that every program exists and
/// is executable.
pub fn check(report: &Path, programs: &[Program]) -> Result<(), OptionsError> {
    check_report(report)?;
    for program in programs {
        if let Err(problem) = check_executable(&program.path) {
            return Err(OptionsError(format!(
                "{} {}: {problem}; {}",
                program.option,
                program.path.display(),
                program.fix
            )));
        }
    }
    Ok(())
}

/// Creates and removes a temporary file beside `report`.
fn check_report(report: &Path) -> Result<(), OptionsError> {
    let dir = match report.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(OptionsError(format!(
            "--report {}: the directory {} does not exist; create it or choose another path",
            report.display(),
            dir.display()
        )));
    }
    if report.is_dir() {
        return Err(OptionsError(format!(
            "--report {}: is a directory; name a file in it, e.g. {}/report.json",
            report.display(),
            report.display()
        )));
    }
    tempfile::NamedTempFile::new_in(dir).map_err(|err| {
        OptionsError(format!(
            "--report {}: cannot write in {}: {err}; choose a writable directory",
            report.display(),
            dir.display()
        ))
    })?;
    Ok(())
}

/// Looks `program` up as `Command` would: a path with a `/` as it is, a
/// bare name on `PATH`. Returns the problem when it is missing or not
/// executable.
fn check_executable(program: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;

    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        if !program.exists() {
            return Err("not found".to_string());
        }
        if !executable(program) {
            return Err("not an executable file".to_string());
        }
        return Ok(());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        Ok(())
    } else {
        Err("not found on PATH".to_string())
    }
}
