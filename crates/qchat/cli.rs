//! The command line. Flags are parsed here and checked in each command
//! before any networking starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use qchat_proto::limits;
use qchat_server::{OptionsError, ServerOptions};
use qchat_tls::{HostError, HostKey};

/// The version and the commit it was built from (`build.rs`), so a bug
/// report names the exact source.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("QCHAT_COMMIT"), ")");

/// Encrypted terminal chat over QUIC.
#[derive(Debug, Parser)]
#[command(name = "qchat", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a chat server.
    Serve(Box<ServeArgs>),
    /// Join the room on a server.
    Connect(ConnectArgs),
    /// Print this machine's server fingerprint, or with --mine your own
    /// (each created on first use).
    Fingerprint(FingerprintArgs),
    /// Manage your own key, which servers bind your name to.
    Identity(IdentityArgs),
    /// List, remove, replace or verify the server keys this client has pinned.
    KnownHosts(KnownHostsArgs),
    /// List, remove or add the people you verified (shown with ✓ in chats).
    Contacts(ContactsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the manual page (roff), for `man -l -` or a man directory.
    Man,
}

/// `qchat completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `qchat serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings file (TOML; keys are these flags without the leading --).
    /// Default: $QCHAT_HOME/server.toml when it exists. Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the settings (flags and file), print each effective value and
    /// where it came from, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// The settings file that was read, if any.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
    /// The command line these settings came from, to read the file again
    /// on a reload with the same flags on top.
    #[arg(skip)]
    pub argv: Vec<std::ffi::OsString>,
    /// Every setting's effective value and origin.
    #[arg(skip)]
    pub effective: Vec<crate::config::Effective>,
    /// Address and port to listen on; port 0 picks a free port.
    #[arg(long, default_value = "[::]:8080")]
    pub listen: SocketAddr,
    /// The server's name, shown to members when they join; also your name
    /// in the room when you sit at the server as its operator.
    #[arg(long)]
    pub name: Option<String>,
    /// Run without an operator in the room (for services). Without it, the
    /// operator joins from the terminal, or from standard input when it is
    /// not a terminal and --name is given.
    #[arg(long)]
    pub headless: bool,
    /// Folder with the server identity (cert.pem, key.pem).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Replace the server identity with a new key. Every client will see a
    /// changed key and refuse to connect until its pin is replaced.
    #[arg(long)]
    pub new_identity: bool,
    /// Do not ring the terminal bell when someone mentions you (full-screen
    /// interface).
    #[arg(long)]
    pub no_bell: bool,
    /// Worker threads for the async runtime (1 = single-threaded).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Folder of the room log (default: $QCHAT_HOME/server), created
    /// readable by you alone.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the room log lives: `file` (kept across restarts) or `memory`
    /// (lost when the server stops; for tests and measurements).
    #[arg(long, value_enum, default_value_t = StoreKind::File)]
    pub store: StoreKind,
    /// How each batch of messages reaches the disk: `full` waits for the
    /// disk (survives a power cut); `none` leaves it to the operating system
    /// (survives a crash of the server, not of the machine).
    #[arg(long, value_enum, default_value_t = SyncArg::Full)]
    pub sync: SyncArg,
    /// Public messages the room log keeps; older ones are deleted.
    #[arg(long, default_value_t = limits::HISTORY_KEEP, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_keep: u64,
    /// Also delete public messages older than this many seconds (checked
    /// whenever a message is stored).
    #[arg(long, value_name = "SECS", value_parser = parse_secs_arg)]
    pub history_max_age: Option<Secs>,
    /// Keep private conversations' history (`on`: stored like the room log,
    /// in `private.redb` or memory as `--store` says, and replayed to their
    /// two members after a reconnect; `off`: delivered live only, never
    /// stored).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub private_history: Switch,
    /// Private messages each conversation keeps; older ones are deleted.
    #[arg(long, default_value_t = limits::PRIVATE_KEEP, value_parser = clap::value_parser!(u64).range(1..))]
    pub private_keep: u64,
    /// Do not let a member's connection move to a new address (QUIC
    /// migration); a member whose address changes then reconnects.
    #[arg(long)]
    pub no_migration: bool,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics; a bare
    /// PORT means 127.0.0.1:PORT (off by default).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// Refuse members who connect without a key (guests: older clients,
    /// and clients told to connect as guests); they are told why.
    #[arg(long)]
    pub keys_required: bool,
    /// How long a registered name stays bound to its key while unused;
    /// then the next key to use it claims it. A number with s, m, h or d
    /// (seconds, minutes, hours, days).
    #[arg(long, value_name = "AGE", default_value_t = Age(limits::NAME_EXPIRY), value_parser = parse_age)]
    pub name_expiry: Age,
    /// How long a link code from /device link works (10 minutes). Hidden:
    /// only the tests shorten it, to see an expired code refused.
    #[arg(long, value_name = "AGE", default_value_t = Age(limits::LINK_TTL), value_parser = parse_link_ttl, hide = true)]
    pub link_ttl: Age,
    /// A key that is an operator (may /kick, /ban, /op), besides the
    /// host's own: its fingerprint, in any spelling (as `qchat fingerprint`
    /// prints a person's own key in that person's home). Repeat for more.
    /// Chat can neither take these rights away nor ban these keys.
    #[arg(long = "operator", value_name = "FP", value_parser = parse_fingerprint)]
    pub operators: Vec<qchat_tls::Fingerprint>,
    /// How long banning a guest (a member without a key) bans the address
    /// it came from; such bans are kept in memory only. A number with s,
    /// m, h or d.
    #[arg(long, value_name = "AGE", default_value_t = Age(limits::GUEST_BAN), value_parser = parse_age)]
    pub guest_ban: Age,
    /// Be a node of a cluster: the NATS server (with JetStream) every node
    /// connects to, as nats://HOST:PORT or tls://HOST:PORT, several
    /// comma-separated. The rooms' logs are then kept in JetStream and
    /// shared by every node (not with --store memory).
    #[arg(long, value_name = "URLS")]
    pub cluster: Option<String>,
    /// A NATS credentials file (user JWT and nkey seed) to connect with.
    #[arg(long, value_name = "FILE")]
    pub cluster_creds: Option<PathBuf>,
    /// PEM certificate authorities that sign the NATS server's certificate
    /// (then TLS is required).
    #[arg(long, value_name = "FILE")]
    pub cluster_ca: Option<PathBuf>,
    /// A PEM client certificate for a NATS server that authenticates nodes
    /// by certificate (with --cluster-key).
    #[arg(long, value_name = "FILE")]
    pub cluster_cert: Option<PathBuf>,
    /// The key of --cluster-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
    /// The address clients reach this node at, HOST:PORT, for the
    /// cluster's node list (default: the listen address, or the first
    /// address the server announces when it listens on all of them).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_advertise)]
    pub advertise: Option<String>,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// A HOST:PORT: a host (name or address) and a port, as a client would
