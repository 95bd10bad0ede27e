//! `tollwayctl rollout status|pause|resume|abort NAME`.
//!
//! `status` reads the controller API (`GET /v1/rollouts/{name}`). The
//! other commands read the accepted rollout object from the same API and
//! publish it again, retained, with a new `control` (pause and abort) or a
//! raised `resume` counter (resume), which is how the controller learns of
//! them.

use serde_json::Value;
use tollway_topics::{Message, ObjectName, Rollout, RolloutControl, Topic};

use crate::connection::Connection;
use crate::get::Output;
use crate::locale::text;
use crate::table;

/// An operator's instruction to a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

/// Prints a rollout's wave, counts per state, failures and interruptions.
pub fn status(name: &str, output: Output, connection: &Connection) -> Result<String, String> {
    let name = ObjectName::new(name).map_err(|err| err.to_string())?;
    let view = connection.controller_get(&format!("/v1/rollouts/{name}"))?;
    if let Output::Json = output {
        return Ok(serde_json::to_string_pretty(&view).unwrap_or_default());
    }
    Ok(render_status(&view))
}

fn render_status(view: &Value) -> String {
    let mut lines = vec![
        format!(
            "{:<16}{}",
            text("Rollout:", "Rollout："),
            str_of(&view["name"])
        ),
        format!("{:<16}{}", text("State:", "状态："), str_of(&view["state"])),
        format!("{:<16}{}", "Deployment:", str_of(&view["deployment"])),
        format!(
            "{:<16}{} -> {}",
            text("Image:", "镜像："),
            str_of(&view["from_image"]),
            str_of(&view["image"])
        ),
        format!(
            "{:<16}{} / {} ({})",
            text("Wave:", "批次："),
            view["wave"].as_u64().unwrap_or(0),
            view["waves"].as_u64().unwrap_or(0),
            str_of(&view["phase"])
        ),
    ];
    if let Some(reason) = view["reason"].as_str() {
        lines.push(format!("{:<16}{reason}", text("Reason:", "原因：")));
    }
    lines.push(format!(
        "{:<16}{}",
        text("This wave:", "本批次："),
        counts(&view["wave_counts"])
    ));
    lines.push(format!(
        "{:<16}{}",
        text("All waves:", "全部批次："),
        counts(&view["total_counts"])
    ));

    let failures = view["failures"].as_array().cloned().unwrap_or_default();
    if !failures.is_empty() {
        lines.push(String::new());
        lines.push(text("Failures:", "失败：").to_string());
        let rows: Vec<Vec<String>> = failures
            .iter()
            .map(|node| {
                vec![
                    str_of(&node["node"]),
                    node["wave"].as_u64().unwrap_or(0).to_string(),
                    str_of(&node["phase"]),
                    str_of(&node["reason"]),
                ]
            })
            .collect();
        lines.push(table::render(
            &[
                "NODE",
                text("WAVE", "批次"),
                text("PHASE", "阶段"),
                text("REASON", "原因"),
            ],
            &rows,
        ));
    }

    let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
    let switched: Vec<Vec<String>> = nodes
        .iter()
        .filter(|node| node["switch_ms"].is_u64())
        .map(|node| {
            vec![
                str_of(&node["node"]),
                node["wave"].as_u64().unwrap_or(0).to_string(),
                str_of(&node["phase"]),
                node["switch_ms"].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    if !switched.is_empty() {
        lines.push(String::new());
        lines.push(text("Interruptions:", "业务中断时间：").to_string());
        lines.push(table::render(
            &[
                "NODE",
                text("WAVE", "批次"),
                text("PHASE", "阶段"),
                text("SWITCH_MS", "切换毫秒"),
            ],
            &switched,
        ));
    }
    lines.join("\n")
}

/// Publishes the rollout again with the operator's instruction.
pub fn control(name: &str, control: Control, connection: &Connection) -> Result<String, String> {
    let name = ObjectName::new(name).map_err(|err| err.to_string())?;
    let view = connection.controller_get(&format!("/v1/rollouts/{name}"))?;
    let mut spec: Rollout = serde_json::from_value(view["spec"].clone()).map_err(|err| {
        format!(
            "{} {name}: {err}",
            text(
                "the controller has no accepted object for rollout",
                "控制器中没有已接受的 rollout 对象："
            )
        )
    })?;
    match control {
        Control::Pause => spec.control = RolloutControl::Pause,
        Control::Abort => spec.control = RolloutControl::Abort,
        Control::Resume => {
            spec.control = RolloutControl::Run;
            spec.resume = spec.resume.saturating_add(1);
        }
    }
    let cbor = spec.to_cbor().map_err(|err| err.to_string())?;
    let topic = Topic::rollout(name.clone()).to_string();
    connection.publish_retained(&[(topic, cbor)])?;
    let done = match control {
        Control::Pause => text("pause requested", "已请求暂停"),
        Control::Resume => text("resume requested", "已请求继续"),
        Control::Abort => text("abort requested", "已请求中止"),
    };
    Ok(format!("rollout/{name} {done}"))
}

fn counts(value: &Value) -> String {
    let Some(map) = value.as_object() else {
        return "-".to_string();
    };
    if map.is_empty() {
        return "-".to_string();
    }
    map.iter()
        .map(|(state, count)| format!("{state} {}", count.as_u64().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn str_of(value: &Value) -> String {
    value.as_str().unwrap_or("-").to_string()
}
