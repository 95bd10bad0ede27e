//! Realistic example messages: the golden vectors, the size budgets, fuzz
//! seeds and other crates' tests all start from these.
//!
//! Values follow real gantry traffic: a Guangdong gantry on the G15 Shenyang–
//! Haikou expressway, a blue-plate passenger car paying by OBU with the 5%
//! ETC discount, one toll interval per transaction.

use std::collections::BTreeMap;

use crate::ids::{NodeId, ObjectName, Province};
use crate::messages::*;
use crate::ops::{Deployment, PlacementMode, Rollout, RolloutControl, SpreadBy, Wave};
use crate::selector::Selector;

pub fn province() -> Province {
    Province::new(44).expect("44 is Guangdong")
}

pub fn node() -> NodeId {
    NodeId::new("G0015-4401-0017").expect("valid node id")
}

/// Returns a typical gantry transaction.
pub fn toll_record() -> TollRecord {
    TollRecord {
        transaction_id: "G0015440010002010102026120412351200".to_string(),
        gantry_id: "G001544001000201010".to_string(),
        pass_time_ms: 1_796_358_912_345,
        media_type: MediaType::Obu,
        media_id: 0x4401_2301_0012_3456,
        plate: "粤B12345".to_string(),
        plate_colour: PlateColour::Blue,
        vehicle_type: VehicleType::Passenger1,
        vehicle_class: VehicleClass::Ordinary,
        axle_count: 2,
        fee: 3550,
        pay_fee: 3373,
        discount_fee: 177,
        toll_intervals: vec!["G0015440010002010".to_string()],
        trade_result: TradeResult::Success,
        antenna_id: 3,
        hour_batch: 2026120412,
    }
}

/// Returns a truck transaction with a new-energy plate, paid by CPC card,
/// over two toll intervals.
pub fn truck_record() -> TollRecord {
    TollRecord {
        transaction_id: "G0015440010002010102026120412351201".to_string(),
        gantry_id: "G001544001000201010".to_string(),
        pass_time_ms: 1_796_358_913_020,
        media_type: MediaType::Cpc,
        media_id: 0x4401_9900_0000_0042,
        plate: "粤B·D12345".to_string(),
        plate_colour: PlateColour::YellowGreen,
        vehicle_type: VehicleType::Truck3,
        vehicle_class: VehicleClass::Ordinary,
        axle_count: 4,
        fee: 12_800,
        pay_fee: 12_800,
        discount_fee: 0,
        toll_intervals: vec![
            "G0015440010002010".to_string(),
            "G0015440010002020".to_string(),
        ],
        trade_result: TradeResult::Success,
        antenna_id: 1,
        hour_batch: 2026120412,
    }
}

pub fn record_batch(compression: Compression) -> RecordBatch {
    RecordBatch {
        node: node(),
        first_seq: 1001,
        records: vec![toll_record(), truck_record()],
        compression,
    }
}

pub fn record_ack() -> RecordAck {
    RecordAck {
        stored_through: 1_234_567,
    }
}

/// Returns the toll app with every field an app spec can carry.
pub fn app_spec() -> AppSpec {
    AppSpec {
        name: ObjectName::new("toll-app").expect("valid name"),
        image: "localhost/tollway/toll-app:1.4.2".to_string(),
        next_image: Some("localhost/tollway/toll-app:1.5.0".to_string()),
        command: vec![
            "/toll-app".to_string(),
            "--rate".to_string(),
            "20".to_string(),
        ],
        env: BTreeMap::from([
            ("GANTRY_ID".to_string(), "G001544001000201010".to_string()),
            ("INTAKE".to_string(), "127.0.0.1:1884".to_string()),
        ]),
        ports: vec![PortMapping {
            host_port: 9100,
            container_port: 9100,
            protocol: Protocol::Tcp,
        }],
        mounts: vec![Mount {
            source: "/var/lib/tollway/apps/toll-app".to_string(),
            target: "/data".to_string(),
            read_only: false,
        }],
        restart: RestartPolicy::Always,
        resources: Resources {
            memory_bytes: Some(64 * 1024 * 1024),
            cpu_millis: Some(500),
            pids: Some(64),
        },
    }
}

