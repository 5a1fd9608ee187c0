//! Link emulator: two network namespaces joined by a forwarder that impairs the packets between
//! them (delay, jitter, loss, a rate limit with a bounded queue, outages). It exists because the
//! remote path must be judged on links like the ones edge devices have, loopback hides everything
//! such a link does to a transport, and this kernel has no `sch_netem`.
//!
//! [`EmulatedLink::start`] makes the namespaces `edgeseg-<pid>-<n>-server` and `…-client`, puts a
//! TUN device in each ([`SERVER_ADDRESS`] and [`CLIENT_ADDRESS`], one /24) and, on a forwarder
//! thread holding both TUN file descriptors, moves every IP packet from one to the other through
//! a [`LinkSpec`]'s impairments for that direction. TCP and QUIC cross the same link. Programs
//! run on one side with [`EmulatedLink::command`] (`ip netns exec`); a thread creates sockets on
//! one side inside [`EmulatedLink::enter`]. Dropping the link stops the forwarder and deletes both
//! namespaces, so a failing test leaves nothing behind; namespaces left by a killed process are
//! removed by the next [`EmulatedLink::start`].

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rng::SeededRng;

/// Address of the server side (worker, benchmark servers).
pub const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Address of the client side (edge, benchmark clients).
pub const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PREFIX_LENGTH: u8 = 24;
/// Name of the TUN device in both namespaces.
const DEVICE: &str = "edgeseg0";
const NAMESPACE_PREFIX: &str = "edgeseg-";
/// Where `ip netns add` keeps the namespaces it names.
const NETNS_DIR: &str = "/var/run/netns";
/// Without a rate limit's queue to fill, how long the bottleneck queue is, in time at the rate:
/// a modest buffer, as on a cellular or DSL uplink.
const DEFAULT_QUEUE_TIME: Duration = Duration::from_millis(50);
/// The forwarder looks at its stop flag at least this often.
const POLL_IDLE: Duration = Duration::from_millis(20);
/// Larger than any packet a TUN device with the default 1500-byte MTU hands out.
const PACKET_BUFFER_BYTES: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link spec token {token:?}: {reason}")]
    Spec { token: String, reason: String },
    /// This machine cannot emulate a link (not root, no network namespaces, no TUN): tests skip.
    #[error("cannot emulate a link on this machine: {0}")]
    Unavailable(String),
    #[error("link set-up failed: {0}")]
    Setup(String),
}

/// What one direction of the link does to its packets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ±jitter; packets are never reordered by it.
    pub jitter: Duration,
    /// Probability that a packet is lost on the wire (0..=1), drawn from a seeded generator.
    pub loss: f64,
    /// Bottleneck rate; `None` forwards packets as fast as they come.
    pub rate_bits_per_s: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops arrivals (tail drop); `None` is
    /// [`DEFAULT_QUEUE_TIME`] at the rate.
    pub queue_bytes: Option<u64>,
    /// Windows, counted from the link's start, in which nothing gets through.
    pub outages: Vec<Outage>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    pub start: Duration,
    pub length: Duration,
}

/// Impairments per direction: `up` carries client → server (frames), `down` server → client
/// (answers). Parsed from tokens like `delay=10ms,jitter=2ms,loss=1%,rate=20mbit,queue=100KB,
/// outage=5s+3s,seed=7`; a token applies to both directions unless its key starts with `up.` or
/// `down.` (`up.rate=5mbit`). `outage` may repeat. Delay is one-way: `delay=10ms` is a 20 ms RTT.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    pub up: Impairment,
    pub down: Impairment,
    /// Seed of the loss and jitter draws, so a run can be repeated packet for packet.
    pub seed: u64,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec { up: Impairment::default(), down: Impairment::default(), seed: 1 }
    }
}

impl std::str::FromStr for LinkSpec {
    type Err = LinkError;

