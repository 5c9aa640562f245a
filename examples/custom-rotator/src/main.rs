//! `kv-rotator` with one more rotator kind: `legacy-users`, the users file of an in-house
//! application. Everything else is the stock binary: the built-in kinds, every command.

use kv_rotator_custom_example::legacy_users::{LegacyUsersConfig, KIND};
use kv_rotator_rotators::registry::{Registry, RotatorKind};

fn main() -> std::process::ExitCode {
    kv_rotator::main_with(Registry::builtin().with(RotatorKind::new::<LegacyUsersConfig>(KIND)))
}
