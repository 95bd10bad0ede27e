//! `tollwayctl apply`, `delete`, `get`, `describe` and `fleet` as an
//! operator runs them: the real program against the real broker, a running
//! controller and aggregator (`tollway-center`) and simulated nodes.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tollway_testkit::center::*;
use tollway_testkit::*;

const DEPLOYMENT: &str = r#"
name: toll-app
selector: ["role = gantry"]
mode: per-node
app:
  name: toll-app
  image: localhost/tollway/toll-app:1.4.2
---
name: plate-audit
selector: ["role = gantry"]
mode: replicas
replicas: 1
spread_by: station
colocate_with: toll-app
app:
  name: plate-audit
  image: localhost/tollway/plate-audit:0.9.0
"#;

fn ctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin_path("tollwayctl"));
    command
        .args(args)
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .env("LANG", "C");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn dry_run_prints_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "app.yaml", DEPLOYMENT);
    // Port 9 on loopback has no broker: a dry run must not need one.
    let output = ctl(
        &["apply", "-f", &file, "--dry-run", "--broker-port", "9"],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("tollway/v1/ops/deployments/toll-app"),
        "{text}"
    );
    assert!(
        text.contains("tollway/v1/ops/deployments/plate-audit"),
        "{text}"
    );
    assert!(text.contains("dry run"), "{text}");
}

#[test]
fn invalid_file_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = DEPLOYMENT.replace(
        "  image: localhost/tollway/plate-audit:0.9.0",
        "  image: localhost/tollway/plate-audit:0.9.0\n  colour: red",
    );
    let file = write(dir.path(), "bad.yaml", &bad);
    let output = ctl(&["apply", "-f", &file, "--dry-run"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains(&format!("{file}:")), "no file in: {text}");
    assert!(text.contains("colour"), "no field in: {text}");
    assert!(
        text.contains("bad.yaml:18:3:"),
        "no line and column in: {text}"
    );

    // A selector is checked on the whole object; the error still points at
    // the selector's line (line 10 of the file, in the second document).
    let selector = DEPLOYMENT.replace(
        "name: plate-audit\nselector: [\"role = gantry\"]",
        "name: plate-audit\nselector: [\"role === gantry\"]",
    );
    let file = write(dir.path(), "selector.yaml", &selector);
    let output = ctl(&["apply", "-f", &file, "--dry-run"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("selector.yaml:10:"),
        "no selector line in: {text}"
    );
    assert!(!text.contains(" at line "), "location given twice: {text}");

    let replicas = DEPLOYMENT.replace("replicas: 1", "replicas: 0");
    let file = write(dir.path(), "zero.yaml", &replicas);
    let output = ctl(&["apply", "-f", &file, "--dry-run"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("replicas"), "{}", stderr(&output));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ctl(&["get", "frogs"], &[]).status.code(), Some(2));
    assert_eq!(ctl(&["apply"], &[]).status.code(), Some(2));
}

/// `--dir` works before and after the pki action, as operators type it.
#[test]
fn pki_dir_goes_anywhere_on_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki = pki.to_str().unwrap();

    let init = ctl(&["pki", "init", "--dir", pki], &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let node = ctl(&["pki", "--dir", pki, "issue-node", "g44-0001"], &[]);
    assert!(node.status.success(), "{}", stderr(&node));
    let server = ctl(&["pki", "issue-server", "127.0.0.1", "--dir", pki], &[]);
    assert!(server.status.success(), "{}", stderr(&server));

    for file in ["ca.crt", "nodes/g44-0001.crt", "servers/127.0.0.1.crt"] {
        assert!(dir.path().join("pki").join(file).exists(), "{file} missing");
    }
}

#[test]
fn unreachable_controller_exits_1() {
    let port = pick_port();
    let url = format!("http://127.0.0.1:{port}");
    let output = ctl(&["get", "nodes", "--controller-url", &url], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--controller-url"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_get_describe_delete_fleet() {
    let files = BrokerFiles::province();
    let _broker = files.start();
    let data = tempfile::tempdir().unwrap();
    let api_port = pick_port();
    let fleet_port = pick_port();
    // The aggregator shares the provincial broker here, standing in for the
    // national broker that a bridge would feed.
    let mut config = controller_config(&files, &data.path().join("controller"), api_port, 600);
    config.push_str(&format!(
        r#"
[aggregator]
api_bind = "127.0.0.1:{fleet_port}"

[aggregator.broker]
port = {port}
client_id = "aggregator"
username = "{SERVICE_USER}"
password_file = "{password}"
"#,
        port = files.ports.service,
        password = files.dir.path().join("service.password").display(),
    ));
    let _center = Center::start(data.path(), &config, api_port);
    let _n1 = SimNode::connect(&files, "n1", &[("role", "gantry"), ("station", "T1")]).await;
    let _n2 = SimNode::connect(&files, "n2", &[("role", "station")]).await;

    // Connection settings from a configuration file; the password from a file.
    let ctl_config = write(
        data.path(),
        "tollwayctl.toml",
        &format!(
            "[connection]\nbroker_port = {}\nusername = \"{SERVICE_USER}\"\npassword_file = \"{}\"\ncontroller_url = \"http://127.0.0.1:{api_port}\"\naggregator_url = \"http://127.0.0.1:{fleet_port}\"\n",
            files.ports.service,
            files.dir.path().join("service.password").display(),
        ),
    );
    let file = write(data.path(), "app.yaml", DEPLOYMENT);
    let with_config = |args: &[&str], env: &[(&str, &str)]| {
        let mut full = vec!["--config", ctl_config.as_str()];
        full.extend_from_slice(args);
        ctl(&full, env)
    };

    // A wrong password is a rejected login, not an unreachable broker.
    let wrong = write(data.path(), "wrong.password", "not-the-password\n");
    let rejected = with_config(&["apply", "-f", &file, "--password-file", &wrong], &[]);
    assert_eq!(rejected.status.code(), Some(1), "{}", stdout(&rejected));
    assert!(
        stderr(&rejected).contains("rejected the login"),
        "{}",
        stderr(&rejected)
    );

    let applied = with_config(&["apply", "-f", &file], &[]);
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    assert!(stdout(&applied).contains("deployment/plate-audit"));

    let deployments = wait_for("both deployments placed", Duration::from_secs(15), || {
        let output = with_config(&["get", "deployments", "-o", "json"], &[]);
        let list: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
        let placed = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["state"] == "placed" && d["nodes"] == serde_json::json!(["n1"]))
            .count();
        if placed == 2 {
            Ok(list)
        } else {
            Err(list.to_string())
        }
    });
    assert_eq!(deployments.as_array().unwrap().len(), 2);

    let table = stdout(&with_config(&["get", "nodes"], &[]));
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("n1 ") && line.contains("online")),
        "{table}"
    );
    let apps = stdout(&with_config(&["get", "apps"], &[]));
    assert!(apps.contains("plate-audit"), "{apps}");

    let described = with_config(&["describe", "node", "n1"], &[]);
    assert_eq!(described.status.code(), Some(0), "{}", stderr(&described));
    let text = stdout(&described);
    assert!(
        text.contains("toll-app") && text.contains("plate-audit"),
        "{text}"
    );
    assert!(text.contains("station=T1"), "{text}");

    let missing = with_config(&["describe", "node", "nobody"], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("nobody"), "{}", stderr(&missing));

    // Chinese operator text when the locale requests it.
    let chinese = stdout(&with_config(&["get", "nodes"], &[("LANG", "zh_CN.UTF-8")]));
    assert!(
        chinese.contains("状态") && chinese.contains("在线"),
        "{chinese}"
    );

    // A name the controller does not list is rejected unless --force is given.
    let typo = with_config(&["delete", "deployment", "plate-audti"], &[]);
    assert_eq!(typo.status.code(), Some(1), "{}", stdout(&typo));
    assert!(
        stderr(&typo).contains("not known to the controller"),
        "{}",
        stderr(&typo)
    );
    let forced = with_config(&["delete", "deployment", "plate-audti", "--force"], &[]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));

    let deleted = with_config(&["delete", "deployment", "plate-audit"], &[]);
    assert_eq!(deleted.status.code(), Some(0), "{}", stderr(&deleted));
    wait_for("plate-audit gone", Duration::from_secs(15), || {
        let list = http_json(api_port, "/v1/deployments");
        if list.as_array().unwrap().len() == 1 {
            Ok(())
        } else {
            Err(list.to_string())
        }
    });

    let fleet = wait_for(
        "province 44 in the fleet view",
        Duration::from_secs(15),
        || {
            let output = with_config(&["fleet"], &[]);
            let text = stdout(&output);
            if text
                .lines()
                .any(|line| line.starts_with("44 ") && line.contains("Guangdong"))
            {
                Ok(text)
            } else {
                Err(format!("{text}{}", stderr(&output)))
            }
        },
    );
    let row = fleet.lines().find(|line| line.starts_with("44 ")).unwrap();
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &columns[2..5],
        ["2", "2", "0"],
        "nodes, online, offline in: {fleet}"
    );
}

