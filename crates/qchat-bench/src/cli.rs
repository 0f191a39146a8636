//! The command line: without a subcommand it runs the bench; `relay` is
//! the baseline server the bench starts for itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Measures a qchat room's fan-out — deliveries per second, latency, the
/// server's CPU time and memory — against a minimal QUIC relay (see
/// docs/PERFORMANCE.md).
#[derive(Debug, Parser)]
#[command(
    name = "qchat-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The bench's flags.
    #[command(flatten)]
    pub bench: Box<BenchArgs>,
    /// Internal: the baseline relay.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A minimal QUIC relay, the baseline `--baseline` and `--compare`
    /// measure against. Started by the bench itself; not a chat server.
    #[command(hide = true)]
    Relay(RelayArgs),
}

/// The bench's own flags, also the top level of the command line.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The qchat binary to start as the server under test (default: the
    /// `qchat` next to this executable, i.e. the same build).
    #[arg(long, value_name = "PATH")]
    pub qchat: Option<PathBuf>,
    /// Members in the room.
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub clients: usize,
    /// How many of the members send (default: all of them).
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub messages: u64,
    /// Bytes of text per message; the first 48 carry the sender, sequence
    /// number and send time.
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(48..=4096))]
    pub size: usize,
    /// Messages per second per sender; without it, as fast as the window
    /// allows. The window still applies: a tick that finds it full waits,
    /// and the ticks missed meanwhile are sent when it opens.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Messages each sender may have on their way: sent but not yet
    /// delivered to every reading member. The load then runs as fast as
    /// the slowest receiver allows, a steady state the server can keep up.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub window: u64,
    /// No window: every sender writes all its messages as fast as QUIC
    /// flow control allows, however far the receivers fall behind (the
    /// overload a server must survive by disconnecting slow readers).
    #[arg(long, conflicts_with = "window")]
    pub flood: bool,
    /// Signed lines: every member greets as version 4 (the relay answers
    /// it like any hello), and each sender presents a fresh person key and
    /// signs every line (`Signed`), so qchat stores and forwards the
    /// signatures (`ChatSigned`) — the cost of signatures on the fan-out.
    #[arg(long)]
    pub signed: bool,
    /// Members (not senders) that join and then never read: the
    /// slow-reader scenario.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Spread the members over this many rooms besides #lobby: each
    /// member joins --rooms-per-member of them, member i the rooms i*K,
    /// i*K+1, … (mod N), and sends in the first; the connect time then
    /// includes joining them. The relay (--baseline, --compare) keeps just
    /// a map of room → members for it.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000), conflicts_with_all = ["restart", "replay", "signed"])]
    pub rooms: Option<usize>,
    /// Rooms each member joins with --rooms (K).
    #[arg(long, default_value_t = 1, requires = "rooms", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000))]
    pub rooms_per_member: usize,
    /// Measure the minimal QUIC relay instead of qchat.
    #[arg(long, conflicts_with_all = ["compare", "target"])]
    pub baseline: bool,
    /// Run qchat and the baseline alternately and print the ratios.
    #[arg(long, conflicts_with = "target")]
    pub compare: bool,
    /// Runs of each with --compare; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub rounds: usize,
    /// A running qchat server to measure instead of starting one (its CPU
    /// and memory are then unknown).
    #[arg(long, value_name = "HOST:PORT", requires = "fingerprint")]
    pub target: Option<String>,
    /// The --target server's fingerprint.
    #[arg(long, value_name = "FP")]
    pub fingerprint: Option<qchat_tls::Fingerprint>,
    /// Worker threads of the started server (its --threads; default: its
    /// own default).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub server_threads: Option<u16>,
    /// The started qchat server's --retry-threshold (handshakes per second
    /// above which joins get a QUIC Retry first). Default: above the number
    /// of members, so a join storm is not sent Retries.
    #[arg(long)]
    pub retry_threshold: Option<u32>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub bench_threads: u16,
    /// QUIC endpoints (UDP sockets) the members are spread over (default:
    /// one per 625 members, at least 4).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub endpoints: Option<usize>,
    /// Frames the started server queues per member before it disconnects
    /// the member as not reading.
    #[arg(long, default_value_t = 65_536, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1_000_000))]
    pub queue: usize,
    /// Seconds to wait for every delivery (counted after the last send at
    /// --rate) and, separately, for every member to connect.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Seconds the connected members stay idle before the server's memory
    /// is read, so that join traffic has settled.
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub settle: Duration,
    /// One more flag for the started `qchat serve`, after the bench's own
    /// (repeat it for more, e.g. `--server-arg=--store --server-arg=memory`).
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Reconnect storm: the members join over protocol version 3, one more
    /// member sends --messages, then the server is stopped this way and
    /// started again on the same port and data folder; every member
    /// resumes, and the sender sends --messages more. Reports the time from
    /// the server being back to each member's resume, and anything missed
    /// or duplicated.
    #[arg(long, value_name = "HOW", conflicts_with_all = ["baseline", "compare", "target", "replay"])]
    pub restart: Option<crate::proc::Stop>,
    /// Replay: the members join over version 3 and disconnect, one more
    /// member sends --messages meanwhile, then all of them resume at once.
    /// Reports messages replayed per second and the server's peak memory.
    #[arg(long, conflicts_with_all = ["baseline", "compare", "target"])]
    pub replay: bool,
    /// Clustered runs: for each count in the list (e.g. `1,2,3`), start
    /// one nats-server (JetStream, loopback, temporary store) and that many
    /// `qchat serve --cluster` nodes sharing one identity, and spread the
    /// members round-robin over the nodes; each round also runs the
    /// single server with its embedded store, for comparison. Medians over
    /// --rounds are reported. With --failover, the largest count (at least
    /// 2) is the cluster.
    #[arg(long, value_name = "N,…", value_delimiter = ',', value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16), conflicts_with_all = ["baseline", "compare", "target", "restart", "replay"])]
    pub cluster_nodes: Vec<usize>,
    /// Failover: `--clients` members join over version 3 spread over the
    /// cluster's nodes, one more member on another node sends --messages,
    /// then the first node is killed (SIGKILL) and the sender sends
    /// --messages more at once. Its members notice (no datagram for
    /// --failover-silence), rejoin the next node with their resume point
    /// and replay what they missed. Reports the time from the kill until
    /// every one of them has resumed, and anything missed or duplicated.
    #[arg(long, requires = "cluster_nodes")]
    pub failover: bool,
    /// With --failover: how long a member hears nothing from its node (a
    /// keep-alive is answered every second) before it moves to the next
    /// one; the client's own threshold for "no answer" by default, and
    /// at least 1.5 (a keep-alive is answered about once a second).
    #[arg(long, default_value = "3", value_parser = parse_secs, requires = "failover")]
    pub failover_silence: Duration,
    /// The NATS server program for the clustered runs.
    #[arg(long, value_name = "PATH", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// One JSON object per run on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Members per client UDP socket when `--endpoints` is not given. A
