//! The demo's stages, in order. They deploy the toll app, show the fleet and
//! roll the app out to a new version. Then they cut one province's national
//! link, crash a daemon meanwhile and restore the link. Finally they stop
//! the apps and wait until every record is home. Each wait is bounded and
//! names what it waited for.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tollway_loadtest::proxy::CutMode;

use crate::cluster::{Cluster, StartError};
use crate::configs::{NodeFiles, ProvinceFiles};
use crate::counts;
use crate::ctl::{Ctl, CtlError};
use crate::http::{HttpError, get_json, stat};
use crate::locale::text;
use crate::plan::CUT_PROVINCE;
use crate::readings::{forward_backlog, interruption_ms, national_forward_through, node_report};
use crate::report::{Events, NationalReport, ProvinceReport, Report};
use crate::supervisor::ProcessError;
use crate::waiting::{check_interrupt, now_ms, pause, wait};

/// The toll app version deployed first.
pub const FIRST_VERSION: &str = "1.0.0";
/// The version the rollout switches to.
pub const NEXT_VERSION: &str = "1.1.0";

/// How long the apps get to start on every node after an apply.
const APP_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the apps get to stop and write their final counts.
const APP_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the demo waits for every record to reach the national store.
const HOME_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the rollouts get to complete on every node.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the killed daemon stays down.
const CRASH_DOWNTIME: Duration = Duration::from_secs(3);

/// A stage that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
    #[error("interrupted by a signal")]
    Interrupted,
}

/// How long each part of the run takes, from `--duration`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub steady_before_rollout: Duration,
    pub steady_after_rollout: Duration,
    pub cut: Duration,
    pub steady_after_cut: Duration,
}

impl Timing {
    /// Splits `duration` into 20 % traffic before the rollout, 10 % after
    /// it, 40 % with the link cut and 30 % after the link is back. Waits
    /// for apps to start and for records to come home come on top.
    pub fn from_duration(duration: Duration) -> Self {
        Timing {
            steady_before_rollout: duration.mul_f64(0.2),
            steady_after_rollout: duration.mul_f64(0.1),
            cut: duration.mul_f64(0.4),
            steady_after_cut: duration.mul_f64(0.3),
        }
    }
}

/// Runs every stage against a started cluster and returns the report.
pub fn run(
    cluster: &mut Cluster,
    ctl: &Ctl,
    run_dir: &Path,
    timing: Timing,
) -> Result<Report, StageError> {
    let started_ms = now_ms();
    let mut events = Events {
        rollout_from: FIRST_VERSION.to_string(),
        rollout_to: NEXT_VERSION.to_string(),
        cut_province: CUT_PROVINCE,
        cut_seconds: timing.cut.as_secs(),
        ..Events::default()
    };

    step(text(
        "Deploying the toll app 1.0.0 with tollwayctl apply",
        "使用 tollwayctl apply 部署收费应用 1.0.0",
    ));
    for province in &cluster.provinces {
        let file = ctl.apply_toll_app(province, FIRST_VERSION, run_dir)?;
        println!("  tollwayctl apply -f {}", file.display());
    }
    wait_apps_acking(cluster, FIRST_VERSION)?;
    show_fleet(cluster, ctl);

    pause(timing.steady_before_rollout)?;

    step(text(
        "Rolling out the toll app 1.1.0",
        "滚动升级收费应用至 1.1.0",
    ));
    events.rollout_method = "one kind: Rollout per node's deployment, tollwayctl apply".to_string();
    let mut rollouts = Vec::new();
    for province in &cluster.provinces {
        for name in ctl.apply_rollouts(province, NEXT_VERSION, run_dir)? {
            rollouts.push((province.clone(), name));
        }
    }
    let switch_ms = wait_rollouts(&rollouts)?;
    wait_apps_acking(cluster, NEXT_VERSION)?;
    if let Some((province, name)) = rollouts.first() {
        println!("\n$ tollwayctl rollout status {name}");
        match ctl.rollout_status(province, name) {
            Ok(output) => println!("{output}"),
            Err(err) => println!("  {err}"),
        }
    }
    print_interruptions(cluster, &switch_ms);

    pause(timing.steady_after_rollout)?;

    let cut_province = cluster
        .provinces
        .iter()
        .find(|p| p.province == CUT_PROVINCE)
        .cloned()
        .expect("the plan has the cut province");
    let killed = cut_province.nodes[0].clone();
    events.killed_node = killed.plan.id.clone();
    let (max_backlog, link_back) = outage(cluster, ctl, &cut_province, &killed, timing.cut)?;

    events.catch_up_seconds = catch_up(cluster, &cut_province, link_back, timing.steady_after_cut)?;

    step(text(
        "Stopping the toll apps (tollwayctl delete deployment)",
        "停止收费应用（tollwayctl delete deployment）",
    ));
    for province in &cluster.provinces {
        ctl.delete_toll_app(province)?;
    }
    wait_apps_stopped(cluster)?;

    step(text(
        "Waiting until every record is home",
        "等待所有记录到达部中心",
    ));
    let window = (started_ms.saturating_sub(3_600_000), now_ms() + 3_600_000);
    if let Err(err) = wait_home(cluster, window) {
        println!("  {err}");
    }

    let mut report = collect(cluster, window, events, &switch_ms)?;
    if let Some(province) = report
        .provinces
        .iter_mut()
        .find(|p| p.province == CUT_PROVINCE)
    {
        province.max_forward_backlog = max_backlog;
    }
    Ok(report)
}