#[test]
fn example_deployments_pass_dry_run() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/deployments.yaml"
    );
    let output = ctl(&["apply", "-f", file, "--dry-run"], &[]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("tollway/v1/ops/deployments/toll-app"),
        "{text}"
    );
    assert!(
        text.contains("tollway/v1/ops/deployments/plate-audit"),
        "{text}"
    );
}

#[test]
fn example_rollout_passes_dry_run() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/rollout.yaml"
    );
    let output = ctl(&["apply", file, "--dry-run"], &[]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("tollway/v1/ops/rollouts/toll-app-1-1"),
        "{text}"
    );
    assert!(text.contains("settle_s: 30"), "{text}");
}

#[test]
fn rollout_kind_errors_name_line_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "kind: Rollout\nname: up\ndeployment: toll-app\nimage: x:1\nwaves:\n  - percent: 0\n";
    let file = write(dir.path(), "zero.yaml", text);
    let output = ctl(&["apply", "-f", &file, "--dry-run"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("percent"), "{}", stderr(&output));

    let file = write(dir.path(), "kind.yaml", "kind: Rolout\nname: up\n");
    let output = ctl(&["apply", "-f", &file, "--dry-run"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("kind.yaml:1:1"), "{message}");
    assert!(message.contains("Rolout"), "{message}");

    let both = format!("{DEPLOYMENT}---\n{text}").replace("percent: 0", "percent: 50");
    let file = write(dir.path(), "both.yaml", &both);
    let output = ctl(&["apply", "-f", &file, "--dry-run"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("tollway/v1/ops/deployments/plate-audit"),
        "{printed}"
    );
    assert!(printed.contains("tollway/v1/ops/rollouts/up"), "{printed}");
}
