//! HTTP: the accept loop ([`server`]; its decisions [`accept`]; the connection cap's open-files
//! limit [`fd_limit`]; the first request head [`first_head`], replayed to hyper by [`prefixed`];
//! the SSE fast path [`sse_fast`]), the API listener's route table ([`route`]) and dispatch
//! ([`api`]) over its shared state ([`state`]), the protocol handlers ([`featureflow`], [`thin`],
//! [`ofrep`], [`relay`] for child relays), and what they share: keys ([`auth`]), CORS ([`cors`]), opening SSE streams
//! ([`sse`]), the OFREP rate limiter ([`rate_limit`]), reading request bodies within their budget
//! ([`request_body`]), helpers ([`util`]), and the one place errors become status codes
//! ([`error::ApiError`]).
//!
//! Dependencies point one way: the protocol handlers use the shared modules and never each other;
//! only [`api`] knows every handler.

pub mod accept;
pub mod api;
pub mod auth;
pub mod body;
pub mod cors;
pub mod error;
pub mod fd_limit;
pub mod featureflow;
pub mod first_head;
pub mod ofrep;
pub mod prefixed;
pub mod rate_limit;
pub mod relay;
pub mod request_body;
pub mod route;
pub mod server;
pub mod sse;
pub mod sse_fast;
pub mod state;
pub mod thin;
pub mod tls;
pub mod util;
