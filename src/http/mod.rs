//! HTTP: the accept loop, the API routes and handlers, and the one place errors become status
//! codes ([`error::ApiError`]).

pub mod api;
pub mod auth;
pub mod body;
pub mod error;
pub mod featureflow;
pub mod ofrep;
pub mod rate_limit;
pub mod server;
pub mod sse_fast;
pub mod thin;
pub mod util;
