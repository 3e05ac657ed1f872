//! The behavioural suite every zero-pub-sub transport must pass.
//!
//! A provider crate implements [`Factory`] (how to get an isolated storage
//! area) and expands [`conformance_suite!`] in one of its integration tests;
//! each case becomes its own `#[tokio::test]`, so failures are reported by name.
//!
//! ```
//! use std::sync::Arc;
//! use zps_conformance::{Factory, Fixture};
//! use zps_core::{MemoryTransport, Transport};
//!
//! struct Shared(MemoryTransport);
//!
//! #[async_trait::async_trait]
//! impl Fixture for Shared {
//!     async fn connect(&self) -> Arc<dyn Transport> {
//!         Arc::new(self.0.clone())
//!     }
//! }
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl Factory for Memory {
//!     async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
//!         Ok(Arc::new(Shared(MemoryTransport::default())))
//!     }
//! }
//!
//! zps_conformance::conformance_suite!(Memory);
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use zps_core::{Envelope, Realtime, Room, Subscription, SubscriptionItem, Transport};

pub mod cases;
pub mod fault;
pub mod presence;
pub mod storage;

/// How long any single wait in the suite may take before the case fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// One isolated storage area (a database schema, a key prefix, ...).
#[async_trait]
pub trait Fixture: Send + Sync {
    /// A new transport over this storage area. Calling it twice gives two
    /// independent "processes" sharing the same history (for cross-process cases).
    async fn connect(&self) -> Arc<dyn Transport>;

    /// Removes the storage area (called after a case that passed).
    async fn cleanup(&self) {}
}

/// Makes fixtures; `Err(reason)` skips the suite with a visible message.
#[async_trait]
pub trait Factory: Send + Sync {
    /// A fresh isolated fixture.
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String>;
}

/// Gets a fixture or prints why the case is skipped.
pub async fn setup(factory: &dyn Factory, case: &str) -> Option<Arc<dyn Fixture>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    match factory.fixture().await {
        Ok(f) => Some(f),
        Err(reason) => {
            skip_or_fail(case, &reason);
            None
        }
    }
}

/// Set by `cargo xtask test`: a missing service fails the test instead of skipping it.
pub const REQUIRE_SERVICES: &str = "ZPS_REQUIRE_SERVICES";

/// Prints why `test` is skipped, or panics when [`REQUIRE_SERVICES`] is set (under
/// `cargo xtask test` a missing service is a failure, never a silent pass).
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var_os(REQUIRE_SERVICES).is_some() {
        panic!("{test}: {reason}, and {REQUIRE_SERVICES} is set: the service must be running");
    }
    eprintln!("{test}: skipped: {reason}");
}

/// Whether the provider offers a capability its case needs. When it does not,
/// the case still checks something: the engine refuses `attempt` as
/// unsupported (never a silent success); the caller then returns.
pub async fn offered<T: std::fmt::Debug>(
    offered: bool,
    attempt: impl std::future::Future<Output = zps_core::Result<T>>,
) -> bool {
    if offered {
        return true;
    }
    match attempt.await {
        Err(zps_core::Error::Unsupported { .. }) => false,
        other => panic!("a capability the provider does not offer must be refused as unsupported: {other:?}"),
    }
}

/// [`offered`] for the dead-letter cases.
pub async fn offers_dead_letters(rt: &Realtime) -> bool {
    offered(
        rt.transport().dead_letters().is_some(),
        rt.dlq(unique_room("chat")).len(),
    )
    .await
}

/// [`offered`] for the presence cases.
pub async fn offers_presence(rt: &Realtime) -> bool {
    offered(
        rt.transport().presence().is_some(),
        rt.presence(unique_room("chat")).members(),
    )
    .await
}

/// An engine over a new connection of the fixture.
pub async fn engine(fixture: &dyn Fixture) -> Realtime {
    Realtime::new(fixture.connect().await)
}

/// A room name unique to this run, so cases never see each other's events.
pub fn unique_room(scope: &str) -> Room {
    let id = zps_core::envelope::generate_id();
    Room::new(scope, &id).unwrap_or_else(|e| panic!("test room: {e}"))
}

/// A scope unique to this run (for wildcard cases).
pub fn unique_scope(prefix: &str) -> String {
    let id = zps_core::envelope::generate_id().replace('-', "");
    format!("{prefix}{}", &id[id.len() - 12..])
}

/// The next event of a subscription (panics on timeout, close or discontinuity).
pub async fn next_event(sub: &mut Subscription) -> Arc<Envelope> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(SubscriptionItem::Event(e))) => e,
        Ok(Some(SubscriptionItem::Discontinuity(d))) => panic!("unexpected discontinuity: {d:?}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// Collects exactly `n` events.
pub async fn take_events(sub: &mut Subscription, n: usize) -> Vec<Arc<Envelope>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(sub).await);
    }
    out
}

/// Asserts that nothing more arrives within `window`.
pub async fn assert_quiet(sub: &mut Subscription, window: Duration) {
    if let Ok(item) = tokio::time::timeout(window, sub.next()).await {
        panic!("expected no more items, got {item:?}");
    }
}

/// Collects `n` items of any stream with the suite timeout.
pub async fn take_stream<S: Stream + Unpin>(s: &mut S, n: usize) -> Vec<S::Item> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(item)) => out.push(item),
            Ok(None) => panic!("stream ended after {} of {n} items", out.len()),
            Err(_) => panic!("stream stalled after {} of {n} items", out.len()),
        }
    }
    out
}

/// The sequences of a list of envelopes.
pub fn seqs<E: std::ops::Deref<Target = Envelope>>(events: &[E]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// Expands one `#[tokio::test]` per conformance case for a [`Factory`] expression.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::__conformance_cases!(
            $factory;
            sequences_are_gap_free_under_concurrent_publishers,
            duplicate_id_returns_the_original_and_delivers_once,
            concurrent_duplicates_store_one_event,
            publish_batch_keeps_order_and_answers_each_request,
            replay_respects_bounds_limit_and_types,
            catch_up_with_a_rare_filter_does_not_stall,
            catch_up_honours_to_sequence_max_batches_and_cursor,
            subscribe_switches_from_history_to_live_without_gap_or_duplicate,
            subscribe_starts_after_the_ack_cursor,
            live_only_subscription_skips_history,
            ack_never_moves_backwards,
            expired_events_are_not_replayed_and_are_pruned,
            resume_reports_discontinuities,
            snapshots_store_and_replace,
            multi_room_and_wildcard_live_subscriptions,
            rooms_are_isolated,
            payloads_round_trip_exactly,
            dead_letter_queue_lists_pages_and_removes,
            dead_letter_rooms_are_listed_by_prefix_in_name_order,
            failing_handler_retries_then_dead_letters,
            ephemeral_events_fan_out_and_are_not_stored,
            presence_tracks_users_across_connections,
            presence_metadata_survives_heartbeats_and_extra_connections,
            presence_latest_metadata_wins_across_connections,
            two_connections_share_one_history,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let factory = $factory;
                let Some(fixture) = $crate::setup(&factory, stringify!($case)).await else { return };
                $crate::cases::$case(fixture.clone()).await;
                fixture.cleanup().await;
            }
        )*
    };
}
