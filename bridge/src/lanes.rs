//! The queues between the two sessions: one direction's control and bulk
//! lanes, and the pacer that drains them through the token bucket.
//!
//! The session that reads the source pushes each message into the lane its
//! rule names, through a [`LaneSender`]. The session that writes the
//! destination takes messages from its [`Outbound`] in this order: messages
//! to send again after a lost connection, then the control lane, then the
//! bulk lane. A control message that arrives while a bulk message waits for
//! tokens overtakes it. Both lanes are bounded; a full lane makes the
//! sender wait (back-pressure), and nothing is dropped.

use std::collections::VecDeque;

use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use crate::bucket::{TokenBucket, publish_packet_bytes};
use crate::rules::Lane;

/// A message on its way from the source broker to the destination broker.
#[derive(Debug, Clone)]
pub struct Forward {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub lane: Lane,
    /// The receipt that lets the source session acknowledge the message
    /// after the destination did; `None` for QoS 0 and for the bridge's own
    /// messages.
    pub source: Option<SourceAck>,
}

impl Forward {
    /// Returns the MQTT packet size, which the token bucket charges.
    pub fn cost(&self) -> u64 {
        publish_packet_bytes(&self.topic, self.payload.len(), self.qos as u8)
    }
}

/// The source's delivery of a message, to be acknowledged after the
/// destination's PUBACK.
#[derive(Debug, Clone)]
pub struct SourceAck {
    /// The source session's connection generation when the message arrived.
    /// An acknowledgement for an older connection is not sent: the source
    /// broker delivers the message again on the new connection.
    pub generation: u64,
    /// The received PUBLISH without its payload: acknowledging needs only
    /// its packet id and QoS.
    pub publish: Publish,
    /// The source session's acknowledgement queue.
    pub reply: mpsc::UnboundedSender<SourceAck>,
}

/// Creates one direction's lanes, each holding at most `capacity` messages,
/// and the pacer that drains them.
pub fn lanes(capacity: usize, bucket: TokenBucket) -> (LaneSender, Outbound) {
    let (control_tx, control_rx) = mpsc::channel(capacity);
    let (bulk_tx, bulk_rx) = mpsc::channel(capacity);
    let sender = LaneSender {
        control: control_tx,
        bulk: bulk_tx,
        capacity,
    };
    let outbound = Outbound {
        control_rx,
        bulk_rx,
        control_open: true,
        bulk_open: true,
        control_next: None,
        bulk_next: None,
        resend: VecDeque::new(),
        bucket,
    };
    (sender, outbound)
}

/// The source session's end of one direction's lanes.
#[derive(Debug, Clone)]
pub struct LaneSender {
    control: mpsc::Sender<Forward>,
    bulk: mpsc::Sender<Forward>,
    capacity: usize,
}

/// The reason a message could not be queued.
#[derive(Debug)]
pub enum QueueError {
    /// The lane is full; the caller keeps the message and waits.
    Full(Box<Forward>),
    /// The destination session has stopped (shutdown).
    Closed(Box<Forward>),
}

impl LaneSender {
    fn lane(&self, lane: Lane) -> &mpsc::Sender<Forward> {
        match lane {
            Lane::Control => &self.control,
            Lane::Bulk => &self.bulk,
        }
    }

    /// Queues a message without waiting.
    pub fn try_send(&self, forward: Forward) -> Result<(), QueueError> {
        self.lane(forward.lane)
            .try_send(forward)
            .map_err(|err| match err {
                TrySendError::Full(forward) => QueueError::Full(Box::new(forward)),
                TrySendError::Closed(forward) => QueueError::Closed(Box::new(forward)),
            })
    }

    /// Queues a message, waiting for room in its lane. Cancel-safe in the
    /// sense that a cancelled call queues nothing.
    pub async fn send(&self, forward: Forward) -> Result<(), QueueError> {
        let lane = forward.lane;
        match self.lane(lane).reserve().await {
            Ok(permit) => {
                permit.send(forward);
                Ok(())
            }
            Err(_) => Err(QueueError::Closed(Box::new(forward))),
        }
    }

    /// Waits until `lane` has room for one message (or is closed).
    pub async fn wait_for_room(&self, lane: Lane) {
        // The permit is dropped at once: the caller then sends with
        // `try_send`, which fails again only if another session took the
        // room first.
        let _ = self.lane(lane).reserve().await;
    }

