//! Streams that keep one record per subject (cursors, snapshots, event ids,
//! presence): read the newest, write with or without a compare-and-set.
//! This is what a JetStream KV bucket is underneath, without the bucket API.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use bytes::Bytes;

use super::NatsTransport;
use crate::error::{NatsError, NatsResult};

/// What a compare-and-set write found.
pub(super) enum Written {
    /// Stored.
    Stored,
    /// The subject's newest record was no longer the one expected.
    Conflict,
}

impl NatsTransport {
    /// The newest record on `subject`, if any.
    pub(super) async fn last_record(
        &self,
        stream: &stream::Stream,
        subject: &str,
        op: &'static str,
    ) -> NatsResult<Option<StreamMessage>> {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => Ok(Some(msg)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(NatsError::request(op, e, true)),
        }
    }

    /// Writes a record; with `expected`, only if the subject's newest record is
    /// still at that stream position (0: the subject is empty).
    pub(super) async fn put_record(
        &self,
        subject: String,
        value: Bytes,
        expected: Option<u64>,
        op: &'static str,
    ) -> NatsResult<Written> {
        let mut message = PublishMessage::build().payload(value);
        if let Some(position) = expected {
            message = message.expected_last_subject_sequence(position);
        }
        let ack = match self.inner.js.send_publish(subject, message).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => Ok(Written::Stored),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Written::Conflict),
            Err(e) => Err(NatsError::request(op, e, true)),
        }
    }

    /// Removes every record of `subject`.
    pub(super) async fn purge_subject(
        &self,
        stream: &stream::Stream,
        subject: &str,
        op: &'static str,
    ) -> NatsResult<()> {
        stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| NatsError::request(op, e, true))?;
        Ok(())
    }
}
