//! The hub's modules under fuzzing, compiled from the hub's own sources
//! with the same module paths, so `super::` and `crate::` resolve as in the
//! hub.
#![allow(dead_code, missing_docs, reason = "only the fuzzed functions are used")]

#[path = "../../src/engine"]
pub mod engine {
    pub mod merge;
    pub mod task;
    pub mod template;
}

#[path = "../../src/processors"]
pub mod processors {
    pub mod protocol;
}
