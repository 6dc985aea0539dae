//! mtgate: the service. Rooms (see ARCHITECTURE.md):
//!
//! * [`config`]: TOML → typed values, flags as overrides; `check` runs the same code;
//! * [`server`]: listeners and the accept loop; [`session`]: one connection's life;
//! * [`relay`] + [`pool`]: the hot path; [`upstream`] + [`dc`]: where bytes go;
//! * [`front`]: the fronting gate (budget of mask connections, silent holds);
//! * [`mask`]: fronting for connections that are not ours;
//! * [`peer`]: who a connection is from (the client behind a trusted front end);
//! * [`events`]: what sessions report, and the sinks that listen;
//! * [`admin`]: the admin listener (Prometheus metrics, health checks);
//! * [`handover`]: zero-downtime restart (listeners passed to a new process, systemd socket activation);
//! * [`reload`]: hot reload; [`policy`]: access control, rate limits, reputation, geo, user limits;
//! * [`state`], [`links`], [`cli`]: the operator's side; [`doctor`]: `mtgate doctor`.

pub mod admin;
pub mod banner;
pub mod civil;
pub mod cli;
pub mod config;
pub mod control;
pub mod dc;
pub mod doctor;
pub mod events;
pub mod fdlimit;
pub mod front;
#[cfg(unix)]
pub mod handover;
pub mod hsm;
pub mod link;
pub mod links;
pub mod logsum;
pub mod mask;
pub mod me;
pub mod memtrim;
pub mod net;
pub mod peer;
pub mod policy;
pub mod pool;
pub mod profile;
pub mod relay;
pub mod reload;
pub mod running;
pub mod runtime;
pub mod runtime_view;
pub mod server;
pub mod service;
pub mod session;
pub mod shared;
pub mod state;
pub mod stop;
pub mod upstream;
pub mod web;
pub mod x509;