    /// Returns the number of messages waiting in `lane`.
    pub fn depth(&self, lane: Lane) -> usize {
        self.capacity - self.lane(lane).capacity()
    }
}

/// The destination session's end of one direction's lanes, paced by the
/// token bucket.
#[derive(Debug)]
pub struct Outbound {
    control_rx: mpsc::Receiver<Forward>,
    bulk_rx: mpsc::Receiver<Forward>,
    control_open: bool,
    bulk_open: bool,
    /// The head of each lane, taken out of its channel so that its cost is
    /// known while it waits for tokens. Kept here rather than in a future,
    /// so a cancelled [`Outbound::next`] loses nothing.
    control_next: Option<Forward>,
    bulk_next: Option<Forward>,
    /// Messages that were in flight when a connection was lost, oldest
    /// first. At most the in-flight window, so bounded too.
    resend: VecDeque<Forward>,
    bucket: TokenBucket,
}

/// The queue that the next message is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Resend,
    Control,
    Bulk,
}

impl Outbound {
    /// Puts messages that were in flight on a lost connection in front of
    /// everything else, keeping their order.
    pub fn requeue(&mut self, forwards: impl IntoIterator<Item = Forward>) {
        let mut forwards: Vec<Forward> = forwards.into_iter().collect();
        forwards.extend(self.resend.drain(..));
        self.resend = forwards.into();
    }

    /// Returns the number of messages held outside the lanes' channels.
    pub fn held(&self) -> usize {
        self.resend.len()
            + usize::from(self.control_next.is_some())
            + usize::from(self.bulk_next.is_some())
    }

    /// Waits for the next message that the token bucket lets through.
    /// Returns `None` once both lanes are closed and empty. Cancel-safe.
    pub async fn next(&mut self) -> Option<Forward> {
        loop {
            self.fill_heads();
            let Some(source) = self.pick() else {
                if !self.wait_for_arrival().await {
                    return None;
                }
                continue;
            };

            let cost = self.peek(source).map(Forward::cost).unwrap_or(0);
            match self.bucket.try_take(cost, Instant::now()) {
                Ok(()) => return self.take(source),
                Err(wait) => self.wait_for_tokens(source, wait).await,
            }
        }
    }

    /// Moves the head of each lane out of its channel, if there is one.
    fn fill_heads(&mut self) {
        if self.control_next.is_none() {
            self.control_next = self.control_rx.try_recv().ok();
        }
        if self.bulk_next.is_none() {
            self.bulk_next = self.bulk_rx.try_recv().ok();
        }
    }

    fn pick(&self) -> Option<Source> {
        if !self.resend.is_empty() {
            Some(Source::Resend)
        } else if self.control_next.is_some() {
            Some(Source::Control)
        } else if self.bulk_next.is_some() {
            Some(Source::Bulk)
        } else {
            None
        }
    }

    fn peek(&self, source: Source) -> Option<&Forward> {
        match source {
            Source::Resend => self.resend.front(),
            Source::Control => self.control_next.as_ref(),
            Source::Bulk => self.bulk_next.as_ref(),
        }
    }

    fn take(&mut self, source: Source) -> Option<Forward> {
        match source {
            Source::Resend => self.resend.pop_front(),
            Source::Control => self.control_next.take(),
            Source::Bulk => self.bulk_next.take(),
        }
    }

    /// Waits until a message arrives in either lane. Returns false when
    /// both lanes are closed.
    async fn wait_for_arrival(&mut self) -> bool {
        if !self.control_open && !self.bulk_open {
            return false;
        }
        tokio::select! {
            biased;
            forward = self.control_rx.recv(), if self.control_open => match forward {
                Some(forward) => self.control_next = Some(forward),
                None => self.control_open = false,
            },
            forward = self.bulk_rx.recv(), if self.bulk_open => match forward {
                Some(forward) => self.bulk_next = Some(forward),
                None => self.bulk_open = false,
            },
        }
        true
    }