pub fn desired_state() -> DesiredState {
    let mut plate_reader = app_spec();
    plate_reader.name = ObjectName::new("plate-reader").expect("valid name");
    plate_reader.image = "localhost/tollway/plate-reader:2.0.1".to_string();
    plate_reader.next_image = None;
    plate_reader.command = Vec::new();
    plate_reader.ports = Vec::new();
    plate_reader.restart = RestartPolicy::OnFailure;
    DesiredState {
        generation: 42,
        apps: vec![app_spec(), plate_reader],
    }
}

/// Returns the heartbeat of a healthy node running five apps.
pub fn heartbeat_status() -> NodeStatus {
    let app = |name: &str| AppStatus {
        name: name.to_string(),
        state: AppState::Running,
        restarts: 0,
        reason: None,
        next_image_ready: false,
        last_switch_ms: None,
    };
    NodeStatus {
        generation: 1042,
        apps: ["toll-app", "lpr", "rsu-ctl", "ntp-sync", "log-ship"]
            .map(app)
            .to_vec(),
        outbox_depth: 0,
        oldest_undelivered_s: None,
        free_disk_mb: 12_034,
        version: "0.1.0".to_string(),
        rejected_generation: None,
        rejected_reason: None,
        backpressure: false,
    }
}

/// Returns the status of a node that has just switched its toll app to a
/// new image, 1.8 seconds out of service.
pub fn switched_status() -> NodeStatus {
    let mut status = heartbeat_status();
    status.generation = 1043;
    status.apps[0].last_switch_ms = Some(1_800);
    status
}

/// Returns the status of a node in trouble: a failed app, a backlog and a
/// rejected document.
pub fn troubled_status() -> NodeStatus {
    let mut status = heartbeat_status();
    status.apps[1].state = AppState::Failed;
    status.apps[1].restarts = 7;
    status.apps[1].reason = Some("exited with code 137 (out of memory)".to_string());
    status.apps[0].next_image_ready = true;
    status.outbox_depth = 18_250;
    status.oldest_undelivered_s = Some(5400);
    status.rejected_generation = Some(1043);
    status.rejected_reason = Some("AppSpec.image: must not be empty".to_string());
    status.backpressure = true;
    status
}

pub fn presence_online() -> Presence {
    Presence {
        online: true,
        since_ms: Some(1_796_358_000_000),
        version: Some("0.1.0".to_string()),
        labels: BTreeMap::new(),
    }
}

/// Returns the online presence of a gantry node with typical labels.
pub fn presence_labelled() -> Presence {
    Presence::online(
        1_796_358_000_000,
        "0.1.0".to_string(),
        BTreeMap::from([
            ("arch".to_string(), "arm64".to_string()),
            ("gantry".to_string(), "G001544001000201010".to_string()),
            ("role".to_string(), "gantry".to_string()),
            ("section".to_string(), "G15-03".to_string()),
            ("station".to_string(), "S4401-0017".to_string()),
        ]),
    )
}

/// Returns the summary of a province with a few nodes offline or behind.
pub fn province_status() -> ProvinceStatus {
    ProvinceStatus {
        province: province(),
        time_ms: 1_796_358_960_000,
        nodes_total: 8_412,
        nodes_online: 8_397,
        nodes_converged: 8_380,
        nodes_behind: 17,
        nodes_rejecting: 1,
        outbox_backlog: 52_310,
        oldest_undelivered_s: Some(5_400),
        nodes_backpressure: 0,
        apps_failed: 3,
        deployments: 6,
        deployments_rejected: 1,
        records_per_hour: Some(1_204_311),
    }
}

pub fn replay_command() -> Command {
    Command {
        id: 7,
        action: CommandAction::Replay {
            from_seq: 1001,
            to_seq: 1500,
        },
    }
}

pub fn logs_command() -> Command {
    Command {
        id: 8,
        action: CommandAction::CollectLogs {
            app: "toll-app".to_string(),
            tail_lines: 200,
        },
    }
}