/// Cuts `province`'s link to the national broker for `cut`, kills one of
/// its daemons with SIGKILL a third of the way in, restarts it and shows the
/// fleet view, where the cut province's bridge is offline. Returns
/// the largest forwarding backlog seen and when the link came back.
fn outage(
    cluster: &mut Cluster,
    ctl: &Ctl,
    province: &ProvinceFiles,
    killed: &NodeFiles,
    cut: Duration,
) -> Result<(u64, Instant), StageError> {
    let code = province.province;
    step(&format!(
        "{} {code} {} {} s",
        text("Cutting the national link of province", "切断省份"),
        text("for", "到部中心的链路"),
        cut.as_secs()
    ));
    let proxy = cluster
        .proxies
        .get(&code)
        .expect("every province has a proxy");
    proxy.cut_for(cut, CutMode::Refuse);
    let cut_end = Instant::now() + cut;
    let kill_at = Instant::now() + cut / 3;
    let mut killed_done = false;
    let mut max_backlog = 0;
    let mut last_print = Instant::now();

    while Instant::now() < cut_end {
        check_interrupt()?;
        cluster.supervisor.check_alive()?;
        if !killed_done && Instant::now() >= kill_at {
            println!(
                "  {} {}",
                text("kill -9 the edge daemon of", "kill -9 边缘守护进程"),
                killed.plan.id
            );
            cluster.kill_node(killed)?;
            pause(CRASH_DOWNTIME)?;
            cluster.start_node(killed)?;
            println!(
                "  {} {}",
                text("restarted the edge daemon of", "已重启边缘守护进程"),
                killed.plan.id
            );
            killed_done = true;
            println!("\n$ tollwayctl fleet");
            match ctl.fleet(province) {
                Ok(output) => println!("{output}"),
                Err(err) => println!("  {err}"),
            }
        }
        let backlog = forward_backlog(cluster, province)?;
        max_backlog = max_backlog.max(backlog);
        if last_print.elapsed() >= Duration::from_secs(5) {
            println!(
                "  {} {code}: {backlog} {}",
                text("province", "省份"),
                text(
                    "records stored and queued in its forwarder",
                    "条记录已存储，在转发队列中等待"
                )
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    step(&format!(
        "{} {code} {}",
        text("The national link of province", "省份"),
        text("is back", "的链路已恢复")
    ));
    Ok((max_backlog, Instant::now()))
}

/// Lets traffic run for `duration` after the link came back at `link_back`.
/// Returns how long the national store took to acknowledge every record
/// that `province` had stored by then, or `None` when that took longer than
/// `duration`.
fn catch_up(
    cluster: &Cluster,
    province: &ProvinceFiles,
    link_back: Instant,
    duration: Duration,
) -> Result<Option<f64>, StageError> {
    let queued = stat(province.query_port, "records_stored")?;
    let end = link_back + duration;
    let mut caught_up = None;
    while Instant::now() < end {
        check_interrupt()?;
        if caught_up.is_none() && national_forward_through(cluster, province)? >= queued {
            let seconds = link_back.elapsed().as_secs_f64();
            println!(
                "  {} {seconds:.1} s",
                text(
                    "the forwarder's queue reached the national store in",
                    "转发队列全部到达部中心，用时"
                )
            );
            caught_up = Some(seconds);
        }
        std::thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
    }
    Ok(caught_up)
}

/// Waits until every rollout has completed and returns, by node, the
/// interruption that the node reported for its switch (`switch_ms`).
fn wait_rollouts(
    rollouts: &[(ProvinceFiles, String)],
) -> Result<BTreeMap<String, u64>, StageError> {
    let mut switch_ms = BTreeMap::new();
    wait("every rollout to complete", ROLLOUT_TIMEOUT, || {
        let mut pending = Vec::new();
        for (province, name) in rollouts {
            let view = get_json(province.controller_port, &format!("/v1/rollouts/{name}"))
                .map_err(|err| err.to_string())?;
            let state = view["state"].as_str().unwrap_or("unknown");
            match state {
                "completed" => {
                    for node in view["nodes"].as_array().into_iter().flatten() {
                        if let (Some(id), Some(ms)) =
                            (node["node"].as_str(), node["switch_ms"].as_u64())
                        {
                            switch_ms.insert(id.to_string(), ms);
                        }
                    }
                }
                "paused" | "aborted" | "rejected" => {
                    return Err(format!(
                        "rollout {name} is {state}: {}",
                        view["reason"].as_str().unwrap_or("no reason given")
                    ));
                }
                _ => pending.push(format!("{name} ({state})")),
            }
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!("not completed: {}", pending.join(", ")))
        }
    })?;
    Ok(switch_ms)
}

/// Waits until the app `version` on every node has had records acknowledged.
fn wait_apps_acking(cluster: &Cluster, version: &str) -> Result<(), StageError> {
    let nodes = all_nodes(cluster);
    wait(
        &format!("the toll app {version} to hand records to every node's intake"),
        APP_START_TIMEOUT,
        || {
            let waiting: Vec<&str> = nodes
                .iter()
                .filter(|node| counts::read(&node.counts_dir, version).is_none_or(|c| c.acked == 0))
                .map(|node| node.plan.id.as_str())
                .collect();
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!("not yet on {}", waiting.join(", ")))
            }
        },
    )?;
    println!(
        "  {} {version} {}",
        text("toll app", "收费应用"),
        text("runs on every node", "已在所有节点运行")
    );
    Ok(())
}