/// fan-out burst to 2,500 members on one socket overflowed its 4 MiB
/// receive buffer (the kernel's `rmem_max` here): the lost packets' QUIC
/// retransmissions backed off until the idle timeout ended some
/// connections, and the bench measured its own sockets.
const MEMBERS_PER_ENDPOINT: usize = 625;

impl BenchArgs {
    /// `--endpoints`, or enough that no socket serves more than
    /// [`MEMBERS_PER_ENDPOINT`] members.
    pub fn endpoints(&self) -> usize {
        self.endpoints
            .unwrap_or_else(|| self.clients.div_ceil(MEMBERS_PER_ENDPOINT).max(4))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of messages per second"))?;
    if !(0.01..=1_000_000.0).contains(&r) {
        return Err("must be between 0.01 and 1000000 messages per second".into());
    }
    Ok(r)
}

/// `qchat-bench relay`: the baseline the bench measures qchat against.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address and port to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Folder with the identity (cert.pem, key.pem), created if missing.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: PathBuf,
    /// Worker threads for the async runtime (1 = single-threaded).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Frames queued per connection before it is disconnected as not
    /// reading.
    #[arg(long, default_value_t = 65_536, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1_000_000))]
    pub queue: usize,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err("must be between 0.1 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(args: &[&str]) -> usize {
        let cli = Cli::try_parse_from(["qchat-bench"].iter().chain(args)).expect("valid flags");
        cli.bench.endpoints()
    }

    #[test]
    fn endpoints_grow_with_members_unless_given() {
        assert_eq!(endpoints(&["--clients", "10"]), 4);
        assert_eq!(endpoints(&["--clients", "2500"]), 4);
        assert_eq!(endpoints(&["--clients", "10000"]), 16);
        assert_eq!(endpoints(&["--clients", "10001"]), 17);
        assert_eq!(endpoints(&["--clients", "10000", "--endpoints", "2"]), 2);
    }

    #[test]
    fn rooms_compare_with_the_relay_but_not_signed() {
        let cli =
            Cli::try_parse_from(["qchat-bench", "--rooms", "4", "--compare"]).expect("valid flags");
        assert!(cli.bench.compare);
        assert!(Cli::try_parse_from(["qchat-bench", "--rooms", "4", "--baseline"]).is_ok());
        assert!(Cli::try_parse_from(["qchat-bench", "--rooms", "4", "--signed"]).is_err());
        assert!(Cli::try_parse_from(["qchat-bench", "--rooms-per-member", "2"]).is_err());
        let cli = Cli::try_parse_from(["qchat-bench", "--rooms", "4", "--rooms-per-member", "2"])
            .expect("valid flags");
        assert_eq!((cli.bench.rooms, cli.bench.rooms_per_member), (Some(4), 2));
    }

    #[test]
    fn cluster_nodes_are_a_list_and_failover_needs_them() {
        let cli =
            Cli::try_parse_from(["qchat-bench", "--cluster-nodes", "1,2,3"]).expect("valid flags");
        assert_eq!(cli.bench.cluster_nodes, [1, 2, 3]);
        assert!(Cli::try_parse_from(["qchat-bench", "--failover"]).is_err());
        assert!(Cli::try_parse_from(["qchat-bench", "--cluster-nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["qchat-bench", "--cluster-nodes", "2", "--compare"]).is_err());
        let cli = Cli::try_parse_from(["qchat-bench", "--cluster-nodes", "3", "--failover"])
            .expect("valid flags");
        assert!(cli.bench.failover);
    }

    #[test]
    fn flood_and_window_exclude_each_other() {
        assert!(Cli::try_parse_from(["qchat-bench", "--flood", "--window", "8"]).is_err());
        let cli = Cli::try_parse_from(["qchat-bench", "--flood"]).expect("valid flags");
        assert!(cli.bench.flood);
    }
}
