//! Remote path: hard frames leave the edge device over QUIC to a worker running the large
//! network; the class map comes back. `proto` is the sans-IO wire format, `client` the edge
//! side (a plain API the pipeline's remote stage calls), `liveness` and `batching` the
//! time-driven decisions of client and worker as state machines, `worker` the server, `tls` the
//! mutual-TLS set-up.
pub mod batching;
pub mod client;
pub mod image;
pub mod liveness;
pub mod proto;
pub mod tls;
pub mod worker;

use std::net::SocketAddr;

/// UDP socket buffer asked for (the kernel caps it at `net.core.rmem_max`/`wmem_max`). A frame
/// is hundreds of packets and several frames are in flight; Linux's default ~200 KB receive
/// buffer overflows under such bursts, and every drop costs QUIC a retransmission and a
/// congestion-window cut.
const UDP_BUFFER_BYTES: usize = 8 << 20;

/// Largest UDP payload we accept and let path-MTU discovery probe for. A frame is tens to
/// hundreds of KB, so per-packet work dominates QUIC's cost: on jumbo-frame links (and loopback)
/// bigger datagrams mean several times fewer packets, while on ordinary paths discovery simply
/// stays at QUIC's ~1450-byte default. Measured on loopback: 1472 → 6000 roughly doubled QUIC
/// throughput for 1280x720 frames; 8952 made segmentation-offload batches overflow (losses,
/// then a fall back to 1200), hence this value.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 6000;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer still works, only with more drops under load.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A QUIC endpoint on `addr` with enlarged socket buffers; a server when `server` is given.
/// Must be called inside a tokio runtime.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(MAX_UDP_PAYLOAD).map_err(|e| std::io::Error::other(e.to_string()))?;
    quinn::Endpoint::new(config, server, udp_socket(addr)?, runtime)
}
