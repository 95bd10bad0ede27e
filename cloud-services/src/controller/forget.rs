//! Forgetting departed nodes. A node offline for longer than
//! `controller.forget_after_s` leaves the inventory and the store, so that
//! replaced hardware does not count against `controller.max_nodes` for
//! good. Its retained desired state and presence are cleared from the
//! broker too: otherwise a restarted controller would find the presence
//! and add the node again. A node that returns after that joins as a new
//! node, and its first status raises the generation above the one it
//! applied before.

use tollway_topics::NodeId;

use super::state::Controller;

impl Controller {
    /// Removes every node offline for `forget_ms` or longer; called before
    /// each reconcile.
    pub(super) fn forget_departed(&mut self, now_ms: u64) {
        let Some(forget_ms) = self.forget_ms else {
            return;
        };
        let departed: Vec<(NodeId, u64)> = self
            .nodes
            .iter()
            .filter_map(|(node, record)| {
                let offline_ms = record.offline_for_ms(now_ms)?;
                (offline_ms >= forget_ms).then(|| (node.clone(), offline_ms))
            })
            .collect();

        for (node, offline_ms) in departed {
            if let Err(err) = self.store.delete_node(&node) {
                tracing::error!(%node, %err, "cannot delete the forgotten node from the store; trying again at the next reconcile");
                continue;
            }
            self.nodes.remove(&node);
            self.desired.remove(&node);
            // An empty retained payload clears the node's desired state.
            self.pending_desired.insert(node.clone(), Vec::new());
            self.pending_presence_clears.insert(node.clone());
            self.dirty = true;
            self.view_stale = true;
            tracing::info!(
                %node,
                offline_days = offline_ms / 86_400_000,
                "node forgotten: offline longer than controller.forget_after_s"
            );
        }
    }
}