/// connect to it.
fn parse_advertise(s: &str) -> Result<String, String> {
    // The node list clients are sent leaves out a longer entry, so such a
    // node would be silently missing from every client's list.
    let max = qchat_proto::limits::MAX_NODE_ADDR_BYTES;
    if s.len() > max {
        return Err(format!(
            "{} bytes is longer than the {max} bytes a node's address may have",
            s.len()
        ));
    }
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not HOST:PORT")),
    }
}

/// Limits a server enforces; each is described in docs/SECURITY.md.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest frame accepted from a client, in bytes; at least the
    /// default, which is the largest frame a qchat client sends.
    #[arg(long, default_value_t = limits::MAX_CLIENT_FRAME, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64..=16_777_216))]
    pub max_frame: usize,
    /// Longest message accepted, in bytes; with its envelope it must fit
    /// --max-frame.
    #[arg(long, default_value_t = limits::MAX_MESSAGE_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_048_576))]
    pub max_message: usize,
    /// Seconds a new connection has to send its hello.
    #[arg(long, default_value_t = Secs(limits::HELLO_TIMEOUT), value_parser = parse_secs_arg)]
    pub hello_timeout: Secs,
    /// Seconds of silence after which a peer counts as gone.
    #[arg(long, default_value_t = Secs(limits::IDLE_TIMEOUT), value_parser = parse_secs_arg)]
    pub idle_timeout: Secs,
    /// Seconds between keep-alive packets; must be below the idle timeout
    /// (default: 3, or a third of a shorter idle timeout).
    #[arg(long, value_parser = parse_secs_arg)]
    pub keep_alive: Option<Secs>,
    /// Frames queued for a member before it is disconnected as not reading.
    #[arg(long, default_value_t = limits::SESSION_QUEUE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1_000_000))]
    pub queue: usize,
    /// Connections allowed at once.
    #[arg(long, default_value_t = limits::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections allowed at once from one IP address.
    #[arg(long, default_value_t = limits::MAX_PER_IP)]
    pub max_per_ip: usize,
    /// Connections from one IP address allowed at once before they have
    /// joined (still in the handshake or waiting for their hello).
    #[arg(long, default_value_t = limits::MAX_UNJOINED_PER_IP, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_unjoined_per_ip: usize,
    /// Rooms the server keeps at most, #lobby included; /join of a new
    /// room beyond it is refused with the reason.
    #[arg(long, default_value_t = limits::MAX_ROOMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_rooms: usize,
    /// Rooms besides #lobby one member may be in at once.
    #[arg(long, default_value_t = limits::MAX_ROOMS_PER_MEMBER, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub max_rooms_per_member: usize,
    /// Members a room besides #lobby admits at once.
    #[arg(long, default_value_t = limits::MAX_ROOM_MEMBERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_room_members: usize,
    /// Messages per second a member may send on average (0 = unlimited).
    #[arg(long, default_value_t = limits::RATE)]
    pub rate: u32,
    /// Messages a member may send at once before the rate applies.
    #[arg(long, default_value_t = limits::BURST, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub burst: u32,
    /// Messages that may wait beyond the burst; more is a flood and ends
    /// the session.
    #[arg(long, default_value_t = limits::BACKLOG, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub backlog: usize,
    /// Handshakes per second above which new addresses get a QUIC Retry
    /// first (0 = always).
    #[arg(long, default_value_t = limits::RETRY_THRESHOLD)]
    pub retry_threshold: u32,
    /// Public messages replayed to members who join (0 disables).
    #[arg(long, default_value_t = limits::HISTORY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub history: usize,
    /// Messages replayed at most to a member resuming after a reconnect;
    /// older ones are counted as missed.
    #[arg(long, default_value_t = limits::REPLAY_MAX, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    pub replay_max: usize,
    /// Seconds a dropped member's name is kept for its reconnect (0: it
    /// leaves at once).
    #[arg(long, default_value_t = Secs(limits::RECONNECT_GRACE), value_parser = parse_secs_arg)]
    pub reconnect_grace: Secs,
}