    fn from_str(text: &str) -> Result<Self, LinkError> {
        let mut spec = LinkSpec::default();
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let bad = |reason: &str| LinkError::Spec { token: token.to_string(), reason: reason.to_string() };
            let (key, value) = token.split_once('=').ok_or_else(|| bad("expected key=value"))?;
            let (directions, key): (&mut [&mut Impairment], &str) = match key.split_once('.') {
                Some(("up", key)) => (&mut [&mut spec.up], key),
                Some(("down", key)) => (&mut [&mut spec.down], key),
                Some(_) => return Err(bad("a key's prefix is up. (client to server) or down. (server to client)")),
                None if key == "seed" => {
                    spec.seed = value.parse().map_err(|_| bad("seed is a whole number"))?;
                    continue;
                }
                None => (&mut [&mut spec.up, &mut spec.down], key),
            };
            for impairment in directions {
                match key {
                    "delay" => impairment.delay = parse_duration(value).map_err(|r| bad(&r))?,
                    "jitter" => impairment.jitter = parse_duration(value).map_err(|r| bad(&r))?,
                    "loss" => impairment.loss = parse_percentage(value).map_err(|r| bad(&r))?,
                    "rate" => impairment.rate_bits_per_s = Some(parse_rate(value).map_err(|r| bad(&r))?),
                    "queue" => impairment.queue_bytes = Some(parse_bytes(value).map_err(|r| bad(&r))?),
                    "outage" => {
                        let (start, length) = value.split_once('+').ok_or_else(|| bad("an outage is START+LENGTH, e.g. 5s+3s"))?;
                        let (start, length) = (parse_duration(start).map_err(|r| bad(&r))?, parse_duration(length).map_err(|r| bad(&r))?);
                        impairment.outages.push(Outage { start, length });
                    }
                    _ => return Err(bad("unknown key; known: delay, jitter, loss, rate, queue, outage, seed")),
                }
            }
        }
        // Checked once all tokens are read: rate may come after queue.
        for impairment in [&spec.up, &spec.down] {
            if impairment.queue_bytes.is_some() && impairment.rate_bits_per_s.is_none() {
                let token = text.split(',').find(|t| t.contains("queue=")).unwrap_or("queue").trim().to_string();
                return Err(LinkError::Spec { token, reason: "a queue only fills behind a rate limit; add rate=".into() });
            }
        }
        Ok(spec)
    }
}

fn parse_number(text: &str, unit_hint: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{text:?} is not a non-negative number; expected something like {unit_hint}"))
}

/// `10ms`, `1.5s`, `250us`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXAMPLE: &str = "10ms, 1.5s or 250us";
    let (number, nanos_per_unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e9)
    } else {
        return Err(format!("{text:?} has no unit; expected {EXAMPLE}"));
    };
    // In whole nanoseconds, so 10ms is exactly 10 ms (no binary fraction of a second).
    let nanos = (parse_number(number, EXAMPLE)? * nanos_per_unit).round();
    if nanos > 1e15 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// `1%`, `0.5%`.
fn parse_percentage(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix('%').ok_or_else(|| format!("{text:?} is not a percentage such as 1% or 0.5%"))?;
    let percent = parse_number(number, "1% or 0.5%")?;
    if percent > 100.0 {
        return Err(format!("{text:?} is over 100%"));
    }
    Ok(percent / 100.0)
}

/// `20mbit`, `500kbit`, `1gbit`, `9600bit`.
fn parse_rate(text: &str) -> Result<u64, String> {
    const EXAMPLE: &str = "20mbit, 500kbit or 1gbit";
    let lower = text.to_ascii_lowercase();
    let (number, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n.to_string(), *scale)))
        .ok_or_else(|| format!("{text:?} has no rate unit; expected {EXAMPLE}"))?;
    let bits = parse_number(&number, EXAMPLE)? * scale;
    if bits < 8000.0 {
        return Err(format!("{text:?} is below 8kbit, too slow for a single full-size packet a second"));
    }
    Ok(bits as u64)
}

/// `100KB`, `64KiB`, `1MB`, `1500B`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    const EXAMPLE: &str = "100KB, 64KiB, 1MB or 1500B";
    let lower = text.to_ascii_lowercase();
    let (number, scale) = [("kib", 1024.0), ("mib", 1048576.0), ("kb", 1e3), ("mb", 1e6), ("b", 1.0)]
        .iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n.to_string(), *scale)))
        .ok_or_else(|| format!("{text:?} has no size unit; expected {EXAMPLE}"))?;
    let bytes = parse_number(&number, EXAMPLE)? * scale;
    if bytes < 1500.0 {
        return Err(format!("{text:?} cannot hold one full-size (1500-byte) packet"));
    }
    Ok(bytes as u64)
}