pub fn command_result() -> CommandResult {
    CommandResult {
        id: 7,
        ok: true,
        message: Some("replayed 500 records".to_string()),
        output: None,
    }
}

pub fn hourly_summary() -> HourlySummary {
    HourlySummary {
        gantry_id: "G001544001000201010".to_string(),
        hour_batch: 2026120412,
        count: 1843,
        fee_sum: 6_215_390,
        first_seq: Some(1001),
        last_seq: Some(2843),
    }
}

pub fn forward_batch(compression: Compression) -> ForwardBatch {
    ForwardBatch {
        province: province(),
        first_seq: 88,
        records: vec![
            ForwardedRecord {
                node: node(),
                seq: 1001,
                record: toll_record(),
            },
            ForwardedRecord {
                node: node(),
                seq: 1002,
                record: truck_record(),
            },
        ],
        compression,
    }
}

pub fn bridge_state() -> BridgeState {
    BridgeState {
        online: true,
        since_ms: Some(1_796_358_000_000),
        remote: Some("national.example:8883".to_string()),
    }
}

pub fn center_event() -> CenterEvent {
    CenterEvent {
        kind: EventKind::HourIncomplete,
        subject: "G0015-4401-0017/2026120412".to_string(),
        message: "stored 1840 of 1843 records; replay of 2001..=2003 requested".to_string(),
        time_ms: 1_796_362_000_000,
    }
}

/// Returns the event a rollout publishes when its failures pause it.
pub fn rollout_paused_event() -> CenterEvent {
    CenterEvent {
        kind: EventKind::RolloutPaused,
        subject: "toll-app-1-5".to_string(),
        message: "rollout toll-app-1-5 paused in wave 1 of 3: 12 of 100 nodes failed, the failure threshold is 10%".to_string(),
        time_ms: 1_796_362_000_000,
    }
}

pub fn deployment() -> Deployment {
    Deployment {
        name: ObjectName::new("toll-app").expect("valid name"),
        selector: Selector::parse(&["role in (gantry, station)", "arch = arm64"])
            .expect("valid selector"),
        placement: PlacementMode::PerNode,
        colocate_with: None,
        app: app_spec(),
    }
}

pub fn replicated_deployment() -> Deployment {
    Deployment {
        name: ObjectName::new("plate-audit").expect("valid name"),
        selector: Selector::parse(&["section = G15-03"]).expect("valid selector"),
        placement: PlacementMode::Replicas {
            replicas: 3,
            spread_by: SpreadBy::Station,
        },
        colocate_with: Some(ObjectName::new("toll-app").expect("valid name")),
        app: AppSpec {
            name: ObjectName::new("plate-audit").expect("valid name"),
            image: "localhost/tollway/plate-audit:0.9.0".to_string(),
            next_image: None,
            command: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            mounts: Vec::new(),
            restart: RestartPolicy::Always,
            resources: Resources::default(),
        },
    }
}

pub fn rollout() -> Rollout {
    Rollout {
        name: ObjectName::new("toll-app-1-5").expect("valid name"),
        deployment: ObjectName::new("toll-app").expect("valid name"),
        image: "localhost/tollway/toll-app:1.5.0".to_string(),
        waves: vec![
            Wave::Selector {
                selector: Selector::parse(&["section = G15-03"]).expect("valid selector"),
            },
            Wave::Percent { percent: 25 },
            Wave::Percent { percent: 100 },
        ],
        success_threshold_pct: 95,
        failure_threshold_pct: 10,
        rollback_on_pause: true,
        prefetch_timeout_s: 900,
        wave_timeout_s: 3600,
        pair_label: "gantry".to_string(),
        control: RolloutControl::Run,
        resume: 0,
        settle_s: 15,
    }
}

/// Returns the rollout after an operator resumed it twice with `tollwayctl
/// rollout resume`, with a settle time longer than the default.
pub fn rollout_resumed() -> Rollout {
    Rollout {
        resume: 2,
        settle_s: 60,
        ..rollout()
    }
}
