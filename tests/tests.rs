//! End-to-end tests: the real `qchat` binary on 127.0.0.1, port 0, one
//! temporary `QCHAT_HOME` per party, driven through its command line.

mod util;

mod bench;
mod chat;
mod identity;
mod lifecycle;
mod trust;