impl Impairment {
    fn queue_limit(&self) -> Option<u64> {
        let rate = self.rate_bits_per_s?;
        Some(self.queue_bytes.unwrap_or_else(|| (rate as f64 / 8.0 * DEFAULT_QUEUE_TIME.as_secs_f64()).max(1500.0) as u64))
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delay {:?} ± {:?}, loss {}%", self.delay, self.jitter, self.loss * 100.0)?;
        match (self.rate_bits_per_s, self.queue_limit()) {
            (Some(rate), Some(queue)) => write!(f, ", rate {} Mbit/s, queue {} KB", rate as f64 / 1e6, queue as f64 / 1e3)?,
            _ => write!(f, ", no rate limit")?,
        }
        for o in &self.outages {
            write!(f, ", outage {:?}+{:?}", o.start, o.length)?;
        }
        Ok(())
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "up (client → server): {}; down: {}; seed {}", self.up, self.down, self.seed)
    }
}

/// One end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Packets one direction forwarded and dropped, and why.
#[derive(Debug, Default)]
struct DirectionCounters {
    forwarded: AtomicU64,
    lost: AtomicU64,
    queue_dropped: AtomicU64,
    outage_dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub forwarded: u64,
    /// Random loss on the wire.
    pub lost: u64,
    /// Tail drops at a full bottleneck queue.
    pub queue_dropped: u64,
    /// Dropped during an outage (or in flight when it began).
    pub outage_dropped: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub up: DirectionStats,
    pub down: DirectionStats,
}

impl fmt::Display for DirectionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} forwarded, {} lost, {} queue drops, {} outage drops",
            self.forwarded, self.lost, self.queue_dropped, self.outage_dropped
        )
    }
}

impl DirectionCounters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_dropped: self.queue_dropped.load(Ordering::Relaxed),
            outage_dropped: self.outage_dropped.load(Ordering::Relaxed),
        }
    }
}

/// A time window in which the link is cut.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        self.from <= t && t < self.until
    }
}

/// Two named network namespaces, deleted when dropped (also when set-up fails halfway).
struct Namespaces {
    server: String,
    client: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.server, &self.client] {
            if let Err(e) = ip(&["netns", "del", name]) {
                // A deleted name disappears even while processes still run inside; only a
                // failure to delete would leave something behind, so say so.
                if std::path::Path::new(NETNS_DIR).join(name).exists() {
                    tracing::warn!(namespace = %name, error = %e, "cannot delete the link's network namespace");
                }
            }
        }
    }
}

/// A running emulated link; see the module documentation.
pub struct EmulatedLink {
    forwarder: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    cuts: Arc<Mutex<Vec<Window>>>,
    counters: [Arc<DirectionCounters>; 2],
    spec: LinkSpec,
    // Last, so the forwarder (and with it the TUN devices) is gone before the namespaces go.
    namespaces: Namespaces,
}

