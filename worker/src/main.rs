//! The `kv-rotator` binary with the built-in rotator kinds; see the crate docs of
//! `kv_rotator` for the parts, and `examples/custom-rotator/` for a binary with more kinds.

fn main() -> std::process::ExitCode {
    kv_rotator::main_with(kv_rotator_rotators::registry::Registry::builtin())
}
