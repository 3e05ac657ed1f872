//! Publishes one durable event and prints the stored id and sequence. The gateway
//! must allow client publishing (`--allow-client-publish`); otherwise the answer is
//! error 4403.
//!
//! ```text
//! cargo run -p zps-client --example publish -- ws://127.0.0.1:8080/ws chat:1 message.created '{"text":"hi"}'
//! ```
//!
//! `ZPS_TOKEN` is sent as the token when set; `ZPS_EVENT_ID` sets the idempotency key.

use zps_client::{Client, ClientOptions, OutgoingEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, room, event_type, payload] = args.as_slice() else {
        eprintln!("usage: publish WS_URL ROOM EVENT_TYPE JSON_PAYLOAD");
        std::process::exit(2);
    };
    let payload: serde_json::Value = serde_json::from_str(payload)?;
    let mut options = ClientOptions::default();
    if let Ok(token) = std::env::var("ZPS_TOKEN") {
        options = options.with_token(token);
    }
    let client = Client::connect(url.as_str(), options)?;
    let mut event = OutgoingEvent::new(room.as_str(), event_type.as_str(), &payload)?;
    if let Ok(id) = std::env::var("ZPS_EVENT_ID") {
        event = event.with_id(id);
    }
    let outcome = client.publish(event).await;
    client.close().await;
    let published = outcome?;
    println!(
        "{} #{} id={}{}",
        published.room,
        published.sequence,
        published.id,
        if published.duplicate {
            " (duplicate: already stored)"
        } else {
            ""
        }
    );
    Ok(())
}
