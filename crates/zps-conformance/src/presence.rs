//! Presence cases: who is in a room, and whose metadata it shows; and
//! ephemeral events, the other live-only feature.
//!
//! The rule every provider honours: metadata belongs to the member (the user),
//! `enter` with `Some` sets it (the latest wins), `enter` with `None` (a
//! heartbeat, a second connection) keeps it, and it goes with the member when
//! the last connection leaves.

// A test suite: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::json;
use zps_core::{Metadata, PresenceMember, ReplayQuery};

use crate::{Fixture, engine, offered, offers_presence, take_stream, unique_room};

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
    if !offers_presence(&rt).await {
        return;
    }
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
    if !offers_presence(&rt).await {
        return;
    }
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

/// Ephemeral events reach live subscribers (filtered by type) and are never stored.
pub async fn ephemeral_events_fan_out_and_are_not_stored(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    if !offered(rt.transport().ephemeral().is_some(), async {
        let typing = zps_core::EphemeralRequest::new(unique_room("chat"), "typing", &json!({}))?;
        rt.publish_ephemeral(typing).await
    })
    .await
    {
        return;
    }
    let chat = unique_room("chat");
    let mut all = rt
        .subscribe_ephemeral(&[chat.clone().into()], None)
        .await
        .unwrap();
    let mut typing = rt
        .subscribe_ephemeral(&[chat.clone().into()], Some(vec!["typing".into()]))
        .await
        .unwrap();
    let mut req = zps_core::EphemeralRequest::new(chat.clone(), "cursor", &json!({"x": 1})).unwrap();
    req.origin = Some("conn-1".into());
    rt.publish_ephemeral(req).await.unwrap();
    rt.publish_ephemeral(
        zps_core::EphemeralRequest::new(chat.clone(), "typing", &json!({"u": "a"})).unwrap(),
    )
    .await
    .unwrap();
    let got = take_stream(&mut all, 2).await;
    assert_eq!(got[0].event_type, "cursor");
    assert_eq!(got[0].origin.as_deref(), Some("conn-1"));
    assert_eq!(got[1].payload.get(), r#"{"u":"a"}"#);
    let got = take_stream(&mut typing, 1).await;
    assert_eq!(got[0].event_type, "typing");
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(rt.room_info(&chat).await.unwrap().last_sequence, 0);
    assert_eq!(rt.metrics().ephemeral_published, 2);
    rt.close().await.unwrap();
}

/// One member per user; leaves when the last connection goes; joins/leaves announced.
pub async fn presence_tracks_users_across_connections(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    if !offers_presence(&rt).await {
        return;
    }
    let chat = unique_room("chat");
    let presence = rt.presence(chat.clone());
    let mut changes = presence.changes().await.unwrap();
    let meta = json!({"name": "Ana"}).as_object().cloned();
    assert!(presence.enter("u1", meta.clone(), "c1").await.unwrap());
    assert!(
        !presence.enter("u1", meta.clone(), "c2").await.unwrap(),
        "second connection is no new member"
    );
    assert!(presence.enter("u2", None, "c3").await.unwrap());
    let members = presence.members().await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        vec!["u1", "u2"]
    );
    assert_eq!(members[0].metadata, meta);
    assert!(!presence.leave("u1", "c1").await.unwrap());
    assert_eq!(presence.members().await.unwrap().len(), 2);
    assert!(presence.leave("u1", "c2").await.unwrap());
    assert!(
        !presence.leave("u1", "c2").await.unwrap(),
        "leaving twice is a no-op"
    );
    let members = presence.members().await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        vec!["u2"]
    );
    let got = take_stream(&mut changes, 3).await;
    assert!(matches!(&got[0], zps_core::PresenceChange::Joined { member } if member.user_id == "u1"));
    assert!(matches!(&got[1], zps_core::PresenceChange::Joined { member } if member.user_id == "u2"));
    assert!(matches!(&got[2], zps_core::PresenceChange::Left { user_id } if user_id == "u1"));
    rt.close().await.unwrap();
}
