//! End-to-end tests: the real `qchat` binary on 127.0.0.1, port 0, one
//! temporary `QCHAT_HOME` per party, driven through its command line.

mod util;

mod chat;
mod client_resume;
mod cluster;
mod cluster_e2e;
mod cluster_names;
mod cluster_polish;
mod cluster_rooms;
mod commands;
mod config;
mod contacts;
mod devices;
mod failover;
mod hostile;
mod identity;
mod known_hosts;
mod lifecycle;
mod limits;
mod metrics;
mod names;
mod nothing_lost;
mod operators;
mod people;
mod private;
mod prompt;
mod raw;
mod resume;
mod rooms;
mod service;
mod signed;
mod trust;
mod tui;
mod udp_relay;
