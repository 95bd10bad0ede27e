//! `tollwayctl get nodes|deployments|apps` and `describe node NODE`, read
//! from the controller's loopback API.

use serde_json::Value;

use crate::connection::Connection;
use crate::locale::text;
use crate::table::render;

/// A resource kind that `get` lists.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Resource {
    Nodes,
    Deployments,
    Apps,
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Lists a resource.
pub fn get(resource: Resource, output: Output, connection: &Connection) -> Result<String, String> {
    let path = match resource {
        Resource::Nodes => "/v1/nodes",
        Resource::Deployments => "/v1/deployments",
        Resource::Apps => "/v1/apps",
    };
    let list = connection.controller_get(path)?;
    if let Output::Json = output {
        return Ok(serde_json::to_string_pretty(&list).unwrap_or_default());
    }
    let items = list.as_array().cloned().unwrap_or_default();
    Ok(match resource {
        Resource::Nodes => nodes_table(&items),
        Resource::Deployments => deployments_table(&items),
        Resource::Apps => apps_table(&items),
    })
}

fn nodes_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|node| {
            vec![
                str_of(&node["node"]),
                online(&node["online"]),
                num_or_dash(&node["desired_generation"]),
                num_or_dash(&node["status"]["generation"]),
                node["desired_apps"]
                    .as_array()
                    .map_or(0, Vec::len)
                    .to_string(),
                labels(&node["labels"]),
            ]
        })
        .collect();
    render(
        &[
            "NODE",
            text("STATE", "状态"),
            "DESIRED-GEN",
            "APPLIED-GEN",
            "APPS",
            "LABELS",
        ],
        &rows,
    )
}

fn deployments_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            vec![
                str_of(&d["name"]),
                str_of(&d["state"]),
                str_of(&d["mode"]),
                num_or_dash(&d["replicas"]),
                d["nodes"].as_array().map_or(0, Vec::len).to_string(),
                str_of(&d["problem"]),
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            text("STATE", "状态"),
            "MODE",
            "REPLICAS",
            "NODES",
            text("PROBLEM", "问题"),
        ],
        &rows,
    )
}

fn apps_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            vec![
                str_of(&a["app"]),
                str_of(&a["deployment"]),
                str_of(&a["image"]),
                num_or_dash(&a["desired"]),
                num_or_dash(&a["running"]),
                num_or_dash(&a["failed"]),
                num_or_dash(&a["other"]),
            ]
        })
        .collect();
    render(
        &[
            "APP",
            "DEPLOYMENT",
            "IMAGE",
            "DESIRED",
            text("RUNNING", "运行中"),
            text("FAILED", "失败"),
            text("OTHER", "其他"),
        ],
        &rows,
    )
}

/// Shows one node in detail.
pub fn describe_node(
    node: &str,
    output: Output,
    connection: &Connection,
) -> Result<String, String> {
    let view = connection.controller_get(&format!("/v1/nodes/{node}"))?;
    if let Output::Json = output {
        return Ok(serde_json::to_string_pretty(&view).unwrap_or_default());
    }
    let status = &view["status"];
    let mut lines = vec![
        format!("{:<22}{}", "Node:", str_of(&view["node"])),
        format!(
            "{:<22}{}",
            text("State:", "状态："),
            online(&view["online"])
        ),
        format!("{:<22}{}", "Version:", str_of(&view["version"])),
        format!("{:<22}{}", "Labels:", labels(&view["labels"])),
        format!(
            "{:<22}{}",
            "Desired generation:",
            num_or_dash(&view["desired_generation"])
        ),
        format!(
            "{:<22}{}",
            "Applied generation:",
            num_or_dash(&status["generation"])
        ),
        format!(
            "{:<22}{}",
            "Outbox depth:",
            num_or_dash(&status["outbox_depth"])
        ),
        format!(
            "{:<22}{}",
            "Free disk (MiB):",
            num_or_dash(&status["free_disk_mb"])
        ),
    ];
    if let Some(reason) = status["rejected_reason"].as_str() {
        lines.push(format!(
            "{:<22}generation {}: {reason}",
            text("Rejected:", "已拒绝："),
            num_or_dash(&status["rejected_generation"])
        ));
    }
    lines.push(format!("{}:", text("Desired apps", "期望的应用")));
    let reported = status["apps"].as_array().cloned().unwrap_or_default();
    for app in view["desired_apps"].as_array().cloned().unwrap_or_default() {
        let name = str_of(&app);
        let state = reported
            .iter()
            .find(|a| a["name"] == app)
            .map(|a| {
                let reason = a["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!("{}{reason}", str_of(&a["state"]))
            })
            .unwrap_or_else(|| text("not reported", "未上报").to_string());
        lines.push(format!("  {name:<20}{state}"));
    }
    Ok(lines.join("\n"))
}

pub fn str_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

pub fn num_or_dash(value: &Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn online(value: &Value) -> String {
    if value.as_bool().unwrap_or(false) {
        text("online", "在线").to_string()
    } else {
        text("offline", "离线").to_string()
    }
}

fn labels(value: &Value) -> String {
    let Some(map) = value.as_object() else {
        return "-".to_string();
    };
    if map.is_empty() {
        return "-".to_string();
    }
    map.iter()
        .map(|(key, value)| format!("{key}={}", str_of(value)))
        .collect::<Vec<_>>()
        .join(",")
}