impl EmulatedLink {
    /// Makes the namespaces and TUN devices and starts forwarding. [`LinkError::Unavailable`]
    /// when this machine cannot (not root, no `ip`, no network namespaces, no TUN device).
    pub fn start(spec: &LinkSpec) -> Result<Self, LinkError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LinkError::Unavailable("network namespaces and TUN devices need root".into()));
        }
        remove_stale_namespaces();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let stem = format!("{NAMESPACE_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &format!("{stem}-server")]).map_err(LinkError::Unavailable)?;
        let mut namespaces = Namespaces { server: format!("{stem}-server"), client: String::new() };
        ip(&["netns", "add", &format!("{stem}-client")]).map_err(LinkError::Setup)?;
        namespaces.client = format!("{stem}-client");

        let mut tuns = Vec::new();
        for (namespace, address) in [(&namespaces.server, SERVER_ADDRESS), (&namespaces.client, CLIENT_ADDRESS)] {
            tuns.push(open_tun_in(namespace)?);
            let address = format!("{address}/{PREFIX_LENGTH}");
            for args in [
                &["-n", namespace, "link", "set", "lo", "up"][..],
                &["-n", namespace, "addr", "add", &address, "dev", DEVICE],
                &["-n", namespace, "link", "set", DEVICE, "up"],
            ] {
                ip(args).map_err(LinkError::Setup)?;
            }
        }
        let [server_tun, client_tun]: [OwnedFd; 2] = tuns.try_into().map_err(|_| LinkError::Setup("two TUN devices expected".into()))?;

        let started = Instant::now();
        let counters = [Arc::new(DirectionCounters::default()), Arc::new(DirectionCounters::default())];
        let up = Direction::new(&spec.up, spec.seed, 0, started, counters[0].clone());
        let down = Direction::new(&spec.down, spec.seed, 1, started, counters[1].clone());
        let (stop, cuts) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let forwarder = Forwarder { server_tun, client_tun, up, down, stop: stop.clone(), cuts: cuts.clone() };
        let forwarder = std::thread::Builder::new()
            .name("link-forwarder".into())
            .spawn(move || forwarder.run())
            .map_err(|e| LinkError::Setup(format!("cannot start the forwarder thread: {e}")))?;
        Ok(EmulatedLink { forwarder: Some(forwarder), stop, cuts, counters, spec: spec.clone(), namespaces })
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    pub fn namespace(&self, side: Side) -> &str {
        match side {
            Side::Server => &self.namespaces.server,
            Side::Client => &self.namespaces.client,
        }
    }

    pub fn address(side: Side) -> Ipv4Addr {
        match side {
            Side::Server => SERVER_ADDRESS,
            Side::Client => CLIENT_ADDRESS,
        }
    }

    /// `program` run inside one side's namespace (through `ip netns exec`, which replaces itself
    /// with `program`, so the child's pid is the program's). The child is killed if the thread
    /// that spawned it ends first: a test that dies leaves no process running in a namespace.
    pub fn command(&self, side: Side, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.namespace(side)]).arg(program);
        // SAFETY: prctl is async-signal-safe and touches only the child's own settings.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
    }

    /// Moves the calling thread into one side's namespace until the guard drops: sockets (and
    /// threads) it creates meanwhile belong to that side, and keep it for their lifetime.
    pub fn enter(&self, side: Side) -> Result<InNamespace, LinkError> {
        InNamespace::enter(self.namespace(side))
    }

    /// Cuts the link in both directions from now for `length`; packets in flight are lost too.
    pub fn cut_for(&self, length: Duration) {
        let from = Instant::now();
        self.cuts.lock().expect("cuts lock").push(Window { from, until: from + length });
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats { up: self.counters[0].snapshot(), down: self.counters[1].snapshot() }
    }
}

impl Drop for EmulatedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(forwarder) = self.forwarder.take() {
            let _ = forwarder.join();
        }
    }
}

/// The calling thread inside a network namespace; back in its previous one when dropped.
pub struct InNamespace {
    previous: File,
    /// setns acts on the calling thread only: the guard must be dropped on the thread it entered.
    _same_thread: std::marker::PhantomData<*const ()>,
}

impl InNamespace {
    fn enter(namespace: &str) -> Result<Self, LinkError> {
        let previous = File::open("/proc/thread-self/ns/net")
            .map_err(|e| LinkError::Setup(format!("cannot open this thread's network namespace: {e}")))?;
        let path = std::path::Path::new(NETNS_DIR).join(namespace);
        let target = File::open(&path).map_err(|e| LinkError::Setup(format!("cannot open {}: {e}", path.display())))?;
        set_network_namespace(&target).map_err(|e| LinkError::Setup(format!("cannot enter namespace {namespace}: {e}")))?;
        Ok(InNamespace { previous, _same_thread: std::marker::PhantomData })
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        if let Err(e) = set_network_namespace(&self.previous) {
            // Returning to a namespace this thread was in cannot fail short of a kernel bug; a
            // thread left on the wrong side would silently measure the wrong path.
            panic!("cannot return the thread to its network namespace: {e}");
        }
    }
}

