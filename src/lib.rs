//! flagrelay: a streaming feature-flag relay proxy.
//!
//! Module map (dependencies point down the list; nothing imports upward):
//! `app` wires everything; `http` and `admin` serve; `fanout` streams; `upstream` feeds `store`;
//! `eval` evaluates; `model` holds the types; `metrics`, `config`, `shutdown` are leaves.

pub mod model;
pub mod eval;