/// Where the room log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// An embedded database file in the data folder.
    File,
    /// Memory only.
    Memory,
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncArg {
    /// fsync every batch.
    Full,
    /// No fsync.
    None,
}

/// Server addresses are checked while parsing, so a bad one (`:99999`) is a
/// usage error like any other bad flag: exit status 2 and clap's message.
fn parse_host(s: &str) -> Result<HostKey, HostError> {
    HostKey::parse(s, qchat_proto::DEFAULT_PORT)
}

/// A number of seconds as a flag value: parsed from and shown as seconds,
/// so a default taken from `limits` prints as `5`, not `5s` or `5000ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A duration written with its unit (`2s`, `90m`, `12h`, `180d`), for
/// settings measured in days as readily as in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(pub Duration);

impl std::fmt::Display for Age {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        if self.0.subsec_nanos() != 0 || secs == 0 {
            write!(f, "{}s", self.0.as_secs_f64())
        } else if secs % 86_400 == 0 {
            write!(f, "{}d", secs / 86_400)
        } else if secs % 3_600 == 0 {
            write!(f, "{}h", secs / 3_600)
        } else if secs % 60 == 0 {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

fn parse_age(s: &str) -> Result<Age, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit_secs = match unit {
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?}; use s, m, h or d (as in 180d)"
            ))
        }
    };
    let n: f64 = number.parse().map_err(|_| {
        format!("{s:?} is not a duration; write a number and s, m, h or d (as in 180d)")
    })?;
    let secs = n * unit_secs;
    if !(0.1..=100.0 * 365.0 * 86_400.0).contains(&secs) {
        return Err("must be between 0.1 seconds and 100 years".into());
    }
    Ok(Age(Duration::from_secs_f64(secs)))
}

