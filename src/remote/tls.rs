//! Mutual TLS for the QUIC link between edge devices and the remote worker.
//!
//! Data enters as PEM files named in config (`worker.toml [tls]`, `edge.toml [remote.tls]`),
//! described by [`TlsPaths`], and leaves as ready-to-use [`quinn::ServerConfig`] /
//! [`quinn::ClientConfig`]. Both sides trust exactly one CA (the `ca_cert` file): the worker
//! accepts only clients whose certificate that CA signed, and the edge accepts only a worker
//! whose certificate that CA signed. A client without such a certificate is rejected during
//! the handshake, before it can send a single frame.
//!
//! [`generate_dev_pki`] writes a small development CA with one worker and any number of client
//! identities (the `edgeseg certs` subcommand), so a test bench needs no external tooling.
//!
//! The crypto provider (*ring*) is passed explicitly to every rustls builder, so nothing here
//! depends on a process-wide default having been installed.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS settings of both config files; every function here takes them.
pub use crate::config::TlsPaths;

/// ALPN protocol id of the edge ↔ worker protocol; bump the suffix when the wire format
/// changes incompatibly, so mismatched peers fail at the handshake instead of mid-stream.
pub const ALPN: &[u8] = b"edgeseg/1";

/// Worker keeps idle edges for longer than an edge waits for the worker: the edge must notice
/// a dead worker quickly to fall back to its local network, the worker only needs to free state.
const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(2);
const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// One stream per offloaded frame; 256 bounds worker memory per edge while leaving room for
/// many frames in flight.
const SERVER_MAX_CONCURRENT_BIDI_STREAMS: u32 = 256;
/// Packets a peer may receive without acknowledging them at once (quinn's default, 1, means an
/// ACK for every second packet).
const ACK_ELICITING_THRESHOLD: u32 = 10;
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(1);
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Development certificates are valid from the start of last year (tolerates small clock
/// skew between devices) for this many years.
const DEV_VALIDITY_YEARS: i32 = 10;

/// Base names [`generate_dev_pki`] uses itself; a client may not take them.
const RESERVED_NAMES: [&str; 2] = ["ca", "worker"];

/// What went wrong while loading or generating TLS material; each message names the file and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}; check the TLS paths in the config, or create a development PKI with `edgeseg certs`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} contains no PEM certificate (expected a `-----BEGIN CERTIFICATE-----` block); is it the key instead of the certificate?", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} contains no PEM private key (expected a PKCS#8, PKCS#1 or SEC1 `PRIVATE KEY` block); is it the certificate instead of the key?", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{} is not usable: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("certificate {} and key {} do not form a usable identity: {source}; regenerate them as a pair", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the client-certificate verifier from CA {}: {reason}", path.display())]
    Verifier { path: PathBuf, reason: String },
    #[error("refusing to overwrite {}: remove it, pick another directory, or ask to overwrite", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC cannot use this TLS configuration: {0}")]
    Quic(String),
}

/// Development PKI written by `edgeseg certs`: ca.pem, ca.key, worker.pem, worker.key, and
/// <name>.pem/<name>.key for each client.
///
/// `ca.key` is written so more clients can be signed later; it never needs to leave the
/// machine that generated it.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub worker: TlsPaths,
    pub clients: Vec<(String, TlsPaths)>,
}