    /// Sleeps `wait` for tokens, but while a bulk message waits, a control
    /// message that arrives ends the sleep so that it goes first.
    async fn wait_for_tokens(&mut self, source: Source, wait: std::time::Duration) {
        let control_can_overtake =
            source == Source::Bulk && self.control_next.is_none() && self.control_open;
        if !control_can_overtake {
            tokio::time::sleep(wait).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            forward = self.control_rx.recv() => match forward {
                Some(forward) => self.control_next = Some(forward),
                None => self.control_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn message(topic: &str, lane: Lane, payload_len: usize) -> Forward {
        Forward {
            topic: topic.to_string(),
            payload: vec![0; payload_len],
            qos: QoS::AtLeastOnce,
            retain: false,
            lane,
            source: None,
        }
    }

    fn unlimited() -> TokenBucket {
        TokenBucket::new(0, 1, Instant::now())
    }

    #[tokio::test]
    async fn control_goes_before_bulk() {
        let (sender, mut outbound) = lanes(10, unlimited());
        for i in 0..3 {
            sender
                .try_send(message(&format!("bulk/{i}"), Lane::Bulk, 10))
                .unwrap();
        }
        for i in 0..2 {
            sender
                .try_send(message(&format!("control/{i}"), Lane::Control, 10))
                .unwrap();
        }

        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(outbound.next().await.unwrap().topic);
        }
        assert_eq!(
            order,
            ["control/0", "control/1", "bulk/0", "bulk/1", "bulk/2"]
        );
    }

    #[tokio::test]
    async fn resend_goes_first_in_order() {
        let (sender, mut outbound) = lanes(10, unlimited());
        sender
            .try_send(message("control/new", Lane::Control, 1))
            .unwrap();
        outbound.requeue([
            message("bulk/a", Lane::Bulk, 1),
            message("bulk/b", Lane::Bulk, 1),
        ]);
        outbound.requeue([message("control/old", Lane::Control, 1)]);

        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(outbound.next().await.unwrap().topic);
        }
        assert_eq!(order, ["control/old", "bulk/a", "bulk/b", "control/new"]);
    }

    #[tokio::test(start_paused = true)]
    async fn control_overtakes_bulk_waiting_for_tokens() {
        // 1,000 B/s with a 100-byte burst: the second bulk message of about
        // 1 KB waits about a second for tokens.
        let (sender, mut outbound) = lanes(10, TokenBucket::new(1000, 100, Instant::now()));
        sender
            .try_send(message("bulk/0", Lane::Bulk, 1000))
            .unwrap();
        sender
            .try_send(message("bulk/1", Lane::Bulk, 1000))
            .unwrap();
        assert_eq!(outbound.next().await.unwrap().topic, "bulk/0");

        let late = sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            late.try_send(message("control/0", Lane::Control, 10))
                .unwrap();
        });
        assert_eq!(outbound.next().await.unwrap().topic, "control/0");
        assert_eq!(outbound.next().await.unwrap().topic, "bulk/1");
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_bulk() {
        // Ten messages of about 1 KB at 10,000 B/s with a 1 KB burst leave
        // about 0.9 s after the first.
        let start = Instant::now();
        let (sender, mut outbound) = lanes(20, TokenBucket::new(10_000, 1000, start));
        for i in 0..10 {
            sender
                .try_send(message(&format!("bulk/{i}"), Lane::Bulk, 990))
                .unwrap();
        }
        for _ in 0..10 {
            outbound.next().await.unwrap();
        }
        let elapsed = Instant::now() - start;
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1000),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn full_lane_rejects_without_dropping() {
        let (sender, mut outbound) = lanes(2, unlimited());
        sender.try_send(message("bulk/0", Lane::Bulk, 1)).unwrap();
        sender.try_send(message("bulk/1", Lane::Bulk, 1)).unwrap();
        let rejected = match sender.try_send(message("bulk/2", Lane::Bulk, 1)) {
            Err(QueueError::Full(forward)) => forward,
            other => panic!("expected a full lane, got {other:?}"),
        };
        assert_eq!(sender.depth(Lane::Bulk), 2);
        // The control lane is separate and still has room.
        sender
            .try_send(message("control/0", Lane::Control, 1))
            .unwrap();

        // Once the pacer takes one, the waiting sender gets in.
        let waiting = {
            let sender = sender.clone();
            tokio::spawn(async move { sender.send(*rejected).await })
        };
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(outbound.next().await.unwrap().topic);
        }
        waiting.await.unwrap().unwrap();
        assert_eq!(order, ["control/0", "bulk/0", "bulk/1", "bulk/2"]);
    }

    #[tokio::test]
    async fn closed_lanes_end_the_pacer() {
        let (sender, mut outbound) = lanes(2, unlimited());
        sender.try_send(message("bulk/0", Lane::Bulk, 1)).unwrap();
        drop(sender);
        assert_eq!(outbound.next().await.unwrap().topic, "bulk/0");
        assert!(outbound.next().await.is_none());
    }
}
