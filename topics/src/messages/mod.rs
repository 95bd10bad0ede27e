//! The message types of the wire contract, one file per topic family.
//!
//! Each type documents its integer keys; a key, once used, keeps its meaning
//! forever, and a retired key is never reused.

mod batch;
mod command;
mod desired;
mod forward;
mod presence;
mod province;
mod record;
mod status;
mod summary;

pub use batch::{Compression, RecordAck, RecordBatch};
pub use command::{Command, CommandAction, CommandResult};
pub use desired::{AppSpec, DesiredState, Mount, PortMapping, Protocol, Resources, RestartPolicy};
pub use forward::{BridgeState, CenterEvent, EventKind, ForwardBatch, ForwardedRecord};
pub use presence::Presence;
pub use province::ProvinceStatus;
pub use record::{
    MediaType, PlateColour, TollRecord, TradeResult, VehicleClass, VehicleType, hour_batch_at,
};
pub use status::{AppState, AppStatus, NodeStatus};
pub use summary::HourlySummary;
