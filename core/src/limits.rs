//! Key Vault's limits on what one secret version may hold, as the service documents
//! them. The stores refuse a write over them before sending it; the engine checks them
//! before it touches a target, so a rotation never fails at its last write.

/// Largest secret value, in bytes ("25k bytes" in the service documentation).
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
/// At most this many tags per version.
pub const MAX_TAGS: usize = 15;
/// Longest tag name and tag value, in characters.
pub const MAX_TAG_CHARS: usize = 256;
/// Longest `contentType`, in characters.
pub const MAX_CONTENT_TYPE_CHARS: usize = 255;
