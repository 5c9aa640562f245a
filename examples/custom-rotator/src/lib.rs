//! A custom rotator kind for kv-rotator, kept outside its workspace: [`legacy_users`].
//! `main.rs` registers it beside the built-in kinds and runs the stock command line.

pub mod legacy_users;
