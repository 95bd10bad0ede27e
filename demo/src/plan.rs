//! The demo's fleet: which provinces run, which edge nodes each one has and
//! the labels operators select them by.
//!
//! Node ids carry a short run tag, so the containers of two demos (or of a
//! demo and the tests) sharing one Podman service never get mixed up.

/// Provinces of the demo: Guangdong (44) and Jiangsu (32).
pub const PROVINCES: [u8; 2] = [44, 32];
/// Edge nodes per province.
pub const NODES_PER_PROVINCE: u32 = 3;
/// Transactions per second of each toll app.
pub const APP_RATE: u32 = 10;
/// The province whose link to the national centre is cut.
pub const CUT_PROVINCE: u8 = 32;

/// One edge node of the demo.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// Node id: certificate CN, MQTT client id and `{node}` topic level.
    pub id: String,
    pub province: u8,
    /// The charging gantry this node serves, a 19-character id.
    pub gantry: String,
    pub station: String,
    pub section: String,
}

/// Returns every node of `province`, numbered from 1.
pub fn nodes_of(province: u8, run_tag: &str) -> Vec<NodePlan> {
    (1..=NODES_PER_PROVINCE)
        .map(|number| {
            // Three gantries of section G15 in the province, two stations.
            let station = if number <= 2 { 1 } else { 2 };
            NodePlan {
                id: format!("g{province}-{number}-{run_tag}"),
                province,
                gantry: format!("G0015{province}0010002{number:02}010"),
                station: format!("S0015-{province}-{station:02}"),
                section: format!("G15-{province}-07"),
            }
        })
        .collect()
}

/// Returns every node of the demo, province by province.
pub fn all_nodes(run_tag: &str) -> Vec<NodePlan> {
    PROVINCES
        .iter()
        .flat_map(|province| nodes_of(*province, run_tag))
        .collect()
}

/// Returns a 4-hex-digit tag that differs between runs on one machine.
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!("{:04x}", (nanos ^ std::process::id()) & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_gantries_are_distinct() {
        let nodes = all_nodes("ab12");
        let ids: std::collections::HashSet<_> = nodes.iter().map(|n| n.id.clone()).collect();
        let gantries: std::collections::HashSet<_> =
            nodes.iter().map(|n| n.gantry.clone()).collect();
        assert_eq!(ids.len(), nodes.len());
        assert_eq!(gantries.len(), nodes.len());
    }

    #[test]
    fn gantry_ids_have_national_length() {
        for node in all_nodes("ab12") {
            assert_eq!(node.gantry.len(), 19, "{}", node.gantry);
        }
    }
}
