//! flagrelay: a streaming feature-flag relay proxy.
//!
//! Module map (dependencies point down the list; nothing imports upward):
//! `app` wires everything; `http` and `admin` serve; `fanout` streams; `upstream` feeds `store`;
//! `eval` evaluates; `model` holds the types; `metrics`, `config`, `shutdown` are leaves;
//! `logging` (the log output, used by the binary) reads only `config` and `metrics`.

pub mod model;
pub mod compress;
pub mod eval;
pub mod config;
pub mod metrics;
pub mod shutdown;
pub mod logging;
pub mod store;
pub mod upstream;
pub mod fanout;
pub mod http;
pub mod admin;
pub mod app;
pub mod cli;
#[doc(hidden)]
pub mod fuzzing;