/// Generates a CA, a worker identity valid for `worker_names` (DNS names or IP addresses,
/// e.g. "localhost", "127.0.0.1"; IP addresses become IP SANs so connecting by address
/// validates) and one client identity per `client_names` entry, and writes them to `dir`.
///
/// Existing files are left untouched unless `overwrite` is true; this is checked for every
/// file before anything is written, so a refusal never leaves a half-replaced PKI behind.
/// Private keys are written with mode 0600 on unix.
pub fn generate_dev_pki(dir: &Path, worker_names: &[String], client_names: &[String], overwrite: bool) -> Result<GeneratedPki, TlsError> {
    validate_worker_names(worker_names)?;
    validate_client_names(client_names)?;

    let pem_path = |name: &str| dir.join(format!("{name}.pem"));
    let key_path = |name: &str| dir.join(format!("{name}.key"));
    let ca_cert_path = pem_path("ca");
    let worker = TlsPaths { ca_cert: ca_cert_path.clone(), cert: pem_path("worker"), key: key_path("worker") };
    let clients: Vec<(String, TlsPaths)> = client_names
        .iter()
        .map(|name| {
            let paths = TlsPaths { ca_cert: ca_cert_path.clone(), cert: pem_path(name), key: key_path(name) };
            (name.clone(), paths)
        })
        .collect();

    if !overwrite {
        let mut all_paths = vec![ca_cert_path.clone(), key_path("ca"), worker.cert.clone(), worker.key.clone()];
        for (_, paths) in &clients {
            all_paths.push(paths.cert.clone());
            all_paths.push(paths.key.clone());
        }
        if let Some(existing) = all_paths.into_iter().find(|path| path.exists()) {
            return Err(TlsError::AlreadyExists { path: existing });
        }
    }

    // Generate everything in memory first, so a generation failure writes nothing.
    let generate = |error: rcgen::Error| TlsError::Generate(error.to_string());
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name("edgeseg development CA");
    // Constrained(0): the CA signs leaf certificates only, never another CA.
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_dev_validity(&mut ca_params);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(generate)?).map_err(generate)?;

    let mut files: Vec<(PathBuf, String, bool)> =
        vec![(ca_cert_path.clone(), ca.pem(), false), (key_path("ca"), ca.key().serialize_pem(), true)];

    // CertificateParams::new turns entries that parse as IP addresses into IP SANs.
    let mut worker_params = CertificateParams::new(worker_names.to_vec()).map_err(generate)?;
    worker_params.distinguished_name = common_name("edgeseg worker");
    worker_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let worker_key = issue_leaf(worker_params, &ca)?;
    files.push((worker.cert.clone(), worker_key.0, false));
    files.push((worker.key.clone(), worker_key.1, true));

    for (name, paths) in &clients {
        // Clients are identified by their common name; the worker never checks client names
        // against an address, so no SAN is needed.
        let mut client_params = CertificateParams::default();
        client_params.distinguished_name = common_name(name);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert_pem, key_pem) = issue_leaf(client_params, &ca)?;
        files.push((paths.cert.clone(), cert_pem, false));
        files.push((paths.key.clone(), key_pem, true));
    }

    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
    for (path, contents, private) in &files {
        write_pem(path, contents, *private, overwrite)?;
    }
    tracing::info!(dir = %dir.display(), clients = clients.len(), "wrote development PKI");

    Ok(GeneratedPki { dir: dir.to_path_buf(), ca: ca_cert_path, worker, clients })
}

/// QUIC server configuration for the worker: presents `cert`/`key` and requires every client
/// to present a certificate signed by `ca_cert`; clients without one fail the handshake.
///
/// 0-RTT stays disabled (rustls default): early data is replayable, and a replayed frame
/// would cost the worker a full inference.
pub fn server_config(paths: &TlsPaths) -> Result<quinn::ServerConfig, TlsError> {
    let tls = rustls_server_config(paths)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|error| TlsError::Quic(error.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = transport_config(SERVER_KEEP_ALIVE, SERVER_IDLE_TIMEOUT);
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(SERVER_MAX_CONCURRENT_BIDI_STREAMS));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The TLS half of [`server_config`], also used by the TLS-over-TCP benchmark baseline so that
/// both carry exactly the same security.
pub fn rustls_server_config(paths: &TlsPaths) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let roots = load_roots(&paths.ca_cert)?;
    let cert_chain = load_certs(&paths.cert)?;
    let key = load_key(&paths.key)?;

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|error| TlsError::Verifier { path: paths.ca_cert.clone(), reason: error.to_string() })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(cert_chain, key)
        .map_err(|source| TlsError::Identity { cert: paths.cert.clone(), key: paths.key.clone(), source })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// QUIC client configuration for an edge device: trusts only `ca_cert` (not the system roots,
