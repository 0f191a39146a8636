//! Binding the UDP socket: dual-stack where the system allows it.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for, each way. A fan-out answers one incoming
/// datagram with hundreds of outgoing ones, and a join storm brings
/// thousands of handshakes at once: with the kernel's default (~208 KiB)
/// the receive buffer overflows, datagrams are dropped and the room waits
/// for QUIC's loss recovery. The kernel caps the request at
/// `net.core.rmem_max`/`wmem_max` (only root may exceed it), so this is a
/// best effort and never a reason to fail.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Binds a QUIC server endpoint on `addr`.
///
/// An IPv6 wildcard address is made dual-stack explicitly, because the
/// system default varies. If IPv6 is not available at all, the IPv6
/// wildcard falls back to the IPv4 wildcard on the same port, so the default
/// `[::]:8080` works on IPv4-only hosts too.
///
/// `reset_key` signs stateless resets; a key that stays the same across
/// restarts (`Identity::stateless_reset_key`) lets clients of the previous
/// process notice at once that it is gone. `None`: a random one.
pub fn bind(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    reset_key: Option<Arc<dyn quinn::crypto::HmacKey>>,
) -> io::Result<quinn::Endpoint> {
    let socket = match bind_socket(addr) {
        Ok(s) => s,
        Err(e)
            if addr.is_ipv6()
                && addr.ip().is_unspecified()
                && e.kind() != io::ErrorKind::AddrInUse
                && e.kind() != io::ErrorKind::PermissionDenied =>
        {
            tracing::info!(error = %e, "IPv6 unavailable, listening on IPv4 only");
            bind_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))?
        }
        Err(e) => return Err(e),
    };
    let mut endpoint_config = endpoint_config();
    if let Some(key) = reset_key {
        endpoint_config.reset_key(key);
    }
    quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Length of the connection ids the server picks, in bytes, all random.
pub const CID_LEN: usize = 8;

/// The endpoint configuration: quinn's defaults but for connection ids.
///
/// quinn's default generator makes 8-byte ids from only 3 random bytes (the
/// other 5 are a checksum), and the id it puts in a QUIC Retry is not
/// checked against the ids of live connections. With thousands of members
/// (each holding several ids) a Retry id now and then equals a live one:
/// the client's next Initial is then delivered to that other connection,
/// which drops it, and the join hangs until the client's 10 s handshake
/// timeout — measured: 8 of 6,000 joins in a storm answered with Retries
/// (`qchat-bench --clients 6000 --retry-threshold 100`), every one of them
/// a Retry id that a joined member was using. Fully random ids make that a
/// 1 in 2^64 event per pair. The checksum only let quinn skip stateless
/// resets for stray packets cheaply; those resets are rate-limited anyway.
///
/// Stateless resets are not rate-limited (quinn's default allows one per
/// 20 ms for the whole endpoint). After a crash and restart every old
/// client's next packet deserves a reset — that is how it learns at once
/// that its connection is gone — and with 1,000 members sending a
/// keep-alive a second, 50 resets a second left most of them waiting out
/// their 10 s idle timeout (`qchat-bench --clients 1000 --restart kill`:
/// 11 s to resume with the limit, 1.5 s without). A reset is always
/// smaller than the packet that provoked it (RFC 9000 §10.3), so it
/// amplifies nothing; what an attacker can make the server do is answer
/// its own packets, at the cost of sending them.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(quinn_proto::RandomConnectionIdGenerator::new(CID_LEN)));
    config.min_reset_interval(std::time::Duration::ZERO);
    config
}

fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        if let Err(e) = socket.set_only_v6(false) {
            tracing::debug!(error = %e, "cannot make the socket dual-stack");
        }
    }
    enlarge_buffers(&socket);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Asks for [`SOCKET_BUFFER`] each way; whatever the kernel grants is kept.
pub fn enlarge_buffers(socket: &Socket) {
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the socket receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the socket send buffer");
    }
}
