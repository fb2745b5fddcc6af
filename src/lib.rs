//! taskhub: a task hub whose taskflows and environment adapters are
//! WebAssembly components, with tasks stored in SQLite.
//!
//! One module per concern; `docs/ARCHITECTURE.md` shows how a task moves
//! through them.

pub mod auth;
pub mod engine;
pub mod events;
pub mod http;
pub mod metrics;
pub mod plugin;
pub mod processors;
pub mod reload;
pub mod server;
pub mod storage;

pub use server::{HubConfig, ParentConfig, RunningHub};
