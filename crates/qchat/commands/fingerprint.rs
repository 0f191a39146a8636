//! `qchat fingerprint`: the server's fingerprint (or with `--mine` the
//! person's own) alone on one line of stdout, so scripts can capture it and
//! people can read it out.

use anyhow::Result;

use crate::cli::FingerprintArgs;

pub fn run(args: FingerprintArgs) -> Result<u8> {
    let identity = if args.mine {
        super::my_identity()?
    } else {
        super::identity(args.cert_dir, false)?
    };
    let fp = identity.fingerprint;
    let line = if args.read_aloud {
        fp.read_aloud()
    } else if args.hex {
        fp.hex()
    } else {
        fp.canonical()
    };
    println!("{line}");
    Ok(crate::exit::OK)
}