/// A fingerprint in any spelling (canonical, read aloud, hex).
fn parse_fingerprint(s: &str) -> Result<qchat_tls::Fingerprint, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// As [`parse_age`], and `0` too: codes expired the moment they are made,
/// so a test sees the refusal without waiting on a clock.
/// A link code as `/device link` printed it, in any case, with or without
/// its dashes and spaces: checked here so that a mistyped code is a clear
/// error before connecting rather than a refusal from the server (or, for
/// a long paste, a frame the server will not read).
fn parse_link_code(s: &str) -> Result<String, String> {
    let letters: Vec<char> = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    let alphabet_ok = letters
        .iter()
        .all(|c| c.is_ascii() && limits::LINK_CODE_ALPHABET.contains(&(*c as u8)));
    if letters.len() == limits::LINK_CODE_LETTERS && alphabet_ok {
        Ok(s.trim().to_string())
    } else {
        Err(format!(
            "a link code is {} letters a–z and digits 2–7, in groups of four as `/device link` printed it (like abcd-efgh-ijkl-mnop)",
            limits::LINK_CODE_LETTERS
        ))
    }
}

fn parse_link_ttl(s: &str) -> Result<Age, String> {
    match s.trim() {
        "0" | "0s" => Ok(Age(Duration::ZERO)),
        other => parse_age(other),
    }
}

/// A bare port is loopback: the metrics say how busy the room is and who
/// is flooding it, which is for the operator, not the internet.
fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is neither a port nor an address with a port"))
}

fn parse_secs_arg(s: &str) -> Result<Secs, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err("must be between 0.1 and 86400 seconds".into());
    }
    Ok(Secs(Duration::from_secs_f64(secs)))
}

impl LimitArgs {
    /// The limits as server options, checked against each other; the error
    /// names the flags to change.
    pub fn apply(&self, options: ServerOptions) -> Result<ServerOptions, OptionsError> {
        let options = ServerOptions {
            max_frame: self.max_frame,
            max_message: self.max_message,
            hello_timeout: self.hello_timeout.0,
            idle_timeout: self.idle_timeout.0,
            keep_alive: match self.keep_alive {
                Some(k) => k.0,
                None => limits::KEEP_ALIVE.min(self.idle_timeout.0 / 3),
            },
            queue_len: self.queue,
            max_connections: self.max_connections,
            max_per_ip: self.max_per_ip,
            max_unjoined_per_ip: self.max_unjoined_per_ip,
            rate: self.rate,
            burst: self.burst,
            backlog: self.backlog,
            retry_threshold: self.retry_threshold,
            history: self.history,
            replay_max: self.replay_max,
            grace: self.reconnect_grace.0,
            max_rooms: self.max_rooms,
            max_rooms_per_member: self.max_rooms_per_member,
            max_room_members: self.max_room_members,
            ..options
        };
        options.validate()?;
        Ok(options)
    }
}

