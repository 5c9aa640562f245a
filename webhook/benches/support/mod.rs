//! What the webhook benchmarks send.

/// Bench deliveries name this vault; the webhooks under test allow only it.
pub const VAULT: &str = "bench-kv";

/// A one-event `SecretNearExpiry` delivery (~700 bytes) for [`VAULT`]. Its event id,
/// secret name and version come from `n`, so no two are deduplicated or coalesced.
pub fn delivery(n: u64) -> String {
    let version = format!("{n:032x}");
    format!(
        r#"[{{"id":"bench-{n}","topic":"/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/bench-kv","subject":"secret-{n}","eventType":"Microsoft.KeyVault.SecretNearExpiry","eventTime":"2024-01-01T00:00:00Z","data":{{"Id":"https://bench-kv.vault.azure.net/secrets/secret-{n}/{version}","VaultName":"bench-kv","ObjectType":"Secret","ObjectName":"secret-{n}","Version":"{version}","NBF":null,"EXP":1704067200}},"dataVersion":"1","metadataVersion":"1"}}]"#
    )
}
