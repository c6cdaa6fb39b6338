//! The key layout of the upstream contract (`docs/upstream.md`, §A of the Redis spec).
//!
//! Invariant: every key and the channel of one environment share the hash tag `{<prefix>:<env>}`,
//! so one script can touch them all and Redis Cluster keeps them in one slot.

/// The keys and channel of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvKeys {
    pub env: String,
    /// `{p:env}:rev`, the environment revision (a counter only ever raised with `INCR`).
    pub rev: String,
    /// `{p:env}:features`, feature key -> feature JSON.
    pub features: String,
    /// `{p:env}:meta`, `inited`, `epoch`, `schema`.
    pub meta: String,
    /// `{p:env}:changes`, the pub/sub channel of change messages.
    pub changes: String,
    /// `{p:env}:events`, the stream SDK events are appended to.
    pub events: String,
}

impl EnvKeys {
    pub fn new(prefix: &str, env: &str) -> EnvKeys {
        let tag = format!("{{{prefix}:{env}}}");
        EnvKeys {
            env: env.to_string(),
            rev: format!("{tag}:rev"),
            features: format!("{tag}:features"),
            meta: format!("{tag}:meta"),
            changes: format!("{tag}:changes"),
            events: format!("{tag}:events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_hash_tag() {
        let k = EnvKeys::new("flagrelay", "production");
        assert_eq!(k.rev, "{flagrelay:production}:rev");
        assert_eq!(k.features, "{flagrelay:production}:features");
        assert_eq!(k.meta, "{flagrelay:production}:meta");
        assert_eq!(k.changes, "{flagrelay:production}:changes");
        assert_eq!(k.events, "{flagrelay:production}:events");
    }
}
