//! Deployment and rollout objects as operators write them in YAML.

use tollway_topics::samples;
use tollway_topics::{Deployment, Message, PlacementMode, Rollout, SpreadBy, Wave};

const PER_NODE: &str = r#"
name: toll-app
selector: ["role in (gantry, station)", "arch = arm64"]
mode: per-node
app:
  name: toll-app
  image: localhost/tollway/toll-app:1.4.2
  next_image: localhost/tollway/toll-app:1.5.0
  command: ["/toll-app", "--rate", "20"]
  env:
    GANTRY_ID: G001544001000201010
    INTAKE: 127.0.0.1:1884
  ports:
    - { host_port: 9100, container_port: 9100 }
  mounts:
    - { source: /var/lib/tollway/apps/toll-app, target: /data }
  restart: always
  resources: { memory_bytes: 67108864, cpu_millis: 500, pids: 64 }
"#;

const REPLICAS: &str = r#"
name: plate-audit
selector: ["section = G15-03"]
mode: replicas
replicas: 3
spread_by: station
colocate_with: toll-app
app:
  name: plate-audit
  image: localhost/tollway/plate-audit:0.9.0
"#;

const ROLLOUT: &str = r#"
name: toll-app-1-5
deployment: toll-app
image: localhost/tollway/toll-app:1.5.0
waves:
  - selector: ["section = G15-03"]
  - percent: 25
  - percent: 100
rollback_on_pause: true
"#;

#[test]
fn per_node_deployment_parses() {
    let deployment: Deployment = serde_norway::from_str(PER_NODE).unwrap();
    assert_eq!(deployment, samples::deployment());
    assert!(deployment.to_cbor().is_ok());
}

#[test]
fn replicated_deployment_parses() {
    let deployment: Deployment = serde_norway::from_str(REPLICAS).unwrap();
    assert_eq!(
        deployment.placement,
        PlacementMode::Replicas {
            replicas: 3,
            spread_by: SpreadBy::Station
        }
    );
    assert_eq!(deployment, samples::replicated_deployment());
}

#[test]
fn rollout_parses_with_defaults() {
    let rollout: Rollout = serde_norway::from_str(ROLLOUT).unwrap();
    assert_eq!(rollout, samples::rollout());
    assert!(matches!(rollout.waves[1], Wave::Percent { percent: 25 }));
}

#[test]
fn unknown_field_is_rejected_with_its_name() {
    let text = PER_NODE.replace("mode: per-node", "mode: per-node\nreplica: 3");
    let err = serde_norway::from_str::<Deployment>(&text).unwrap_err();
    assert!(err.to_string().contains("replica"), "{err}");
}

#[test]
fn unknown_app_field_is_rejected_with_line() {
    let text = PER_NODE.replace("  restart: always", "  restart: always\n  restrt: never");
    let err = serde_norway::from_str::<Deployment>(&text).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("restrt"), "{message}");
    assert!(err.location().is_some(), "{message}");
}

#[test]
fn bad_selector_is_rejected() {
    let text = PER_NODE.replace("arch = arm64", "arch = arm 64");
    let err = serde_norway::from_str::<Deployment>(&text).unwrap_err();
    assert!(err.to_string().contains("arch = arm 64"), "{err}");
}

#[test]
fn bad_mode_is_rejected() {
    let text = PER_NODE.replace("mode: per-node", "mode: everywhere");
    assert!(serde_norway::from_str::<Deployment>(&text).is_err());
}
