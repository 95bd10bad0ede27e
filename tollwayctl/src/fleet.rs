//! `tollwayctl fleet`: the per-province summary from the national
//! aggregator's loopback API.

use crate::connection::Connection;
use crate::get::{Output, num_or_dash, str_of};
use crate::locale::text;
use crate::table::render;

/// Shows every province the aggregator has heard from.
pub fn fleet(output: Output, connection: &Connection) -> Result<String, String> {
    let view = connection.aggregator_get("/v1/fleet")?;
    if let Output::Json = output {
        return Ok(serde_json::to_string_pretty(&view).unwrap_or_default());
    }
    let provinces = view["provinces"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = provinces
        .iter()
        .map(|p| {
            vec![
                num_or_dash(&p["province"]),
                str_of(&p["name"]),
                num_or_dash(&p["nodes_total"]),
                num_or_dash(&p["nodes_online"]),
                num_or_dash(&p["nodes_offline"]),
                num_or_dash(&p["nodes_converged"]),
                num_or_dash(&p["nodes_behind"]),
                num_or_dash(&p["outbox_backlog"]),
                num_or_dash(&p["records_per_hour"]),
                str_of(&p["bridge"]),
                if p["stale"].as_bool().unwrap_or(true) {
                    text("stale", "过期").to_string()
                } else {
                    text("fresh", "最新").to_string()
                },
            ]
        })
        .collect();
    Ok(render(
        &[
            "PROVINCE",
            "NAME",
            "NODES",
            text("ONLINE", "在线"),
            text("OFFLINE", "离线"),
            "CONVERGED",
            "BEHIND",
            "BACKLOG",
            "RECORDS/H",
            "BRIDGE",
            text("STATUS", "状态"),
        ],
        &rows,
    ))
}