/// Why the command line and the settings file cannot be used.
pub enum Rejected {
    /// A flag, or the flags against each other: clap's message.
    Usage(clap::Error),
    /// The settings file: its name, line and key.
    File(String),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Usage(e) => f.write_str(&crate::config::clap_message(e)),
            Rejected::File(m) => f.write_str(m),
        }
    }
}

/// Parses the command line, adds the settings file's values for the serve
/// flags not given, and checks the result against itself; a bad file or a
/// conflict is reported like any other usage error (exit status 2) before
/// anything else happens.
pub fn parse() -> Cli {
    match resolve(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(Rejected::Usage(e)) => e.exit(),
        Err(Rejected::File(m)) => {
            eprintln!("qchat: {m}");
            std::process::exit(crate::exit::USAGE.into())
        }
    }
}

/// [`parse`] without exiting, for a command line `argv`: also what a
/// reload of the settings file runs again.
pub fn resolve(argv: Vec<std::ffi::OsString>) -> Result<Cli, Rejected> {
    let root = Cli::command();
    let given = root
        .clone()
        .try_get_matches_from(&argv)
        .map_err(Rejected::Usage)?;
    let mut cli = Cli::from_arg_matches(&given).map_err(Rejected::Usage)?;
    let Command::Serve(args) = &cli.command else {
        return Ok(cli);
    };
    let Some(serve_given) = given.subcommand_matches("serve") else {
        return Ok(cli);
    };
    let path = crate::config::locate(args.config.as_deref());
    let settings = match &path {
        Some(p) => crate::config::load(p, &root).map_err(|e| Rejected::File(e.to_string()))?,
        None => Vec::new(),
    };
    let merged_argv = crate::config::merged_args(argv.clone(), serve_given, &settings, &root);
    let merged = root
        .clone()
        .try_get_matches_from(merged_argv)
        .map_err(Rejected::Usage)?;
    cli = Cli::from_arg_matches(&merged).map_err(Rejected::Usage)?;
    let serve_merged = merged.subcommand_matches("serve").unwrap_or(serve_given);
    let effective = crate::config::effective(&root, serve_given, serve_merged, &settings);
    if let Command::Serve(args) = &mut cli.command {
        args.config_file = path.clone();
        args.effective = effective;
        args.argv = argv;
        if let Err(e) = args.limits.apply(ServerOptions::default()) {
            let e = match &path {
                Some(p) => format!("{e} (with the settings of {})", p.display()),
                None => e.to_string(),
            };
            let mut cmd = Cli::command();
            cmd.build();
            let kind = clap::error::ErrorKind::ArgumentConflict;
            let err = match cmd.find_subcommand_mut("serve") {
                Some(serve) => serve.error(kind, e),
                None => cmd.error(kind, e),
            };
            return Err(Rejected::Usage(err));
        }
    }
    Ok(cli)
}

/// How to treat a server that has no pin yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Trust {
    /// Ask on the terminal; without one, refuse (like strict).
    Ask,
    /// Pin a new server's key without asking.
    AcceptNew,
    /// Never add a pin.
    Strict,
}

