//! Whether a resume position survived: the reasons delivery can jump, and the
//! rule that checks a requested position against a room's retained history.

use serde::{Deserialize, Serialize};

/// Why a room's delivery is not continuous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscontinuityReason {
    /// The history was lost or reset (new epoch); old sequences mean nothing now.
    StreamReset,
    /// The position is older than the oldest retained event (expired, pruned,
    /// trimmed), or a hole could not be read back.
    PositionExpired,
}

impl DiscontinuityReason {
    /// The wire spelling (`stream_reset`, `position_expired`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StreamReset => "stream_reset",
            Self::PositionExpired => "position_expired",
        }
    }

    /// Parses the wire spelling; an unknown reason is read as the stronger
    /// statement (`stream_reset`).
    pub fn parse(s: &str) -> Self {
        match s {
            "position_expired" => Self::PositionExpired,
            _ => Self::StreamReset,
        }
    }
}

/// Where a room's retained history starts and ends, and which history it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfo {
    /// Changes whenever the provider lost or reset this room's history;
    /// sequences are comparable only within one epoch.
    pub epoch: String,
    /// The newest sequence (0 when nothing was ever published).
    pub last_sequence: u64,
    /// The oldest sequence still retained; `last_sequence + 1` when nothing is retained.
    pub earliest_sequence: u64,
}

/// Resolves where a resume from `requested_from` (in `known_epoch`, if the caller
/// knows it) may start given the room's state: the position delivery continues
/// after and, when the position did not survive, why.
pub fn check_continuity(
    requested_from: u64,
    known_epoch: Option<&str>,
    info: &RoomInfo,
) -> (u64, Option<DiscontinuityReason>) {
    let restart = info.earliest_sequence.saturating_sub(1);
    if known_epoch.is_some_and(|e| e != info.epoch) || requested_from > info.last_sequence {
        return (restart, Some(DiscontinuityReason::StreamReset));
    }
    if requested_from < restart {
        return (restart, Some(DiscontinuityReason::PositionExpired));
    }
    (requested_from, None)
}
