//! Counters on the per-frame path, registered once. With a recorder installed,
//! `metrics::counter!` looks the key up on every call; these handles do not.
//! They are created on first use, which is after `Gateway::new` installed the
//! Prometheus recorder.

use std::sync::OnceLock;

use metrics::Counter;

pub(crate) struct Hot {
    pub(crate) frames_sent: Counter,
    pub(crate) fanouts: Counter,
    pub(crate) messages_received: Counter,
}

pub(crate) fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        frames_sent: metrics::counter!("zps_gateway_frames_sent_total"),
        fanouts: metrics::counter!("zps_gateway_fanouts_total"),
        messages_received: metrics::counter!("zps_gateway_messages_received_total"),
    })
}