/// `qchat connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The server: an IPv4 address, [IPv6] address or DNS name, with an
    /// optional :PORT (default 8080). For a cluster, several nodes'
    /// addresses separated by commas: tried in order, and gone round when
    /// a node is lost; the first is the one its key is pinned under, and
    /// every node must present that key.
    #[arg(
        value_parser = parse_host,
        value_delimiter = ',',
        num_args = 1,
        required = true,
        value_name = "HOST[,HOST...]"
    )]
    pub hosts: Vec<HostKey>,
    /// Your name in the room (asked for on a terminal if not given).
    #[arg(long)]
    pub name: Option<String>,
    /// The server's fingerprint, obtained out of band; any spelling works.
    #[arg(long, value_name = "FP")]
    pub fingerprint: Option<qchat_tls::Fingerprint>,
    /// Trust an unknown server's key on first use without asking.
    #[arg(long, conflicts_with = "trust")]
    pub accept_new: bool,
    /// How to treat a server that has no pin yet.
    #[arg(long, value_enum, default_value_t = Trust::Ask)]
    pub trust: Trust,
    /// The pin store (default: $QCHAT_HOME/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Line-oriented interface even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Do not ring the terminal bell when someone mentions you or writes to
    /// you privately (full-screen interface).
    #[arg(long)]
    pub no_bell: bool,
    /// Exit when the connection is lost instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
    /// Join fresh (the server's usual history) instead of catching up from
    /// where this client left off with this server last time.
    #[arg(long)]
    pub no_resume: bool,
    /// Connect without your key, as a guest: only names nobody has
    /// registered, and servers started with --keys-required refuse you.
    #[arg(long)]
    pub guest: bool,
    /// Join the registered name given with --name as a new device of it:
    /// CODE is the one-time link code `/device link` printed on a device
    /// that already has the name.
    #[arg(long, value_name = "CODE", conflicts_with = "guest", requires = "name", value_parser = parse_link_code)]
    pub link: Option<String>,
}

/// `qchat fingerprint`.
#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// Folder with the server identity.
    #[arg(long, value_name = "DIR", conflicts_with = "mine")]
    pub cert_dir: Option<PathBuf>,
    /// Your own key's fingerprint ($QCHAT_HOME/identity), the one servers
    /// bind your name to and `/whois` shows others.
    #[arg(long)]
    pub mine: bool,
    /// Print the read-aloud form instead.
    #[arg(long, conflicts_with = "hex")]
    pub read_aloud: bool,
    /// Print colon-separated hex instead.
    #[arg(long)]
    pub hex: bool,
}

/// `qchat identity`.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// What to do with your key.
    #[command(subcommand)]
    pub action: IdentityAction,
}

