//! Presence cases: who is in a room, and whose metadata it shows.
//!
//! The rule every provider honours: metadata belongs to the member (the user),
//! `enter` with `Some` sets it (the latest wins), `enter` with `None` (a
//! heartbeat, a second connection) keeps it, and it goes with the member when
//! the last connection leaves.

// A test suite: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::json;
use zps_core::{Metadata, PresenceMember};

use crate::{Fixture, engine, unique_room};

fn meta(name: &str) -> Option<Metadata> {
    json!({ "name": name }).as_object().cloned()
}

/// `(user, metadata)` of every member, sorted by user.
fn shown(members: &[PresenceMember]) -> Vec<(&str, Option<&Metadata>)> {
    members
        .iter()
        .map(|m| (m.user_id.as_str(), m.metadata.as_ref()))
        .collect()
}

/// A heartbeat (`enter` with `None`) and a second connection without metadata
/// keep the member's metadata; the first connection leaving keeps it too; the
/// last leaving removes the member, and a later enter starts without it.
pub async fn presence_metadata_survives_heartbeats_and_extra_connections(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    let presence = rt.presence(chat.clone());
    let ana = meta("Ana");
    assert!(presence.enter("u1", ana.clone(), "a").await.unwrap());
    assert!(presence.enter("u2", meta("Bo"), "z").await.unwrap());
    assert!(
        !presence.enter("u1", None, "a").await.unwrap(),
        "a heartbeat is no join"
    );
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", ana.as_ref()), ("u2", meta("Bo").as_ref())],
        "a heartbeat keeps the metadata"
    );
    assert!(!presence.refresh("u1", "a").await.unwrap());
    assert!(
        !presence.enter("u1", None, "b").await.unwrap(),
        "second connection is no join"
    );
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", ana.as_ref()), ("u2", meta("Bo").as_ref())],
        "a second connection without metadata keeps it"
    );
    assert!(!presence.leave("u1", "a").await.unwrap(), "b is still there");
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", ana.as_ref()), ("u2", meta("Bo").as_ref())],
        "the first connection leaving keeps the metadata"
    );
    assert!(!presence.refresh("u1", "b").await.unwrap());
    assert_eq!(
        shown(&presence.members().await.unwrap())[0],
        ("u1", ana.as_ref()),
        "a heartbeat of the remaining connection keeps it"
    );
    assert!(
        presence.leave("u1", "b").await.unwrap(),
        "the last connection left"
    );
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u2", meta("Bo").as_ref())]
    );
    assert!(presence.enter("u1", None, "c").await.unwrap(), "a new member");
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", None), ("u2", meta("Bo").as_ref())],
        "the metadata left with the member"
    );
    rt.close().await.unwrap();
}

/// A connection entering with new metadata replaces the member's metadata for
/// all its connections: heartbeats of the others and their leaving keep the newest.
pub async fn presence_latest_metadata_wins_across_connections(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    let presence = rt.presence(chat.clone());
    let (first, second, third) = (meta("Ana"), meta("Ana B."), meta("Ana C."));
    assert!(presence.enter("u1", first.clone(), "a").await.unwrap());
    assert!(!presence.enter("u1", second.clone(), "b").await.unwrap());
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", second.as_ref())],
        "the latest enter wins"
    );
    assert!(!presence.refresh("u1", "a").await.unwrap());
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", second.as_ref())],
        "a heartbeat of the older connection does not bring its metadata back"
    );
    assert!(!presence.leave("u1", "b").await.unwrap());
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", second.as_ref())],
        "the metadata belongs to the member, not to the connection that set it"
    );
    assert!(!presence.enter("u1", third.clone(), "a").await.unwrap());
    assert!(!presence.enter("u1", None, "b").await.unwrap());
    assert!(!presence.leave("u1", "a").await.unwrap());
    assert_eq!(
        shown(&presence.members().await.unwrap()),
        vec![("u1", third.as_ref())]
    );
    assert!(presence.leave("u1", "b").await.unwrap());
    assert!(presence.members().await.unwrap().is_empty());
    rt.close().await.unwrap();
}