fn set_network_namespace(namespace: &File) -> io::Result<()> {
    // SAFETY: setns on a valid namespace descriptor; it changes only the calling thread.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `ip` with `args`; the error carries the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Deletes `edgeseg-<pid>-…` namespaces whose process is gone (killed before its drop ran).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NAMESPACE_PREFIX).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A zombie (killed, not yet reaped) still holds its pid but will never delete its namespaces.
fn process_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may contain anything.
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

/// Opens a TUN device (IP packets, no extra header) inside `namespace`. The device lives in the
/// namespace of the thread that creates it, so a short-lived thread enters the namespace for it;
/// the descriptor then works from anywhere.
fn open_tun_in(namespace: &str) -> Result<OwnedFd, LinkError> {
    let namespace = namespace.to_string();
    std::thread::spawn(move || {
        let _inside = InNamespace::enter(&namespace)?;
        open_tun().map_err(|e| LinkError::Unavailable(format!("cannot create a TUN device in {namespace}: {e}")))
    })
    .join()
    .map_err(|_| LinkError::Setup("the TUN set-up thread panicked".into()))?
}

fn open_tun() -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(DEVICE.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// One direction's state: a FIFO bottleneck (serialisation at the rate, bounded queue), the
/// wire (loss), then propagation (delay and jitter), in that order, as on a real access link.
struct Direction {
    impairment: Impairment,
    queue_limit: Option<u64>,
    outages: Vec<Window>,
    random: SeededRng,
    /// When the bottleneck finishes sending what it already holds.
    bottleneck_free_at: Instant,
    /// Release time of the previous packet: jitter never reorders.
    last_release: Instant,
    in_flight: VecDeque<(Instant, Vec<u8>)>,
    counters: Arc<DirectionCounters>,
}

impl Direction {
    fn new(impairment: &Impairment, seed: u64, index: u64, started: Instant, counters: Arc<DirectionCounters>) -> Self {
        let outages = impairment.outages.iter().map(|o| Window { from: started + o.start, until: started + o.start + o.length }).collect();
        Direction {
            impairment: impairment.clone(),
            queue_limit: impairment.queue_limit(),
            outages,
            random: SeededRng::new(seed ^ (index + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)),
            bottleneck_free_at: started,
            last_release: started,
            in_flight: VecDeque::new(),
            counters,
        }
    }

    fn cut(&self, t: Instant, cuts: &[Window]) -> bool {
        self.outages.iter().chain(cuts).any(|w| w.contains(t))
    }

    /// Admits a packet read from the sending side at `now` (or drops it, counted).
    fn admit(&mut self, packet: &[u8], now: Instant, cuts: &[Window]) {
        if self.cut(now, cuts) {
            self.counters.outage_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut departure = now;
        if let (Some(rate), Some(limit)) = (self.impairment.rate_bits_per_s, self.queue_limit) {
            // Bytes still waiting in the bottleneck = its remaining busy time at the rate.
            // Integer nanoseconds keep the schedule exact and free of drift.
            let backlog = self.bottleneck_free_at.saturating_duration_since(now).as_nanos() * rate as u128 / 8_000_000_000;
            if backlog + packet.len() as u128 > limit as u128 {
                self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let sending = Duration::from_nanos((packet.len() as u128 * 8_000_000_000 / rate as u128) as u64);
            departure = self.bottleneck_free_at.max(now) + sending;
            self.bottleneck_free_at = departure;
        }
        if self.impairment.loss > 0.0 && self.random.next_f64() < self.impairment.loss {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut propagation = self.impairment.delay;
        if !self.impairment.jitter.is_zero() {
            let jitter_nanos = self.impairment.jitter.as_nanos() as f64 * (2.0 * self.random.next_f64() - 1.0);
            propagation = Duration::from_nanos((propagation.as_nanos() as f64 + jitter_nanos).max(0.0) as u64);
        }
        let release = (departure + propagation).max(self.last_release);
        self.last_release = release;
        self.in_flight.push_back((release, packet.to_vec()));
    }

    /// Writes every packet due by `now` to the receiving side.
    fn deliver_due(&mut self, now: Instant, cuts: &[Window], to: RawFd) {
        while self.in_flight.front().is_some_and(|(release, _)| *release <= now) {
            let Some((release, packet)) = self.in_flight.pop_front() else { break };
            if self.cut(release, cuts) {
                self.counters.outage_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // SAFETY: writing an initialised buffer to an open descriptor. A TUN write either
            // takes the whole packet or fails; a failure is a packet lost, as on a real link.
            let written = unsafe { libc::write(to, packet.as_ptr().cast(), packet.len()) };
            if written == packet.len() as isize {
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Forwarder {
    server_tun: OwnedFd,
    client_tun: OwnedFd,
    /// client → server
    up: Direction,
    /// server → client
    down: Direction,
    stop: Arc<AtomicBool>,
    cuts: Arc<Mutex<Vec<Window>>>,
}

impl Forwarder {
    fn run(mut self) {
        let mut buffer = vec![0u8; PACKET_BUFFER_BYTES];
        let (server, client) = (self.server_tun.as_raw_fd(), self.client_tun.as_raw_fd());
        while !self.stop.load(Ordering::Relaxed) {
            let cuts = self.cuts.lock().expect("cuts lock").clone();
            let now = Instant::now();
            self.up.deliver_due(now, &cuts, server);
            self.down.deliver_due(now, &cuts, client);
            let next_release = [&self.up, &self.down].iter().filter_map(|d| d.in_flight.front().map(|(t, _)| *t)).min();
            let wait = next_release.map_or(POLL_IDLE, |t| t.saturating_duration_since(Instant::now()).min(POLL_IDLE));
            let mut fds = [
                libc::pollfd { fd: client, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: server, events: libc::POLLIN, revents: 0 },
            ];
            let timeout = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
            // SAFETY: fds and timeout are valid for the call; a null signal mask keeps the current one.
            let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &timeout, std::ptr::null()) };
            if ready <= 0 {
                continue;
            }
            for (pollfd, direction) in fds.iter().zip([&mut self.up, &mut self.down]) {
                if pollfd.revents & libc::POLLIN == 0 {
                    continue;
                }
                // Drain what is queued (bounded, so the other direction is not starved).
                for _ in 0..256 {
                    // SAFETY: reading into a buffer we own, at most its length.
                    let n = unsafe { libc::read(pollfd.fd, buffer.as_mut_ptr().cast(), buffer.len()) };
                    if n <= 0 {
                        break;
                    }
                    direction.admit(&buffer[..n as usize], Instant::now(), &cuts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_applies_to_both_directions_unless_prefixed() {
        let spec: LinkSpec =
            "delay=10ms,jitter=2ms,loss=1%,rate=20mbit,queue=100KB,outage=5s+3s,up.loss=5%,down.rate=1.5mbit,seed=7".parse().unwrap();
        assert_eq!(spec.seed, 7);
        assert_eq!(spec.up.delay, Duration::from_millis(10));
        assert_eq!(spec.down.jitter, Duration::from_millis(2));
        assert_eq!((spec.up.loss, spec.down.loss), (0.05, 0.01));
        assert_eq!((spec.up.rate_bits_per_s, spec.down.rate_bits_per_s), (Some(20_000_000), Some(1_500_000)));
        assert_eq!(spec.up.queue_bytes, Some(100_000));
        assert_eq!(spec.down.outages, vec![Outage { start: Duration::from_secs(5), length: Duration::from_secs(3) }]);
        // 50 ms at 20 Mbit/s when no queue is given.
        let defaults: LinkSpec = "rate=20mbit".parse().unwrap();
        assert_eq!(defaults.up.queue_limit(), Some(125_000));
        assert_eq!("".parse::<LinkSpec>().unwrap(), LinkSpec::default());
    }

    #[test]
    fn bad_tokens_are_named_with_the_reason() {
        for (text, token, needle) in [
            ("delay=10", "delay=10", "no unit"),
            ("delay=10ms,loss=1", "loss=1", "percentage"),
            ("loss=120%", "loss=120%", "over 100%"),
            ("rate=20mbps", "rate=20mbps", "20mbit"),
            ("rate=20mbit,queue=1", "queue=1", "size unit"),
            ("queue=100KB", "queue=100KB", "add rate="),
            ("outage=5s", "outage=5s", "START+LENGTH"),
            ("sideways.loss=1%", "sideways.loss=1%", "up."),
            ("lag=3ms", "lag=3ms", "unknown key"),
            ("delay", "delay", "key=value"),
            ("seed=x", "seed=x", "whole number"),
            ("delay=-3ms", "delay=-3ms", "non-negative"),
        ] {
            let message = text.parse::<LinkSpec>().unwrap_err().to_string();
            assert!(message.contains(&format!("{token:?}")) && message.contains(needle), "{text}: {message}");
        }
    }

    fn direction(spec: &str, started: Instant) -> Direction {
        let spec: LinkSpec = spec.parse().unwrap();
        Direction::new(&spec.up, spec.seed, 0, started, Arc::default())
    }

    #[test]
    fn bottleneck_serialises_at_the_rate_and_drops_when_its_queue_is_full() {
        let t0 = Instant::now();
        // 8 Mbit/s = 1 byte per µs; the queue holds three 1000-byte packets.
        let mut d = direction("rate=8mbit,queue=3000B,delay=10ms", t0);
        for _ in 0..4 {
            d.admit(&[0; 1000], t0, &[]);
        }
        let releases: Vec<Duration> = d.in_flight.iter().map(|(t, _)| *t - t0).collect();
        let ms = Duration::from_millis;
        assert_eq!(releases, vec![ms(11), ms(12), ms(13)]);
        assert_eq!(d.counters.snapshot().queue_dropped, 1);
        // Once the bottleneck has sent a packet, there is room again.
        d.admit(&[0; 1000], t0 + ms(1), &[]);
        assert_eq!(d.in_flight.back().map(|(t, _)| *t - t0), Some(ms(14)));
    }

    #[test]
    fn seeded_loss_is_near_its_rate_and_repeatable() {
        let t0 = Instant::now();
        let run = || {
            let mut d = direction("loss=5%,seed=42", t0);
            (0..20_000).for_each(|_| d.admit(&[0; 100], t0, &[]));
            d.counters.snapshot().lost
        };
        let lost = run();
        assert!((800..1200).contains(&lost), "5% of 20000 is about 1000, got {lost}");
        assert_eq!(run(), lost, "the same seed loses the same packets");
    }

    #[test]
    fn jitter_varies_the_delay_without_reordering() {
        let t0 = Instant::now();
        let mut d = direction("delay=10ms,jitter=5ms", t0);
        for i in 0..1000 {
            d.admit(&[0; 100], t0 + Duration::from_micros(i * 100), &[]);
        }
        let releases: Vec<Instant> = d.in_flight.iter().map(|(t, _)| *t).collect();
        assert!(releases.windows(2).all(|w| w[0] <= w[1]), "released in order");
        let delays: Vec<Duration> =
            d.in_flight.iter().enumerate().map(|(i, (t, _))| *t - (t0 + Duration::from_micros(i as u64 * 100))).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(5) && *d <= Duration::from_millis(15)), "{delays:?}");
        assert!(delays.iter().any(|d| *d != delays[0]), "the delay varies");
    }

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn outages_drop_arrivals_and_packets_in_flight() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = direction("delay=10ms,outage=100ms+50ms", t0);
        d.admit(&[0; 100], t0 + ms(95), &[]); // would arrive at 105 ms, inside the outage
        d.admit(&[0; 100], t0 + ms(120), &[]); // sent into the cut link
        d.admit(&[0; 100], t0 + ms(150), &[]); // after it
        assert_eq!(d.in_flight.len(), 2);
        let cut = [Window { from: t0 + ms(200), until: t0 + ms(300) }];
        d.admit(&[0; 100], t0 + ms(250), &cut); // a cut made at run time
        assert_eq!(d.counters.snapshot().outage_dropped, 2);
        // Delivering at 200 ms (fd -1: the write fails, nothing is counted as forwarded) drops
        // the packet that reached the outage in flight.
        d.deliver_due(t0 + ms(200), &cut, -1);
        assert_eq!(d.counters.snapshot().outage_dropped, 3);
        assert!(d.in_flight.is_empty());
    }
}
