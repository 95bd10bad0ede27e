//! A province's fleet summary, published by its controller on
//! `tollway/v1/{province}/center/status` and carried to the national centre
//! by the bridge.
//!
//! One small message per province and interval, so 29 provinces cost the
//! national link almost nothing: counts only, never per-node lists.

use crate::ids::Province;
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message};

/// A province's fleet at one moment.
///
/// Keys: 0 province, 1 time_ms, 2 nodes_total, 3 nodes_online,
/// 4 nodes_converged, 5 nodes_behind, 6 nodes_rejecting, 7 outbox_backlog,
/// 8 oldest_undelivered_s, 9 nodes_backpressure, 10 apps_failed,
/// 11 deployments, 12 deployments_rejected, 13 records_per_hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvinceStatus {
    pub province: Province,
    /// When the summary was made, Unix milliseconds.
    pub time_ms: u64,
    /// Nodes in the controller's inventory.
    pub nodes_total: u32,
    /// Nodes whose presence is online.
    pub nodes_online: u32,
    /// Nodes whose reported generation equals the generation published to them.
    pub nodes_converged: u32,
    /// Nodes that report an older generation than the one published to them.
    pub nodes_behind: u32,
    /// Nodes whose last status rejected their desired state as invalid.
    pub nodes_rejecting: u32,
    /// Sum of the nodes' reported outbox depths: records not yet stored by the centre.
    pub outbox_backlog: u64,
    /// Age of the oldest undelivered record on any node, in seconds.
    pub oldest_undelivered_s: Option<u32>,
    /// Nodes whose outbox is at its disk cap and refuses records.
    pub nodes_backpressure: u32,
    /// Apps reported failed, summed over nodes.
    pub apps_failed: u32,
    /// Deployments the controller accepted.
    pub deployments: u32,
    /// Deployments the controller rejected as invalid or impossible.
    pub deployments_rejected: u32,
    /// Records stored in the last hour, when the province's store reports it.
    pub records_per_hour: Option<u64>,
}

impl Message for ProvinceStatus {
    const NAME: &'static str = "ProvinceStatus";
    const MAX_BYTES: usize = 256;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.province.code());
        map.field(1, &self.time_ms);
        map.field(2, &self.nodes_total);
        map.field(3, &self.nodes_online);
        map.field(4, &self.nodes_converged);
        map.unless_default(5, &self.nodes_behind);
        map.unless_default(6, &self.nodes_rejecting);
        map.unless_default(7, &self.outbox_backlog);
        map.optional(8, &self.oldest_undelivered_s);
        map.unless_default(9, &self.nodes_backpressure);
        map.unless_default(10, &self.apps_failed);
        map.field(11, &self.deployments);
        map.unless_default(12, &self.deployments_rejected);
        map.optional(13, &self.records_per_hour);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let province: u8 = map.required(0, "province")?;
        let province = Province::new(province).map_err(|err| {
            DecodeError::Invalid(Invalid::new(Self::NAME, "province", err.to_string()))
        })?;
        Ok(ProvinceStatus {
            province,
            time_ms: map.required(1, "time_ms")?,
            nodes_total: map.required(2, "nodes_total")?,
            nodes_online: map.required(3, "nodes_online")?,
            nodes_converged: map.required(4, "nodes_converged")?,
            nodes_behind: map.or_default(5, "nodes_behind")?,
            nodes_rejecting: map.or_default(6, "nodes_rejecting")?,
            outbox_backlog: map.or_default(7, "outbox_backlog")?,
            oldest_undelivered_s: map.optional(8, "oldest_undelivered_s")?,
            nodes_backpressure: map.or_default(9, "nodes_backpressure")?,
            apps_failed: map.or_default(10, "apps_failed")?,
            deployments: map.required(11, "deployments")?,
            deployments_rejected: map.or_default(12, "deployments_rejected")?,
            records_per_hour: map.optional(13, "records_per_hour")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        let counts = [
            ("nodes_online", self.nodes_online),
            ("nodes_converged", self.nodes_converged),
            ("nodes_behind", self.nodes_behind),
            ("nodes_rejecting", self.nodes_rejecting),
            ("nodes_backpressure", self.nodes_backpressure),
        ];
        for (field, count) in counts {
            if count > self.nodes_total {
                return Err(Invalid::new(
                    Self::NAME,
                    field,
                    format!("{count} exceeds nodes_total {}", self.nodes_total),
                ));
            }
        }
        Ok(())
    }
}