/// `qchat identity <action>`.
#[derive(Debug, Subcommand)]
pub enum IdentityAction {
    /// Replace your key with a new one (the old files are kept beside it).
    /// Names your old key registered stay bound to it until they expire.
    New {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `qchat known-hosts`.
#[derive(Debug, Args)]
pub struct KnownHostsArgs {
    /// The pin store (default: $QCHAT_HOME/known_hosts).
    #[arg(long, value_name = "FILE", global = true)]
    pub known_hosts: Option<PathBuf>,
    /// Print JSON on stdout instead of text, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do with the pins.
    #[command(subcommand)]
    pub action: KnownHostsAction,
}

/// `qchat known-hosts <action>`.
#[derive(Debug, Subcommand)]
pub enum KnownHostsAction {
    /// Show every pin: server, fingerprint, when first stored, verified or not.
    List,
    /// Forget a server's pin; the next connection treats it as unknown.
    Remove {
        /// The server: host or host:port (default port 8080).
        #[arg(value_parser = parse_host)]
        host: HostKey,
    },
    /// Pin a server to a fingerprint checked out of band, replacing any pin
    /// it had (the new pin is recorded as verified).
    Replace {
        /// The server: host or host:port (default port 8080).
        #[arg(value_parser = parse_host)]
        host: HostKey,
        /// The new fingerprint; any spelling works.
        #[arg(long, value_name = "FP")]
        fingerprint: qchat_tls::Fingerprint,
    },
    /// Mark a trusted-on-first-use pin as verified, after comparing its
    /// fingerprint out of band; refused if the fingerprint differs.
    Verify {
        /// The server: host or host:port (default port 8080).
        #[arg(value_parser = parse_host)]
        host: HostKey,
        /// The fingerprint the server's operator gave you; any spelling works.
        #[arg(long, value_name = "FP")]
        fingerprint: qchat_tls::Fingerprint,
    },
}

/// `qchat contacts`.
#[derive(Debug, Args)]
pub struct ContactsArgs {
    /// The contacts file (default: $QCHAT_HOME/contacts).
    #[arg(long, value_name = "FILE", global = true)]
    pub contacts: Option<PathBuf>,
    /// Print JSON on stdout instead of text, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do with the contacts.
    #[command(subcommand)]
    pub action: ContactsAction,
}

/// `qchat contacts <action>`.
#[derive(Debug, Subcommand)]
pub enum ContactsAction {
    /// Show every contact: name, the keys you verified, when.
    List,
    /// Forget a contact; the name no longer carries the verified mark.
    Remove {
        /// The name (compared as the room compares names: case and
        /// look-alikes).
        name: String,
    },
    /// Record a person's fingerprint that they gave you out of band, without
    /// connecting (in a chat, `/verify NAME FP` does this and checks it with
    /// the server); refused if NAME is a contact with other keys.
    Verify {
        /// The name.
        name: String,
        /// Their fingerprint (`qchat fingerprint --mine` on their machine);
        /// any spelling works.
        #[arg(long, value_name = "FP")]
        fingerprint: qchat_tls::Fingerprint,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_hosts(arg: &str) -> Result<Vec<HostKey>, String> {
        let argv = ["qchat", "connect", arg, "--name", "a"].map(std::ffi::OsString::from);
        match resolve(argv.to_vec()) {
            Ok(Cli {
                command: Command::Connect(c),
                ..
            }) => Ok(c.hosts),
            Ok(_) => Err("not connect".into()),
            Err(Rejected::Usage(e)) => Err(e.to_string()),
            Err(Rejected::File(e)) => Err(e),
        }
    }

    #[test]
    fn an_advertised_address_one_byte_past_the_node_list_limit_is_refused() {
        let max = qchat_proto::limits::MAX_NODE_ADDR_BYTES;
        let host = |len: usize| format!("{}:8080", "a".repeat(len - ":8080".len()));
        assert_eq!(parse_advertise(&host(max)), Ok(host(max)));
        let err = parse_advertise(&host(max + 1)).expect_err("one byte too long");
        assert!(err.contains(&format!("{max} bytes")), "{err}");
    }

    #[test]
    fn connect_takes_one_address_or_several_separated_by_commas() {
        let h = |s: &str| HostKey::parse(s, qchat_proto::DEFAULT_PORT).expect("an address");
        assert_eq!(
            connect_hosts("example.org"),
            Ok(vec![h("example.org:8080")])
        );
        assert_eq!(
            connect_hosts("a.example:9000,10.0.0.2,[::1]:7000"),
            Ok(vec![
                h("a.example:9000"),
                h("10.0.0.2:8080"),
                h("[::1]:7000")
            ])
        );
        // Each is checked as one address would be.
        let e = connect_hosts("a.example,b.example:99999").expect_err("a bad port");
        assert!(e.contains("b.example:99999"), "{e}");
        assert!(connect_hosts("a.example,,b.example").is_err());
    }

    #[test]
    fn a_bare_metrics_port_is_loopback() {
        assert_eq!(
            parse_metrics_addr("9464"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(
            parse_metrics_addr("[::]:9464"),
            Ok("[::]:9464".parse().expect("an address"))
        );
        assert!(parse_metrics_addr("localhost").is_err());
    }

    #[test]
    fn a_link_code_is_checked_before_connecting() {
        for ok in [
            "abcd-efgh-ijkl-mnop",
            "ABCD EFGH IJKL MNOP",
            "abcdefghijkl2345",
        ] {
            assert!(parse_link_code(ok).is_ok(), "{ok}");
        }
        // One letter short, one too many, a digit base32 lacks, a long paste.
        let long = "a".repeat(20_000);
        for bad in [
            "abcd-efgh-ijkl-mno",
            "abcd-efgh-ijkl-mnopq",
            "abcd-efgh-ijkl-mn0p",
            "",
            long.as_str(),
        ] {
            let e = parse_link_code(bad).expect_err(bad);
            assert!(e.contains("16 letters"), "{e}");
        }
    }
}
