//! A Server-Sent Events reader for tests: records split on blank lines.

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;

use super::WAIT;

#[derive(Debug, Default)]
pub struct Record {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: Option<String>,
}

pub struct Sse {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Sse {
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Sse, (u16, Value)> {
        let mut req = reqwest::Client::new().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        if resp.status() != 200 {
            let status = resp.status().as_u16();
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
        })
    }

    pub async fn record(&mut self) -> Record {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut r = Record::default();
                for line in raw.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        r.comment = Some(c.trim().to_owned());
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "id" => r.id = Some(v.to_owned()),
                            "event" => r.event = Some(v.to_owned()),
                            "data" => r.data = Some(v.to_owned()),
                            "retry" => r.retry = Some(v.to_owned()),
                            _ => {}
                        }
                    }
                }
                return r;
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no SSE data in time")
                .expect("SSE stream ended")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event record (skipping heartbeats and named control records).
    pub async fn event(&mut self) -> (String, Value) {
        loop {
            let r = self.record().await;
            if r.event.is_none()
                && let (Some(id), Some(data)) = (r.id, r.data)
            {
                return (id, serde_json::from_str(&data).unwrap());
            }
        }
    }

    /// Whether the server ends the stream (after whatever is still buffered).
    pub async fn ends(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.body.next()).await {
                Ok(None) => return true,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) => return true,
                Err(_) => return false,
            }
        }
    }
}
