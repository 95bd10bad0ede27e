//! A node's app manager driven directly for the app tests: a real outbox
//! database in a temporary directory, real Podman, and the watch channels
//! the MQTT link would feed. Each node gets a unique id, and its containers
//! are removed when it is dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollway_edge::apps::{self, AppsConfig, AppsReport, NODE};
use tollway_edge::outbox::{Outbox, OutboxConfig};
use tollway_runtime::{BackoffConfig, CancellationToken};
use tollway_testkit::podman;
use tollway_topics::{
    AppSpec, AppState, AppStatus, DesiredState, Message, NodeId, ObjectName, Resources,
    RestartPolicy,
};

/// How long a test waits for Podman to converge before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Returns a node id unique to this test process and call.
pub fn unique_node(tag: &str) -> NodeId {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    NodeId::new(format!("t-{tag}-{}-{n}", std::process::id())).expect("valid node id")
}

/// Fast timings so tests converge in seconds.
pub fn test_config() -> AppsConfig {
    AppsConfig {
        podman_socket: podman::socket(),
        reconcile_interval_s: 1,
        stop_timeout_s: 1,
        restart_backoff: BackoffConfig::new(Duration::from_millis(300), Duration::from_secs(2)),
        pull_backoff: BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(5)),
        ..AppsConfig::default()
    }
}

/// Returns the toll app spec with the given image. In most tests the app
/// finds no intake on the default port and keeps retrying, so it stays
/// running.
pub fn toll_app(image: &str) -> AppSpec {
    AppSpec {
        name: ObjectName::new("toll-app").expect("valid name"),
        image: image.to_string(),
        next_image: None,
        command: Vec::new(),
        env: [("TOLL_APP_RATE".to_string(), "1".to_string())].into(),
        ports: Vec::new(),
        mounts: Vec::new(),
        restart: RestartPolicy::Always,
        resources: Resources::default(),
    }
}

pub fn desired(generation: u64, apps: Vec<AppSpec>) -> DesiredState {
    DesiredState { generation, apps }
}

/// One node's app manager and its database.
pub struct TestNode {
    pub node: NodeId,
    pub dir: PathBuf,
    pub inbox: watch::Sender<Option<Vec<u8>>>,
    pub reports: watch::Receiver<AppsReport>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    outbox: Option<Arc<Outbox>>,
    /// Keeps the directory alive when the node made it.
    _temp: Option<tempfile::TempDir>,
}

impl TestNode {
    pub fn start(tag: &str, config: AppsConfig) -> TestNode {
        let temp = tempfile::tempdir().expect("temporary directory");
        let dir = temp.path().to_path_buf();
        let mut node = TestNode::start_in(unique_node(tag), &dir, config);
        node._temp = Some(temp);
        node
    }

    /// Starts the manager of `node` on the database in `dir`.
    pub fn start_in(node: NodeId, dir: &Path, config: AppsConfig) -> TestNode {
        let mut outbox_config = OutboxConfig::new(dir.join("outbox"));
        outbox_config.block_cache_bytes = 1024 * 1024;
        let outbox = Arc::new(Outbox::open(node.clone(), &outbox_config).expect("outbox opens"));

        let (inbox, outlet) = watch::channel(None);
        let (writer, reports) = watch::channel(AppsReport::default());
        let cancel = CancellationToken::new();
        let run = apps::run(
            config,
            node.clone(),
            outbox.database(),
            outlet,
            writer,
            cancel.clone(),
        );
        let task = tokio::spawn(async move {
            run.await.expect("app manager ends without an error");
        });
        TestNode {
            node,
            dir: dir.to_path_buf(),
            inbox,
            reports,
            cancel,
            task: Some(task),
            outbox: Some(outbox),
            _temp: None,
        }
    }

    /// Hands a desired state to the manager, as the MQTT link would.
    pub fn send(&self, state: &DesiredState) {
        let payload = state.to_cbor().expect("valid desired state encodes");
        self.inbox.send_replace(Some(payload));
    }

    pub fn send_raw(&self, payload: Vec<u8>) {
        self.inbox.send_replace(Some(payload));
    }

    /// Waits until a report satisfies `done`; fails with the last report.
    pub async fn wait_for(&mut self, what: &str, done: impl Fn(&AppsReport) -> bool) -> AppsReport {
        let result = tokio::time::timeout(PATIENCE, async {
            loop {
                let report = self.reports.borrow_and_update().clone();
                if done(&report) {
                    return report;
                }
                if self.reports.changed().await.is_err() {
                    panic!("app manager stopped while waiting for {what}; last report: {report:?}");
                }
            }
        })
        .await;
        match result {
            Ok(report) => report,
            Err(_) => panic!(
                "timed out after {PATIENCE:?} waiting for {what}; last report: {:?}",
                self.reports.borrow()
            ),
        }
    }

    /// Waits until `app` runs under `generation`.
    pub async fn wait_running(&mut self, generation: u64, app: &str) -> AppsReport {
        self.wait_for(
            &format!("{app} running at generation {generation}"),
            |report| {
                report.generation == generation
                    && app_status(report, app)
                        .is_some_and(|status| status.state == AppState::Running)
            },
        )
        .await
    }

    /// Returns the node's outbox, for an intake next to the app manager.
    pub fn outbox(&self) -> Arc<Outbox> {
        Arc::clone(self.outbox.as_ref().expect("node is running"))
    }

    /// Ids of this node's containers, as Podman lists them.
    pub fn containers(&self) -> Vec<String> {
        podman::containers_labelled(NODE, self.node.as_str())
    }

    /// Stops the manager and closes the database; containers stay.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("app manager stops within the patience")
                .expect("app manager task did not panic");
        }
        self.outbox.take();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.cancel.cancel();
        podman::remove_labelled(NODE, self.node.as_str());
    }
}

pub fn app_status<'r>(report: &'r AppsReport, app: &str) -> Option<&'r AppStatus> {
    report.apps.iter().find(|status| status.name == app)
}

/// Returns `podman inspect` of one field of a container.
pub fn inspect(id: &str, format: &str) -> String {
    podman::podman(&["inspect", "--format", format, id])
}