/// so a publicly valid certificate cannot impersonate the worker) and presents `cert`/`key`.
///
/// The server name checked against the worker certificate is the one passed to
/// `Endpoint::connect`.
pub fn client_config(paths: &TlsPaths) -> Result<quinn::ClientConfig, TlsError> {
    finish_client_config(rustls_client_config(paths)?)
}

/// The TLS half of [`client_config`] (ALPN included), shared with the TLS-over-TCP baseline.
pub fn rustls_client_config(paths: &TlsPaths) -> Result<rustls::ClientConfig, TlsError> {
    let roots = load_roots(&paths.ca_cert)?;
    let cert_chain = load_certs(&paths.cert)?;
    let key = load_key(&paths.key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(cert_chain, key)
        .map_err(|source| TlsError::Identity { cert: paths.cert.clone(), key: paths.key.clone(), source })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// For tests proving rejection: a client config that trusts the CA but presents no client
/// certificate.
pub fn client_config_without_identity(ca_cert: &Path) -> Result<quinn::ClientConfig, TlsError> {
    let roots = load_roots(ca_cert)?;
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    finish_client_config(tls)
}

fn finish_client_config(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|error| TlsError::Quic(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(CLIENT_KEEP_ALIVE, CLIENT_IDLE_TIMEOUT)));
    Ok(config)
}

fn transport_config(keep_alive: Duration, idle: Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(super::MAX_UDP_PAYLOAD);
    transport.keep_alive_interval(Some(keep_alive)).max_idle_timeout(Some(idle_timeout(idle))).mtu_discovery_config(Some(mtu));
    // BBR rather than quinn's default Cubic: edge links lose packets at random, and Cubic reads
    // every loss as congestion (window × 0.7) while quinn grows the window only when a frame
    // finds it full, so at 1 % loss it collapsed to ~12 KB and a 640x480 stream at half of a
    // 20 Mbit/s link queued for seconds. BBR paces at the measured bandwidth and kept QUIC level
    // with TCP there (ahead at 5 % loss); frame latency on clean links and behind a deep queue
    // was unchanged. Its cost: 8 frames in flight saturating a clean 20 Mbit/s link with a
    // 50 ms queue got ~25 % fewer 640x480 frames through (README "Impaired links").
    // quinn marks its BBR experimental; the lossy-link tests and benchmark exercise it.
    transport.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    // Ask the peer to acknowledge after ACK_ELICITING_THRESHOLD + 1 packets (at once on a gap,
    // within its max ACK delay otherwise) instead of every second one: fewer packets to encrypt,
    // send and wake up for per frame (QUIC CPU per frame halved on a 100 Mbit/s link).
    let mut ack_frequency = quinn::AckFrequencyConfig::default();
    ack_frequency.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    transport.ack_frequency_config(Some(ack_frequency));
    transport
}

fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn idle_timeout(duration: Duration) -> quinn::IdleTimeout {
    // The constants above are a few seconds, far below the 2^62 ms a VarInt holds.
    quinn::IdleTimeout::try_from(duration).expect("idle timeout constant fits in a QUIC VarInt")
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Invalid { path: path.to_path_buf(), reason: format!("malformed PEM: {error}") })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|error| TlsError::Invalid { path: path.to_path_buf(), reason: format!("malformed PEM: {error}") })?
        .ok_or_else(|| TlsError::NoPrivateKey { path: path.to_path_buf() })
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|error| TlsError::Invalid { path: path.to_path_buf(), reason: format!("not a usable CA certificate: {error}") })?;
    }
    Ok(Arc::new(roots))
}

fn common_name(name: &str) -> DistinguishedName {
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, name);
    distinguished_name
}

