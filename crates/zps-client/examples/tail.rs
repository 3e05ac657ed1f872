//! Prints every event of a room (or `scope:*` pattern) as it arrives, in order,
//! resuming across disconnects.
//!
//! ```text
//! cargo run -p zps-client --example tail -- ws://127.0.0.1:8080/ws chat:1
//! cargo run -p zps-client --example tail -- ws://127.0.0.1:8080/ws 'chat:*' --from 0
//! ```
//!
//! `--from N` starts after sequence N (0 = all retained history); `ZPS_TOKEN` is sent
//! as the token when set.

use futures::StreamExt;
use zps_client::{Client, ClientEvent, ClientOptions, ConnectionState, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(target)) = (args.first(), args.get(1)) else {
        eprintln!("usage: tail WS_URL ROOM_OR_PATTERN [--from SEQUENCE]");
        std::process::exit(2);
    };
    let mut options = SubscribeOptions::new();
    if let Some(i) = args.iter().position(|a| a == "--from") {
        let from: u64 = args.get(i + 1).ok_or("--from needs a sequence")?.parse()?;
        options = options.after(from);
    }
    let mut client_options = ClientOptions::default();
    if let Ok(token) = std::env::var("ZPS_TOKEN") {
        client_options = client_options.with_token(token);
    }
    let client = Client::connect(url.as_str(), client_options)?;

    // Connection changes go to stderr so stdout stays one event per line.
    let mut state = client.state();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let s = state.borrow_and_update().clone();
            match s {
                ConnectionState::Reconnecting { attempt, delay } => {
                    eprintln!("reconnecting (attempt {attempt}) in {delay:?}")
                }
                ConnectionState::Closed { reason } => eprintln!("closed: {reason:?}"),
                other => eprintln!("{other:?}"),
            }
        }
    });

    let mut sub = client.subscribe_with_options(target.as_str(), options).await?;
    loop {
        tokio::select! {
            item = sub.next() => match item {
                Some(ClientEvent::Event(e)) => {
                    println!("{} #{} {} {}", e.room, e.sequence, e.event_type, e.payload.get());
                }
                Some(ClientEvent::Discontinuity { room, reason, earliest_sequence, last_delivered, .. }) => {
                    eprintln!(
                        "{room}: history {} after #{last_delivered}; continuing at #{earliest_sequence}",
                        reason.as_str()
                    );
                }
                Some(other) => eprintln!("{other:?}"),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    Ok(())
}
