//! Integration tests: the real hub binary, driven over HTTP, with the real
//! example components. One test binary, so everything links once.

mod auth;
mod bad_requests;
mod browser;
mod cli;
mod faults;
mod hot_reload;
mod llm;
mod operations;
mod processors;
mod restart;
mod soak;
mod story;
mod support;
mod ui;
mod user_step;
