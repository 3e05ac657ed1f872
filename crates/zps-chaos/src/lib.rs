//! Faults on purpose: real `zero-pub-sub` gateway processes, a TCP fault proxy
//! between clients and gateways (and between gateways and Redis), databases of
//! the scenarios' own that they crash and restart, `zps-client` subscribers and
//! publishers that record everything they see, and an independent [`checker`]
//! that decides — from those records only, never from the gateway's counters —
//! whether every acknowledged event reached every subscriber exactly once, in order.
//!
//! Beside them, [`simulation`] runs the whole delivery chain in one thread on
//! a virtual clock, thousands of seeds per test run, with the same checker.
//!
//! `cargo xtask chaos [SCENARIO…]` builds the binary and runs the scenarios;
//! the report goes to `target/chaos/report.md` and `report.json`.

pub mod checker;
pub mod gateway;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod services;
pub mod simulation;
pub mod workload;