/// Waits until every node's app has stopped and written its final counts.
fn wait_apps_stopped(cluster: &Cluster) -> Result<(), StageError> {
    let nodes = all_nodes(cluster);
    wait("every toll app to stop", APP_STOP_TIMEOUT, || {
        let running: Vec<&str> = nodes
            .iter()
            .filter(|node| counts::read(&node.counts_dir, NEXT_VERSION).is_none_or(|c| !c.stopped))
            .map(|node| node.plan.id.as_str())
            .collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(format!("still running on {}", running.join(", ")))
        }
    })
}

/// Waits until, for every node, the national store contains as many records
/// of its gantry as the provincial store, and the province contains every
/// seq that the apps were acknowledged.
fn wait_home(cluster: &Cluster, window: (u64, u64)) -> Result<(), StageError> {
    let nodes = all_nodes(cluster);
    let mut last_print = Instant::now();
    wait(
        "every record to reach the national store",
        HOME_TIMEOUT,
        || {
            let mut behind = Vec::new();
            for node in &nodes {
                let report = node_report(cluster, node, window).map_err(|err| err.to_string())?;
                let owed = report.accepted_by_intake.max(report.acked_by_intake);
                if report.stored_nationally < owed
                    || report.stored_in_province != report.accepted_by_intake
                    || report.accepted_by_intake < report.acked_by_intake
                {
                    behind.push(format!(
                        "{} ({}/{} {})",
                        node.plan.id,
                        report.stored_nationally,
                        owed,
                        text("national", "部中心")
                    ));
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            let summary = behind.join(", ");
            if last_print.elapsed() >= Duration::from_secs(5) {
                println!("  {} {summary}", text("still on the way:", "仍在途中："));
                last_print = Instant::now();
            }
            Err(summary)
        },
    )
}

/// Reads every count of the report from the apps and the services.
fn collect(
    cluster: &Cluster,
    window: (u64, u64),
    events: Events,
    switch_ms: &BTreeMap<String, u64>,
) -> Result<Report, StageError> {
    let mut nodes = Vec::new();
    for node in all_nodes(cluster) {
        let mut report = node_report(cluster, &node, window)?;
        report.node_switch_ms = switch_ms.get(&node.plan.id).copied();
        nodes.push(report);
    }
    let mut provinces = Vec::new();
    for province in &cluster.provinces {
        let national = get_json(
            cluster.national.query_port,
            &format!("/v1/provinces/{}", province.province),
        )?;
        provinces.push(ProvinceReport {
            province: province.province,
            records_stored: stat(province.query_port, "records_stored")?,
            duplicates_dropped: stat(province.query_port, "records_duplicate")?,
            national_forward_through: national["forward_through"].as_u64().unwrap_or(0),
            max_forward_backlog: 0,
        });
    }
    let national = NationalReport {
        records_stored: stat(cluster.national.query_port, "national_records_stored")?,
        duplicates_dropped: stat(cluster.national.query_port, "national_records_duplicate")?,
    };
    let mut report = Report {
        events,
        nodes,
        provinces,
        national,
        ..Report::default()
    };
    report.finish();
    Ok(report)
}

/// Prints each node's switch time as the node reported it, and the gap its
/// app saw between acknowledged records.
fn print_interruptions(cluster: &Cluster, switch_ms: &BTreeMap<String, u64>) {
    for node in all_nodes(cluster) {
        let reported = switch_ms
            .get(&node.plan.id)
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_else(|| "-".to_string());
        let acked = interruption_ms(&node.counts_dir)
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_else(|| "-".to_string());
        println!(
            "  {}: {} {reported}{} {acked}",
            node.plan.id,
            text("switch reported by the node", "节点上报的切换时间"),
            text(", no record acknowledged for", "，无记录被确认的时长"),
        );
    }
}

/// Prints `tollwayctl get nodes` per province and `tollwayctl fleet`.
fn show_fleet(cluster: &Cluster, ctl: &Ctl) {
    for province in &cluster.provinces {
        println!(
            "\n$ tollwayctl get nodes   # {} {}",
            text("province", "省份"),
            province.province
        );
        match ctl.get_nodes(province) {
            Ok(output) => print!("{output}"),
            Err(err) => println!("  {err}"),
        }
    }
    // The aggregator hears from each controller every few seconds, through
    // the bridges; give it one status interval so the view is filled in.
    std::thread::sleep(Duration::from_secs(6));
    println!("\n$ tollwayctl fleet");
    match ctl.fleet(&cluster.provinces[0]) {
        Ok(output) => println!("{output}"),
        Err(err) => println!("  {err}"),
    }
}

fn all_nodes(cluster: &Cluster) -> Vec<NodeFiles> {
    cluster
        .provinces
        .iter()
        .flat_map(|province| province.nodes.iter().cloned())
        .collect()
}

fn step(what: &str) {
    println!("\n== {what}");
}
