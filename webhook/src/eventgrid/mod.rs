//! The Event Grid schema, and what each event of a delivery means to kv-rotator.
//!
//! Event Grid POSTs a JSON array of events to the webhook. This module turns that
//! array into decisions, with no I/O, so [`app`](crate::app) only answers HTTP and
//! feeds the queue. Its parts, each in its own file:
//!
//! - [`envelope`]: what arrives. [`EventGridEvent`] (one event of the Event Grid
//!   schema), [`CloudEvent`] (the CloudEvents 1.0 schema), [`AegEventType`] (the
//!   `aeg-event-type` header), [`EventKind`] (what an `eventType` is to us: handshake,
//!   rotate, ignore), the handshake's [`SubscriptionValidationData`] and
//!   [`ValidationResponse`], and the rules for event ids ([`is_event_id`]) and schema
//!   versions.
//! - [`data`]: [`KeyVaultEventData`], the `data` of a Key Vault event read tolerantly,
//!   and [`SecretRef`], the secret it names after cross-checking its fields.
//! - [`secret_id`]: [`parse_secret_id`], a Key Vault secret id split into its names.
//! - [`plan`]: the decision for one event, [`plan_event`] / [`plan_cloud_event`] /
//!   [`plan_any_event`] → [`PlannedEvent`] with its [`Disposition`].
//! - [`error`]: [`EventError`], why an event is dropped. Always permanent: a malformed
//!   event never becomes valid on redelivery.
//!
//! Everything public is re-exported here, so callers write `eventgrid::plan_event`.
//!
//! # Quirks of the real payloads
//!
//! Microsoft's documented Key Vault example (see `shared/fixtures/eventgrid`) has
//! PascalCase `data` keys although other docs and SDKs use camelCase, the key
//! `"ObjectName "` with a trailing space, a `Version` value with a leading space, and
//! `NBF`/`EXP` as strings although the schema table says numbers. So keys are
//! matched after trimming and ignoring ASCII case, string values are trimmed, and
//! `NBF`/`EXP` may be integers, strings or null. No payload is published for
//! `SecretNearExpiry`/`SecretExpired`; the docs say they share the `data` shape of
//! `SecretNewVersionCreated`.

pub mod data;
pub mod envelope;
pub mod error;
pub mod plan;
pub mod secret_id;

pub use data::{KeyVaultEventData, SecretRef};
pub use envelope::{
    is_cloud_event, is_event_id, AegEventType, CloudEvent, EventGridEvent, EventKind, SubscriptionValidationData,
    ValidationResponse, AEG_EVENT_TYPE_HEADER, MAX_EVENT_ID_LEN, SECRET_EXPIRED, SECRET_NEAR_EXPIRY,
    SECRET_NEW_VERSION_CREATED, SUBSCRIPTION_DELETED_EVENT, SUBSCRIPTION_VALIDATION_EVENT,
};
pub use error::EventError;
pub use plan::{plan_any_event, plan_cloud_event, plan_event, Disposition, PlannedEvent};
pub use secret_id::{parse_secret_id, SecretIdParts};

// For the fast path, which decides the common delivery with these same pieces.
pub(crate) use data::{kv_field, KvView};
pub(crate) use envelope::{check_versions, checked_event_id, loggable_url};
pub(crate) use plan::rotation;
