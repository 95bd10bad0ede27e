//! Property tests: every message type round-trips through CBOR, and no
//! input, however mangled, makes a decoder panic.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use tollway_topics::*;

fn short_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,40}"
}

fn plate() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼][A-Z][A-Z0-9]{5}",
        "[粤京][A-Z]·[DF][A-Z0-9]{5}",
    ]
}

fn hour_batch() -> impl Strategy<Value = u32> {
    (2020u32..2100, 1u32..=12, 1u32..=28, 0u32..24)
        .prop_map(|(y, m, d, h)| y * 1_000_000 + m * 10_000 + d * 100 + h)
}

fn code<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

fn toll_record() -> impl Strategy<Value = TollRecord> {
    (
        (
            short_text(),
            short_text(),
            any::<u64>(),
            code(MediaType::ALL),
            any::<u64>(),
            plate(),
        ),
        (
            code(PlateColour::ALL),
            code(VehicleType::ALL),
            code(VehicleClass::ALL),
            any::<u8>(),
        ),
        (any::<u32>(), 0u32..=u32::MAX / 2, vec(short_text(), 0..4)),
        (code(TradeResult::ALL), any::<u8>(), hour_batch()),
    )
        .prop_map(|(ids, vehicle, money, trade)| {
            let (transaction_id, gantry_id, pass_time_ms, media_type, media_id, plate) = ids;
            let (plate_colour, vehicle_type, vehicle_class, axle_count) = vehicle;
            let (fee, discount, toll_intervals) = money;
            let discount_fee = discount.min(fee);
            let (trade_result, antenna_id, hour_batch) = trade;
            TollRecord {
                transaction_id,
                gantry_id,
                pass_time_ms,
                media_type,
                media_id,
                plate,
                plate_colour,
                vehicle_type,
                vehicle_class,
                axle_count,
                fee,
                pay_fee: fee - discount_fee,
                discount_fee,
                toll_intervals,
                trade_result,
                antenna_id,
                hour_batch,
            }
        })
}

fn node_id() -> impl Strategy<Value = NodeId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| NodeId::new(s).unwrap())
}

fn object_name() -> impl Strategy<Value = ObjectName> {
    "[a-z][a-z0-9-]{0,20}[a-z0-9]".prop_map(|s| ObjectName::new(s).unwrap())
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Zstd)]
}

fn record_batch() -> impl Strategy<Value = RecordBatch> {
    (
        node_id(),
        1u64..u64::MAX / 2,
        vec(toll_record(), 0..20),
        compression(),
    )
        .prop_map(|(node, first_seq, records, compression)| RecordBatch {
            node,
            first_seq,
            records,
            compression,
        })
}

fn image() -> impl Strategy<Value = String> {
    "localhost/[a-z]{1,10}/[a-z-]{1,12}:[0-9]\\.[0-9]{1,2}\\.[0-9]"
}

fn app_spec() -> impl Strategy<Value = AppSpec> {
    (
        (
            object_name(),
            image(),
            option::of(image()),
            vec("[ -~]{0,20}", 0..4),
        ),
        btree_map("[A-Z_]{1,12}", "[ -~]{0,30}", 0..4),
        vec(
            (
                1u16..,
                1u16..,
                prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
            ),
            0..3,
        ),
        vec(("/[a-z/]{1,20}", "/[a-z/]{1,20}", any::<bool>()), 0..3),
        (
            prop_oneof![
                Just(RestartPolicy::Always),
                Just(RestartPolicy::OnFailure),
                Just(RestartPolicy::Never)
            ],
            option::of(any::<u64>()),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
        ),
    )
        .prop_map(
            |(
                (name, image, next_image, command),
                env,
                ports,
                mounts,
                (restart, memory_bytes, cpu_millis, pids),
            )| AppSpec {
                name,
                image,
                next_image,
                command,
                env,
                ports: ports
                    .into_iter()
                    .map(|(host_port, container_port, protocol)| PortMapping {
                        host_port,
                        container_port,
                        protocol,
                    })
                    .collect(),
                mounts: mounts
                    .into_iter()
                    .map(|(source, target, read_only)| Mount {
                        source,
                        target,
                        read_only,
                    })
                    .collect(),
                restart,
                resources: Resources {
                    memory_bytes,
                    cpu_millis,
                    pids,
                },
            },
        )
}

fn desired_state() -> impl Strategy<Value = DesiredState> {
    (any::<u64>(), vec(app_spec(), 0..6)).prop_map(|(generation, apps)| {
        // App names must be unique within one document.
        let mut seen = BTreeMap::new();
        let apps = apps
            .into_iter()
            .filter(|app| seen.insert(app.name.clone(), ()).is_none())
            .collect();
        DesiredState { generation, apps }
    })
}

