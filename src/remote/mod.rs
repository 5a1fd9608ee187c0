//! Remote path: hard frames leave the edge device over QUIC to a worker running the large network.
pub mod proto;
pub mod tls;
