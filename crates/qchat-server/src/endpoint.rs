//! Binding the UDP socket: dual-stack where the system allows it.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a QUIC server endpoint on `addr`.
///
/// An IPv6 wildcard address is made dual-stack explicitly, because the
/// system default varies. If IPv6 is not available at all, the IPv6
/// wildcard falls back to the IPv4 wildcard on the same port, so the default
/// `[::]:8080` works on IPv4-only hosts too.
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> io::Result<quinn::Endpoint> {
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
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        if let Err(e) = socket.set_only_v6(false) {
            tracing::debug!(error = %e, "cannot make the socket dual-stack");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