fn app_status() -> impl Strategy<Value = AppStatus> {
    (
        short_text(),
        code(AppState::ALL),
        any::<u32>(),
        option::of("[ -~]{0,60}"),
        any::<bool>(),
        option::of(any::<u32>()),
    )
        .prop_map(
            |(name, state, restarts, reason, next_image_ready, last_switch_ms)| AppStatus {
                name,
                state,
                restarts,
                reason,
                next_image_ready,
                last_switch_ms,
            },
        )
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        any::<u64>(),
        vec(app_status(), 0..8),
        any::<u64>(),
        option::of(any::<u32>()),
        any::<u32>(),
        "[0-9]\\.[0-9]\\.[0-9]",
        (
            option::of(any::<u64>()),
            option::of("[ -~]{0,60}"),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                generation,
                apps,
                outbox_depth,
                oldest_undelivered_s,
                free_disk_mb,
                version,
                (rejected_generation, rejected_reason, backpressure),
            )| NodeStatus {
                generation,
                apps,
                outbox_depth,
                oldest_undelivered_s,
                free_disk_mb,
                version,
                rejected_generation,
                rejected_reason,
                backpressure,
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    let action = prop_oneof![
        (1u64..1_000_000, 0u64..1_000).prop_map(|(from_seq, len)| CommandAction::Replay {
            from_seq,
            to_seq: from_seq + len
        }),
        ("[a-z]{1,20}", any::<u32>())
            .prop_map(|(app, tail_lines)| CommandAction::CollectLogs { app, tail_lines }),
        hour_batch().prop_map(|hour_batch| CommandAction::ResendSummary { hour_batch }),
    ];
    (any::<u64>(), action).prop_map(|(id, action)| Command { id, action })
}

fn hourly_summary() -> impl Strategy<Value = HourlySummary> {
    (
        short_text(),
        hour_batch(),
        0u64..10_000,
        any::<u64>(),
        1u64..1_000_000,
        0u64..1_000,
    )
        .prop_map(|(gantry_id, hour_batch, count, fee_sum, first, slack)| {
            let (first_seq, last_seq) = if count == 0 {
                (None, None)
            } else {
                (Some(first), Some(first + count - 1 + slack))
            };
            HourlySummary {
                gantry_id,
                hour_batch,
                count,
                fee_sum,
                first_seq,
                last_seq,
            }
        })
}

fn forward_batch() -> impl Strategy<Value = ForwardBatch> {
    (
        proptest::sample::select(Province::all().collect::<Vec<_>>()),
        1u64..u64::MAX / 2,
        vec((node_id(), 1u64.., toll_record()), 0..10),
        compression(),
    )
        .prop_map(|(province, first_seq, records, compression)| ForwardBatch {
            province,
            first_seq,
            records: records
                .into_iter()
                .map(|(node, seq, record)| ForwardedRecord { node, seq, record })
                .collect(),
            compression,
        })
}

fn province_status() -> impl Strategy<Value = ProvinceStatus> {
    (
        (
            proptest::sample::select(Province::all().collect::<Vec<_>>()),
            any::<u64>(),
            any::<u32>(),
        ),
        (any::<u64>(), option::of(any::<u32>()), any::<u32>()),
        (any::<u32>(), any::<u32>(), option::of(any::<u64>())),
        vec(any::<u32>(), 5),
    )
        .prop_map(|(head, backlog, objects, fractions)| {
            let (province, time_ms, nodes_total) = head;
            let (outbox_backlog, oldest_undelivered_s, apps_failed) = backlog;
            let (deployments, deployments_rejected, records_per_hour) = objects;
            // Node counts never exceed the total, as validation requires.
            let part = |index: usize| fractions[index] % nodes_total.saturating_add(1);
            ProvinceStatus {
                province,
                time_ms,
                nodes_total,
                nodes_online: part(0),
                nodes_converged: part(1),
                nodes_behind: part(2),
                nodes_rejecting: part(3),
                outbox_backlog,
                oldest_undelivered_s,
                nodes_backpressure: part(4),
                apps_failed,
                deployments,
                deployments_rejected,
                records_per_hour,
            }
        })
}

fn assert_round_trip<M: Message + PartialEq + std::fmt::Debug>(
    value: &M,
) -> Result<(), TestCaseError> {
    let bytes = value
        .to_cbor()
        .map_err(|err| TestCaseError::fail(err.to_string()))?;
    let decoded = M::from_cbor(&bytes).map_err(|err| TestCaseError::fail(err.to_string()))?;
    prop_assert_eq!(&decoded, value);
    prop_assert_eq!(decoded.to_cbor().unwrap(), bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn toll_record_round_trips(value in toll_record()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn record_batch_round_trips(value in record_batch()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn record_ack_round_trips(stored_through: u64) {
        assert_round_trip(&RecordAck { stored_through })?;
    }

    #[test]
    fn desired_state_round_trips(value in desired_state()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn node_status_round_trips(value in node_status()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn presence_round_trips(online: bool, since_ms in option::of(any::<u64>()), version in option::of("[0-9.]{1,10}"), labels in btree_map("[a-z][a-z0-9.-]{0,20}", "[A-Za-z0-9_.-]{1,30}", 0..8)) {
        assert_round_trip(&Presence { online, since_ms, version, labels })?;
    }

    #[test]
    fn province_status_round_trips(value in province_status()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn command_round_trips(value in command()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn command_result_round_trips(id: u64, ok: bool, message in option::of("[ -~]{0,80}"), output in option::of(".{0,200}")) {
        assert_round_trip(&CommandResult { id, ok, message, output })?;
    }

    #[test]
    fn hourly_summary_round_trips(value in hourly_summary()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn forward_batch_round_trips(value in forward_batch()) {
        assert_round_trip(&value)?;
    }

    #[test]
    fn bridge_state_round_trips(online: bool, since_ms in option::of(any::<u64>()), remote in option::of("[a-z.:0-9]{1,40}")) {
        assert_round_trip(&BridgeState { online, since_ms, remote })?;
    }

    #[test]
    fn center_event_round_trips(kind in code(EventKind::ALL), subject in short_text(), message in "[ -~]{1,100}", time_ms: u64) {
        assert_round_trip(&CenterEvent { kind, subject, message, time_ms })?;
    }

    #[test]
    fn tombstone_round_trips(name in object_name(), deleted_at_ms: u64) {
        let tombstone = Tombstone { name, deleted_at_ms };
        assert_round_trip(&tombstone)?;
        prop_assert!(Tombstone::is_tombstone(&tombstone.to_cbor().unwrap()));
    }

    /// No object decodes as a tombstone, and no tombstone as an object.
    #[test]
    fn tombstone_and_object_never_mix(name in object_name(), app in app_spec(), deleted_at_ms: u64) {
        let deployment = Deployment { name: name.clone(), selector: Selector::default(), placement: PlacementMode::PerNode, colocate_with: None, app };
        prop_assert!(!Tombstone::is_tombstone(&deployment.to_cbor().unwrap()));
        let tombstone = Tombstone { name, deleted_at_ms }.to_cbor().unwrap();
        prop_assert!(Deployment::from_cbor(&tombstone).is_err());
        prop_assert!(Rollout::from_cbor(&tombstone).is_err());
    }

    #[test]
    fn deployment_round_trips(
        name in object_name(),
        app in app_spec(),
        replicas in option::of((1u32..1000, prop_oneof![Just(SpreadBy::Node), Just(SpreadBy::Station), Just(SpreadBy::Section)])),
        selector in vec(prop_oneof![
            ("[a-z]{1,8}", "[a-z0-9-]{1,8}").prop_map(|(k, v)| format!("{k} = {v}")),
            ("[a-z]{1,8}", vec("[a-z0-9]{1,8}", 1..4)).prop_map(|(k, v)| format!("{k} in ({})", v.join(", "))),
            "[a-z]{1,8}".prop_map(|k| format!("!{k}")),
        ], 0..4),
    ) {
        let placement = match replicas {
            None => PlacementMode::PerNode,
            Some((replicas, spread_by)) => PlacementMode::Replicas { replicas, spread_by },
        };
        let deployment = Deployment { name, selector: Selector::parse(&selector).unwrap(), placement, colocate_with: None, app };
        assert_round_trip(&deployment)?;
    }

    /// Random bytes never panic any decoder.
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = TollRecord::from_cbor(&bytes);
        let _ = RecordBatch::from_cbor(&bytes);
        let _ = RecordAck::from_cbor(&bytes);
        let _ = DesiredState::from_cbor(&bytes);
        let _ = NodeStatus::from_cbor(&bytes);
        let _ = Presence::from_cbor(&bytes);
        let _ = ProvinceStatus::from_cbor(&bytes);
        let _ = Command::from_cbor(&bytes);
        let _ = CommandResult::from_cbor(&bytes);
        let _ = HourlySummary::from_cbor(&bytes);
        let _ = ForwardBatch::from_cbor(&bytes);
        let _ = BridgeState::from_cbor(&bytes);
        let _ = CenterEvent::from_cbor(&bytes);
        let _ = Deployment::from_cbor(&bytes);
        let _ = Rollout::from_cbor(&bytes);
        let _ = Tombstone::from_cbor(&bytes);
    }

    /// Flipping bytes of a valid message never panics, and whatever still
    /// decodes re-encodes.
    #[test]
    fn mutated_vectors_never_panic(index in any::<prop::sample::Index>(), value: u8) {
        let mut bytes = samples::desired_state().to_cbor().unwrap();
        let at = index.index(bytes.len());
        bytes[at] = value;
        if let Ok(decoded) = DesiredState::from_cbor(&bytes) {
            prop_assert!(decoded.to_cbor().is_ok());
        }
        let mut batch = samples::record_batch(Compression::None).to_cbor().unwrap();
        let at = index.index(batch.len());
        batch[at] = value;
        let _ = RecordBatch::from_cbor(&batch);
    }
}
