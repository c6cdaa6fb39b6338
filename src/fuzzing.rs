//! The fuzz targets' one door into the crate (`fuzz/`, `flagrelay-fuzz`): every parser that
//! outside input reaches, re-exported or thinly wrapped, so the harnesses call exactly what the
//! relay calls and nothing in `src/` is made public for them alone. Hidden from the docs; not an
//! API: it changes whenever a parser does.
//!
//! What reaches each parser: the flags file (the file source), one feature control (the file
//! source, Redis snapshots and change messages), the Redis change message, the thin-client user
//! segment and `keys` query, the OFREP request body, the first request head of a connection
//! (the SSE fast path, then the route table and the header helpers), `Last-Event-ID` (then the
//! store's resume), the parent's relay stream (a child relay's SSE parser, its events and their
//! ordering rules), and the rule engine on arbitrary features and contexts.

use std::sync::Arc;

pub use crate::eval::{
    parse_instant, CompiledFeature, Context, ContextError, EvalError, Evaluation, OfrepContextSeed, Reason, ThinResult, ThinRule,
    DATE, HOUR_OF_DAY, MAX_ATTRIBUTES, MAX_VALUES,
};
pub use crate::fanout::{FeatureflowRenderer, Renderer};
pub use crate::http::auth::{bearer, ofrep_key};
pub use crate::http::first_head::{progress, Progress};
pub use crate::http::ofrep::{parse_request, parse_request_within, RequestError};
pub use crate::http::route::{Route, Template};
pub use crate::http::sse_fast::{parse_head, Head, PEEK_BYTES};
pub use crate::http::thin::{decode_user, decode_user_within, requested_keys, UserError};
pub use crate::http::util::{last_event_id, percent_decode, wants_event_stream};
pub use crate::metrics::Metrics;
pub use crate::model::{check_size, validate, Feature, FeatureControl, InvalidFeature, Revision};
pub use crate::store::{Catchup, ChangeRecord, EnvStore, FeatureMap, Snapshot, StoreLimits, Update};
pub use crate::upstream::file::{parse as parse_flags_file, FileError};
pub use crate::upstream::redis::message::{truncate, ChangeMessage, MalformedMessage, Op};
pub use crate::upstream::relay::event::{parse as parse_relay_event, Position, RelayEvent};
pub use crate::upstream::relay::order::{decide as decide_relay_event, Decision as RelayDecision, Kind as RelayEventKind};
pub use crate::upstream::relay::sse::{Event as SseEvent, Parser as SseParser};
pub use crate::store::parse_stream_position;

/// One environment's part of the flags file as the watcher reads it: every feature control
/// with its validation, or why the part is not an object of features.
pub type EnvFeatures = Result<Vec<(String, Result<Arc<Feature>, InvalidFeature>)>, String>;

/// What the file watcher makes of a flags file for the environments `wanted` (the config's):
/// each of them that the file has, and the ids of the file's other environments.
#[derive(Debug)]
pub struct FlagsFile {
    pub envs: Vec<(String, EnvFeatures)>,
    pub unknown: Vec<String>,
}

/// The watcher's parse of a flags file (`upstream::file`'s `parse_wanted`, which a file change
/// runs), for the environments `wanted`.
pub fn flags_file(bytes: &[u8], wanted: &[&str]) -> Result<FlagsFile, FileError> {
    use crate::upstream::file::EnvPart;
    let wanted: Vec<Arc<str>> = wanted.iter().map(|w| Arc::from(*w)).collect();
    let parsed = crate::upstream::file::parse_wanted(bytes, &wanted)?;
    let envs = parsed
        .envs
        .into_iter()
        .map(|(id, part)| {
            let part = match part {
                EnvPart::Features(features) => Ok(features),
                EnvPart::Malformed(e) => Err(e.to_string()),
            };
            (id, part)
        })
        .collect();
    Ok(FlagsFile { envs, unknown: parsed.unknown })
}
