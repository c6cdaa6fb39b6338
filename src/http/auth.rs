//! SDK keys: where a request carries its key, which environment a key opens, and whether it is a
//! server or a client key.
//!
//! Keys are opaque strings (spec §1); several per environment so a key can rotate with overlap.
//! A key never appears in logs or metrics; advertised URLs carry a [`stream_token`] instead.
//! Where the key is read from: the server-SDK endpoints take `Authorization: Bearer <key>`
//! ([`bearer`]); OFREP also takes `X-API-Key` or a bare `Authorization: <key>` ([`ofrep_key`]); the
//! thin-client endpoints take it from the path.

use std::collections::HashMap;
use std::sync::Arc;

use hyper::header::{HeaderMap, AUTHORIZATION};

use super::error::{ApiError, OfrepError};
use crate::config::EnvironmentConfig;
use crate::store::{EnvStore, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Server,
    Client,
}

#[derive(Default)]
pub struct Keys {
    map: HashMap<String, (Arc<EnvStore>, KeyKind)>,
    /// Opaque stream tokens ([`stream_token`]) -> environment, for URLs that get logged.
    stream_tokens: HashMap<String, Arc<EnvStore>>,
}

/// The token that stands for `key` in advertised stream URLs (OFREP `eventStreams`): URL-safe,
/// not reversible to the key, and good only for that notification-only stream.
pub fn stream_token(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let d = Sha1::new().chain_update(b"flagrelay-stream-token\0").chain_update(key.as_bytes()).finalize();
    format!("st-{}", hex::encode(&d[..16]))
}

impl Keys {
    pub fn new(envs: &[EnvironmentConfig], store: &Store) -> Keys {
        let mut map = HashMap::new();
        for e in envs {
            let Some(env) = store.get(&e.id) else { continue };
            for k in &e.server_keys {
                map.insert(k.0.clone(), (env.clone(), KeyKind::Server));
            }
            for k in &e.client_keys {
                map.insert(k.0.clone(), (env.clone(), KeyKind::Client));
            }
        }
        let stream_tokens = map.iter().map(|(k, (env, _))| (stream_token(k), env.clone())).collect();
        Keys { map, stream_tokens }
    }

    /// The environment of an advertised stream token.
    pub fn stream_env(&self, token: &str) -> Option<&Arc<EnvStore>> {
        self.stream_tokens.get(token)
    }

    pub fn lookup(&self, key: &str) -> Option<(&Arc<EnvStore>, KeyKind)> {
        self.map.get(key).map(|(e, k)| (e, *k))
    }

    /// A server key from `Authorization: Bearer <key>` (scheme case-insensitive).
    pub fn server_env(&self, headers: &HeaderMap) -> Result<&Arc<EnvStore>, ApiError> {
        let key = bearer(headers).ok_or(ApiError::MissingKey)?;
        match self.lookup(key) {
            Some((env, KeyKind::Server)) => Ok(env),
            Some((_, KeyKind::Client)) => Err(ApiError::ClientKeyOnServerEndpoint),
            None => Err(ApiError::UnknownKey),
        }
    }

    /// The OFREP key ([`ofrep_key`]) and its environment; any key of an environment is good.
    pub fn ofrep_env<'h>(&self, headers: &'h HeaderMap) -> Result<(&Arc<EnvStore>, &'h str), ApiError> {
        let unauthorized = || ApiError::Ofrep(OfrepError::Unauthorized);
        let key = ofrep_key(headers).ok_or_else(unauthorized)?;
        let (env, _) = self.lookup(key).ok_or_else(unauthorized)?;
        Ok((env, key))
    }

    /// Any key of an environment (client or server), e.g. from a URL path.
    pub fn any_env(&self, key: &str) -> Result<(&Arc<EnvStore>, KeyKind), ApiError> {
        if key.is_empty() {
            return Err(ApiError::MissingKey);
        }
        self.lookup(key).ok_or(ApiError::UnknownKey)
    }
}

/// The token of `Authorization: Bearer <token>`, scheme matched case-insensitively.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// The OFREP key: `X-API-Key`, else `Authorization: Bearer <key>`, else a bare `Authorization: <key>`.
pub fn ofrep_key(headers: &HeaderMap) -> Option<&str> {
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty());
    api_key.or_else(|| bearer(headers)).or_else(|| {
        let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
        (!v.is_empty() && !v.contains(' ')).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (hyper::header::HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn bearer_takes_the_token_of_a_bearer_scheme_in_any_case() {
        assert_eq!(bearer(&headers(&[("authorization", "Bearer k1")])), Some("k1"));
        assert_eq!(bearer(&headers(&[("authorization", "bEARER   k1 ")])), Some("k1"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic k1")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "k1")])), None);
        assert_eq!(bearer(&headers(&[])), None);
    }

    #[test]
    fn the_ofrep_key_prefers_x_api_key_then_bearer_then_a_bare_authorization() {
        assert_eq!(ofrep_key(&headers(&[("x-api-key", " a "), ("authorization", "Bearer b")])), Some("a"));
        assert_eq!(ofrep_key(&headers(&[("x-api-key", " "), ("authorization", "Bearer b")])), Some("b"));
        assert_eq!(ofrep_key(&headers(&[("authorization", "c")])), Some("c"));
        assert_eq!(ofrep_key(&headers(&[("authorization", "Basic c")])), None);
        assert_eq!(ofrep_key(&headers(&[])), None);
    }
}
