//! Remote path: hard frames leave the edge device over QUIC to a worker running the large
//! network; the class map comes back. `proto` is the sans-IO wire format, `client` the edge
//! side (a pipeline stage), `worker` the server, `tls` the mutual-TLS set-up.
pub mod client;
pub mod image;
pub mod proto;
pub mod tls;
pub mod worker;
