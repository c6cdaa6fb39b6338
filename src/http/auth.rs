//! SDK keys: where a request carries its key, which environment a key opens, and whether it is a
//! server or a client key.
//!
//! Keys are opaque strings (spec §1); several per environment so a key can rotate with overlap.
//! A key never appears in logs or metrics; advertised URLs carry a stream token instead
//! ([`Keys::stream_token`]).
//! Where the key is read from: the server-SDK endpoints take `Authorization: Bearer <key>`
//! ([`bearer`]); OFREP also takes `X-API-Key` or a bare `Authorization: <key>` ([`ofrep_key`]); the
//! thin-client endpoints take it from the path, and there only a **client** key is good
//! ([`Keys::url_env`]): URLs end up in proxy and access logs, and a server key opens the rules.
//!
//! Stream tokens are `st-` + 32 hex digits of HMAC-SHA1(secret, key): without the secret
//! (`http.stream_token_secret`, else random per process) a token seen in a log cannot be checked
//! against guessed keys offline. HMAC-SHA1 is a sound keyed PRF whatever SHA-1's collision
//! weakness, and `sha1` is already what the relay hashes with.

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

pub struct Keys {
    map: HashMap<String, (Arc<EnvStore>, KeyKind)>,
    /// The key of the stream tokens.
    secret: Vec<u8>,
    /// Opaque stream tokens ([`Keys::stream_token`]) -> environment, for URLs that get logged.
    stream_tokens: HashMap<String, Arc<EnvStore>>,
}

/// A secret for the stream tokens when none is configured: 32 random bytes, so tokens are good
/// for this process only (replicas behind one load balancer should configure one).
pub fn random_stream_secret() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

/// The token that stands for `key` under `secret` (see the module docs).
fn stream_token(secret: &[u8], key: &str) -> String {
    use hmac::{Hmac, Mac};
    // HMAC takes a key of any length: new_from_slice cannot fail.
    let mac = Hmac::<sha1::Sha1>::new_from_slice(secret).map(|m| m.chain_update(key.as_bytes()).finalize().into_bytes());
    match mac {
        Ok(d) => format!("st-{}", hex::encode(&d[..16])),
        Err(_) => String::new(),
    }
}

impl Keys {
    /// The keys of `envs`, with stream tokens keyed by `secret`.
    pub fn new(envs: &[EnvironmentConfig], store: &Store, secret: Vec<u8>) -> Keys {
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
        let stream_tokens = map.iter().map(|(k, (env, _))| (stream_token(&secret, k), env.clone())).collect();
        Keys { map, secret, stream_tokens }
    }

    /// The token that stands for `key` in advertised stream URLs (OFREP `eventStreams`): URL-safe,
    /// not reversible to the key, and good only for that notification-only stream.
    pub fn stream_token(&self, key: &str) -> String {
        stream_token(&self.secret, key)
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

    /// The environment of a key taken from a URL path: a client key; a server key is refused
    /// (403) because URLs are logged.
    pub fn url_env(&self, key: &str) -> Result<&Arc<EnvStore>, ApiError> {
        if key.is_empty() {
            return Err(ApiError::MissingKey);
        }
        match self.lookup(key) {
            Some((env, KeyKind::Client)) => Ok(env),
            Some((_, KeyKind::Server)) => Err(ApiError::ServerKeyInUrl),
            None => Err(ApiError::UnknownKey),
        }
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
    fn a_stream_token_depends_on_the_secret_and_the_key_and_does_not_show_either() {
        let t = stream_token(b"secret-one", "sdk-js-1");
        assert!(t.starts_with("st-") && t.len() == 35 && t[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
        assert_eq!(t, stream_token(b"secret-one", "sdk-js-1"), "replicas with one secret agree");
        assert_ne!(t, stream_token(b"secret-two", "sdk-js-1"), "a guessed key cannot be confirmed without the secret");
        assert_ne!(t, stream_token(b"secret-one", "sdk-js-2"));
        assert!(!t.contains("sdk-js"));
        assert_ne!(random_stream_secret(), random_stream_secret());
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