fn set_dev_validity(params: &mut CertificateParams) {
    let seconds_since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
    // Approximate year (mean Gregorian year); only used to pick round validity bounds.
    let current_year = 1970 + (seconds_since_epoch / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(current_year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(current_year + DEV_VALIDITY_YEARS, 1, 1);
}

/// Signs a leaf certificate with the CA; returns (certificate PEM, private key PEM).
fn issue_leaf(mut params: CertificateParams, ca: &CertifiedIssuer<'_, KeyPair>) -> Result<(String, String), TlsError> {
    let generate = |error: rcgen::Error| TlsError::Generate(error.to_string());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_dev_validity(&mut params);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &**ca).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn validate_worker_names(worker_names: &[String]) -> Result<(), TlsError> {
    if worker_names.is_empty() {
        return Err(TlsError::InvalidName {
            name: String::new(),
            reason: "the worker needs at least one DNS name or IP address (e.g. \"localhost\", \"127.0.0.1\") that edges will connect to"
                .into(),
        });
    }
    for name in worker_names {
        let is_dns_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if name.parse::<IpAddr>().is_err() && !is_dns_name {
            return Err(TlsError::InvalidName {
                name: name.clone(),
                reason: "a worker name must be a DNS name (letters, digits, '-', '.') or an IP address".into(),
            });
        }
    }
    Ok(())
}

/// Client names become file names in the PKI directory, so they must be plain, unique stems.
fn validate_client_names(client_names: &[String]) -> Result<(), TlsError> {
    for (index, name) in client_names.iter().enumerate() {
        let invalid = |reason: &str| TlsError::InvalidName { name: name.clone(), reason: reason.to_string() };
        if name.is_empty() || name.starts_with('.') {
            return Err(invalid("a client name must be non-empty and not start with '.'"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(invalid("a client name may contain only letters, digits, '-', '_' and '.' (it becomes a file name)"));
        }
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(invalid("\"ca\" and \"worker\" are the CA's and the worker's own files"));
        }
        if client_names[..index].contains(name) {
            return Err(invalid("client names must be unique"));
        }
    }
    Ok(())
}

fn write_pem(path: &Path, contents: &str, private: bool, overwrite: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let write_error = |source| TlsError::Write { path: path.to_path_buf(), source };
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        // Checked up front already; create_new also closes the race with a concurrent writer.
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            TlsError::AlreadyExists { path: path.to_path_buf() }
        } else {
            write_error(source)
        }
    })?;
    #[cfg(unix)]
    if private {
        // The mode above only applies to newly created files; an overwritten key keeps its old
        // mode unless tightened here, before the key is written.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(write_error)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(contents.as_bytes()).map_err(write_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    /// Long enough for a loopback handshake on a loaded CI machine, short enough to fail fast.
    const FAILURE_DEADLINE: Duration = Duration::from_secs(10);
    const PAYLOAD: &[u8] = b"frame 42: 640x480 rgb";

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn dev_pki(dir: &Path) -> GeneratedPki {
        generate_dev_pki(dir, &names(&["localhost", "127.0.0.1"]), &names(&["edge-01"]), false).expect("generate development PKI")
    }

    /// What the server saw for one incoming connection: the number of client certificates on
    /// success, or the handshake error.
    type ServerOutcome = Result<usize, String>;

    /// Echo server: each bidirectional stream gets its bytes sent back.
    fn spawn_echo_server(config: quinn::ServerConfig) -> (quinn::Endpoint, SocketAddr, mpsc::UnboundedReceiver<ServerOutcome>) {
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).expect("bind server");
        let address = endpoint.local_addr().expect("server address");
        let (outcome_sender, outcome_receiver) = mpsc::unbounded_channel();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let outcome_sender = outcome_sender.clone();
                tokio::spawn(async move {
                    let connection = match incoming.await {
                        Ok(connection) => connection,
                        Err(error) => {
                            let _ = outcome_sender.send(Err(error.to_string()));
                            return;
                        }
                    };
                    let client_certificates = connection
                        .peer_identity()
                        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
                        .map(|certificates| certificates.len())
                        .unwrap_or(0);
                    let _ = outcome_sender.send(Ok(client_certificates));
                    while let Ok((mut send, mut receive)) = connection.accept_bi().await {
                        let Ok(data) = receive.read_to_end(1 << 16).await else {
                            return;
                        };
                        if send.write_all(&data).await.is_err() || send.finish().is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (endpoint, address, outcome_receiver)
    }

    /// Connects, sends PAYLOAD on one stream and returns what came back.
    async fn echo_once(config: quinn::ClientConfig, server: SocketAddr, server_name: &str) -> Result<Vec<u8>, String> {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        let connection = endpoint
            .connect_with(config, server, server_name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut receive) = connection.open_bi().await.map_err(|e| format!("open stream: {e}"))?;
        send.write_all(PAYLOAD).await.map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let echoed = receive.read_to_end(1 << 16).await.map_err(|e| format!("read echo: {e}"))?;
        connection.close(0u32.into(), b"done");
        Ok(echoed)
    }

    /// With TLS 1.3 the client may consider the handshake done before the server has checked
    /// its certificate, so rejection can surface only once the stream is used: wait for the
    /// whole echo attempt to fail, on both sides, within a deadline.
    async fn assert_rejected(client: quinn::ClientConfig, server: quinn::ServerConfig) {
        let (_server_endpoint, address, mut outcomes) = spawn_echo_server(server);
        let client_result = timeout(FAILURE_DEADLINE, echo_once(client, address, "localhost"))
            .await
            .expect("the rejected client should see an error, not hang");
        match client_result {
            Ok(echoed) => panic!("client without a valid certificate got an echo: {echoed:?}"),
            Err(error) => eprintln!("client saw: {error}"),
        }
        let server_outcome =
            timeout(FAILURE_DEADLINE, outcomes.recv()).await.expect("server should report the handshake").expect("server task alive");
        match server_outcome {
            Ok(certificates) => {
                panic!("server accepted a connection with {certificates} client certificates")
            }
            Err(error) => eprintln!("server saw: {error}"),
        }
    }

    #[tokio::test]
    async fn client_with_certificate_from_the_ca_connects_and_echoes() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dev_pki(dir.path());
        let (_server_endpoint, address, mut outcomes) = spawn_echo_server(server_config(&pki.worker).unwrap());
        let client = client_config(&pki.clients[0].1).unwrap();

        // Connecting by IP address proves "127.0.0.1" became an IP SAN, not a DNS name.
        let echoed = timeout(FAILURE_DEADLINE, echo_once(client.clone(), address, "127.0.0.1"))
            .await
            .expect("echo within deadline")
            .expect("echo over mutual TLS");
        assert_eq!(echoed, PAYLOAD);
        let echoed = timeout(FAILURE_DEADLINE, echo_once(client, address, "localhost"))
            .await
            .expect("echo within deadline")
            .expect("echo over mutual TLS by DNS name");
        assert_eq!(echoed, PAYLOAD);

        let client_certificates = outcomes.recv().await.unwrap().expect("server handshake");
        assert_eq!(client_certificates, 1, "server should see the client's certificate");
    }

    #[tokio::test]
    async fn client_without_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dev_pki(dir.path());
        assert_rejected(client_config_without_identity(&pki.ca).unwrap(), server_config(&pki.worker).unwrap()).await;
    }

    #[tokio::test]
    async fn client_with_certificate_from_another_ca_is_rejected() {
        let trusted_dir = tempfile::tempdir().unwrap();
        let foreign_dir = tempfile::tempdir().unwrap();
        let trusted = dev_pki(trusted_dir.path());
        let foreign = dev_pki(foreign_dir.path());
        // Trusts the real CA (so the worker is accepted) but presents an identity signed by a
        // CA with the same name and a different key: only the signature tells them apart.
        let impostor =
            TlsPaths { ca_cert: trusted.ca.clone(), cert: foreign.clients[0].1.cert.clone(), key: foreign.clients[0].1.key.clone() };
        assert_rejected(client_config(&impostor).unwrap(), server_config(&trusted.worker).unwrap()).await;
    }

    #[tokio::test]
    async fn client_rejects_worker_from_another_ca() {
        let trusted_dir = tempfile::tempdir().unwrap();
        let foreign_dir = tempfile::tempdir().unwrap();
        let trusted = dev_pki(trusted_dir.path());
        let foreign = dev_pki(foreign_dir.path());
        let (_server_endpoint, address, _outcomes) = spawn_echo_server(server_config(&foreign.worker).unwrap());
        let result = timeout(FAILURE_DEADLINE, echo_once(client_config(&trusted.clients[0].1).unwrap(), address, "localhost"))
            .await
            .expect("failure within deadline");
        assert!(result.is_err(), "edge accepted a worker signed by another CA");
    }

    #[test]
    fn generate_dev_pki_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dev_pki(dir.path());
        let original_ca = fs::read(&pki.ca).unwrap();

        let error = generate_dev_pki(dir.path(), &names(&["localhost"]), &names(&["edge-01"]), false)
            .expect_err("second generation must not overwrite");
        match &error {
            TlsError::AlreadyExists { path } => assert!(path.starts_with(dir.path())),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert!(error.to_string().contains("ca.pem"), "{error}");
        assert_eq!(fs::read(&pki.ca).unwrap(), original_ca, "CA must be untouched");

        // A new client alone also collides with the existing CA files.
        assert!(matches!(
            generate_dev_pki(dir.path(), &names(&["localhost"]), &names(&["edge-02"]), false),
            Err(TlsError::AlreadyExists { .. })
        ));
        assert!(!dir.path().join("edge-02.pem").exists(), "refusal must write nothing");

        generate_dev_pki(dir.path(), &names(&["localhost"]), &names(&["edge-01"]), true).expect("overwrite when asked");
        assert_ne!(fs::read(&pki.ca).unwrap(), original_ca, "CA regenerated");
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pki = dev_pki(dir.path());
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for key in [dir.path().join("ca.key"), pki.worker.key.clone(), pki.clients[0].1.key.clone()] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        assert_eq!(mode(&pki.ca) & 0o077, 0o044, "certificates stay readable");

        // Overwriting a key that was made world-readable tightens it again.
        fs::set_permissions(&pki.worker.key, fs::Permissions::from_mode(0o644)).unwrap();
        generate_dev_pki(dir.path(), &names(&["localhost"]), &names(&["edge-01"]), true).unwrap();
        assert_eq!(mode(&pki.worker.key), 0o600);
    }

    #[test]
    fn missing_key_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dev_pki(dir.path());
        let missing = dir.path().join("missing.key");
        let paths = TlsPaths { key: missing.clone(), ..pki.worker.clone() };
        for error in
            [server_config(&paths).expect_err("server config without key"), client_config(&paths).expect_err("client config without key")]
        {
            match &error {
                TlsError::Read { path, .. } => assert_eq!(path, &missing),
                other => panic!("expected Read, got {other:?}"),
            }
            assert!(error.to_string().contains(&*missing.to_string_lossy()), "{error}");
        }
    }

    #[test]
    fn swapped_certificate_and_key_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dev_pki(dir.path());
        let swapped = TlsPaths { ca_cert: pki.ca.clone(), cert: pki.worker.key.clone(), key: pki.worker.cert.clone() };
        assert!(matches!(
            server_config(&swapped),
            Err(TlsError::NoCertificate { path }) if path == pki.worker.key
        ));
        let key_as_key_and_cert = TlsPaths { key: pki.worker.cert.clone(), ..pki.worker.clone() };
        assert!(matches!(
            client_config(&key_as_key_and_cert),
            Err(TlsError::NoPrivateKey { path }) if path == pki.worker.cert
        ));
        let mismatched = TlsPaths { key: pki.clients[0].1.key.clone(), ..pki.worker.clone() };
        assert!(matches!(server_config(&mismatched), Err(TlsError::Identity { .. })));
    }

    #[test]
    fn client_names_that_would_clash_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [&["worker"][..], &["../escape"], &["edge", "edge"], &[""], &[".hidden"]] {
            assert!(
                matches!(generate_dev_pki(dir.path(), &names(&["localhost"]), &names(bad), false), Err(TlsError::InvalidName { .. })),
                "{bad:?} should be refused"
            );
        }
        assert!(matches!(generate_dev_pki(dir.path(), &[], &names(&["edge-01"]), false), Err(TlsError::InvalidName { .. })));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
    }
}
