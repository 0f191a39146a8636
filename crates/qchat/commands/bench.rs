//! `qchat bench` and the hidden `qchat relay`: thin entry points into
//! `crate::bench`, which holds the load generator and the baseline.

use anyhow::Result;

use crate::cli::{BenchArgs, RelayArgs};

pub fn run(args: BenchArgs) -> Result<u8> {
    crate::bench::run(args)
}

pub fn relay(args: RelayArgs) -> Result<u8> {
    crate::bench::relay::run(args)
}
