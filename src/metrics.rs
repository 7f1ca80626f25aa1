//! Prometheus metrics, served as OpenMetrics text at `GET /metrics`.
//!
//! One [`Metrics`] per node, cloned into the layers that record: the HTTP
//! layer (requests and latency by route and status), storage (commit latency
//! and batch size, increments applied), the transport (bytes per peer),
//! replication (pushes and pulls by outcome, reachability and lag per peer),
//! consistent reads (outcome and duration) and the server (open and refused
//! connections by class). Gauges that are cheaper to read than to track
//! (names, remembered keys) are set when scraped; so are the standard
//! `process_*` metrics (CPU, resident memory, open and allowed file
//! descriptors, start time), read from the kernel at each scrape.
//! `tally_build_info{version}` is always 1.
//! Labels are bounded: routes are templates, methods a fixed few, peers
//! are config actors.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub method: &'static str,
    pub route: &'static str,
}

/// A request method as a label: the common ones by name, the rest `other`.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peer {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerOutcome {
    pub peer: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// A connection's class: `client`, `peer`, or `pending` (accepted, not
/// admitted to a budget yet).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionClass {
    pub class: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Registers each metric under its name and help text.
macro_rules! register {
    ($r:expr, $($name:literal, $help:literal => $metric:expr;)*) => {
        $($r.register($name, $help, $metric.clone());)*
    };
}

/// Every metric of a node; cheap to clone (all handles share their values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RouteStatus, Counter>,
    pub request_seconds: HistogramFamily<Route>,
    pub increments: Counter,
    pub commit_seconds: Histogram,
    pub commit_batch_size: Histogram,
    pub peer_bytes_sent: Family<Peer, Counter>,
    pub peer_bytes_received: Family<Peer, Counter>,
    pub pushes: Family<PeerOutcome, Counter>,
    pub pulls: Family<PeerOutcome, Counter>,
    pub pulled_names: Family<Peer, Counter>,
    pub pulls_ahead: Family<PeerOutcome, Counter>,
    pub peer_up: Family<Peer, Gauge>,
    pub peer_lag: Family<Peer, Gauge>,
    pub consistent_reads: Family<Outcome, Counter>,
    pub consistent_seconds: Histogram,
    /// The sum of `consistent_seconds`, which the histogram does not give
    /// back: the node's history takes the mean read duration from it. Not
    /// exported (the histogram's `_sum` is).
    pub consistent_seconds_sum: Counter<f64, AtomicU64>,
    pub names: Gauge,
    pub idempotency_keys: Gauge,
    pub storage_healthy: Gauge,
    pub storage_errors: Counter,
    pub storage_recoveries: Counter,
    pub storage_damage: Counter,
    pub storage_salvages: Gauge,
    pub storage_scrub_passes: Counter,
    pub storage_scrubbed_bytes: Counter,
    pub replica_waits: Family<Outcome, Counter>,
    pub connections: Family<ConnectionClass, Gauge>,
    pub connections_refused: Family<ConnectionClass, Counter>,
    /// The last sample of the data folder's file system, which
    /// `tally_storage_free_bytes` reports.
    folder: Arc<Mutex<Space>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            increments: Counter::default(),
            commit_seconds: latency_histogram(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            peer_bytes_sent: Family::default(),
            peer_bytes_received: Family::default(),
            pushes: Family::default(),
            pulls: Family::default(),
            pulled_names: Family::default(),
            pulls_ahead: Family::default(),
            peer_up: Family::default(),
            peer_lag: Family::default(),
            consistent_reads: Family::default(),
            consistent_seconds: latency_histogram(),
            consistent_seconds_sum: Counter::default(),
            names: Gauge::default(),
            idempotency_keys: Gauge::default(),
            storage_healthy: Gauge::default(),
            storage_errors: Counter::default(),
            storage_recoveries: Counter::default(),
            storage_damage: Counter::default(),
            storage_salvages: Gauge::default(),
            storage_scrub_passes: Counter::default(),
            storage_scrubbed_bytes: Counter::default(),
            replica_waits: Family::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            folder: Arc::default(),
        };
        let mut root = Registry::default();
        root.register_collector(Box::new(Process {
            started: std::time::SystemTime::now(),
        }));
        root.register_collector(Box::new(Folder(m.folder.clone())));
        let r = root.sub_registry_with_prefix("tally");
        r.register(
            "build",
            "Version of this build (always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        register!(r,
            "http_requests", "HTTP requests by route and status" => m.requests;
            "http_request_seconds", "HTTP request latency by route" => m.request_seconds;
            "increments_applied", "Increment requests applied (not replays)" => m.increments;
            "storage_commit_seconds", "Storage commit latency" => m.commit_seconds;
            "storage_commit_batch_size", "Operations per storage commit" => m.commit_batch_size;
            "peer_bytes_sent", "Bytes sent to each peer" => m.peer_bytes_sent;
            "peer_bytes_received", "Bytes received from each peer" => m.peer_bytes_received;
            "replication_pushes", "Pushes to each peer by outcome" => m.pushes;
            "replication_pulls", "Anti-entropy pulls from each peer by outcome" => m.pulls;
            "replication_pulled_names", "Names received by anti-entropy from each peer" => m.pulled_names;
            "replication_pulls_ahead", "Pages fetched from each peer while the page before merged, by outcome" => m.pulls_ahead;
            "peer_up", "1 if the peer answered the last call, else 0" => m.peer_up;
            "peer_lag_changes", "Changes the peer had that this node had not merged at the last pull" => m.peer_lag;
            "consistent_reads", "Consistent reads by outcome" => m.consistent_reads;
            "consistent_read_seconds", "Consistent read duration" => m.consistent_seconds;
            "names", "Counter names stored on this node" => m.names;
            "idempotency_keys", "Idempotency keys remembered" => m.idempotency_keys;
            "storage_healthy", "1 while storage commits succeed, 0 during a failure or a stalled commit" => m.storage_healthy;
            "storage_errors", "Failed storage commits and recovery attempts" => m.storage_errors;
            "storage_recoveries", "Storage failure episodes ended by reopening the database" => m.storage_recoveries;
            "storage_damage", "Places in the data folder's files found damaged since start (when opening them, or by the scrub)" => m.storage_damage;
            "storage_salvages", "Salvages recorded in the data folder: damage found when opening it, and the node going on under a new incarnation" => m.storage_salvages;
            "storage_scrub_passes", "Scrub passes finished over the data folder's files" => m.storage_scrub_passes;
            "storage_scrubbed_bytes", "Bytes read and checked by the scrub" => m.storage_scrubbed_bytes;
            "replica_waits", "Increments that waited for other actors to store them, by outcome" => m.replica_waits;
            "connections", "Open connections by class: client, peer, pending (accepted, not admitted yet)" => m.connections;
            "connections_refused",
                "Connections refused by class: over the client or the peer budget, or pending ones closed to make room"
                => m.connections_refused;
        );
        Metrics {
            registry: Arc::new(root),
            ..m
        }
    }

    /// Reports the free space of the file system that holds `dir`, sampled
    /// every [`SPACE_EVERY`] by a thread of its own.
    pub fn watch_folder(&self, dir: &Path) {
        self.watch_folder_with(dir, Arc::new(statvfs_space), SPACE_EVERY);
    }

    fn watch_folder_with(&self, dir: &Path, stat: Arc<StatFn>, every: Duration) {
        let generation = {
            let mut space = self.folder.lock().unwrap_or_else(|p| p.into_inner());
            space.generation += 1;
            space.sample = None;
            space.generation
        };
        let slot = Arc::downgrade(&self.folder);
        let dir = dir.to_path_buf();
        let sampler = move || {
            loop {
                // Nothing held while the file system is asked: a stuck call
                // blocks this thread only, and the metrics can go away.
                let sample = stat(&dir).map(|(free, size)| (free, size, Instant::now()));
                // A folder not there yet (the node creates it after this
                // starts) is looked for again soon.
                let pause = match sample {
                    Some(_) => every,
                    None => every.min(Duration::from_millis(100)),
                };
                let Some(slot) = slot.upgrade() else { return };
                {
                    let mut space = slot.lock().unwrap_or_else(|p| p.into_inner());
                    if space.generation != generation {
                        return;
                    }
                    space.sample = sample;
                }
                drop(slot);
                std::thread::sleep(pause);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("tally-space".into())
            .spawn(sampler)
        {
            tracing::warn!(error = %e, "cannot sample the data folder's free space");
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The standard `process_*` metrics of this process, read at each scrape.
#[derive(Debug)]
struct Process {
    started: std::time::SystemTime,
}

impl Process {
    /// User plus system CPU time of the whole process, in seconds.
    fn cpu_seconds() -> Option<f64> {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(secs(usage.ru_utime) + secs(usage.ru_stime))
    }

    /// Resident set size in bytes (second field of /proc/self/statm, in pages).
    fn resident_bytes() -> Option<f64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * if page > 0 { page as f64 } else { 4096.0 })
    }

    fn open_fds() -> Option<f64> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
    }

    /// The soft limit on open file descriptors.
    fn max_fds() -> Option<f64> {
        // SAFETY: getrlimit only writes the struct it is given.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        Some(lim.rlim_cur as f64)
    }
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = Self::cpu_seconds() {
            let m = ConstCounter::new(cpu);
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                m.metric_type(),
            )?)?;
        }
        let start = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .ok();
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Self::resident_bytes(),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                Self::open_fds(),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                Self::max_fds(),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                start,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let m = ConstGauge::new(v);
                m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// How often the data folder's file system is sampled.
pub const SPACE_EVERY: Duration = Duration::from_secs(5);

/// How the space of a folder's file system is read: (bytes available to an
/// unprivileged user, bytes in all).
type StatFn = dyn Fn(&Path) -> Option<(f64, f64)> + Send + Sync;

/// The space of the file system that holds the data folder. A thread asks
/// the file system (`statvfs`) every [`SPACE_EVERY`] and leaves its answer
/// here; a scrape reports the last answer and its age. A scrape never asks
/// the file system itself: on a stalled file system (a dead network mount,
/// a failing disk) the call can block for as long as the kernel likes, and
/// a scrape must answer (G6). A stalled sampler shows as an age that grows.
#[derive(Debug, Default)]
struct Space {
    /// (free, size, when read) from the last call that succeeded.
    sample: Option<(f64, f64, Instant)>,
    /// Bumped by each `watch_folder`: the sampler of an older one stops.
    generation: u64,
}

fn statvfs_space(dir: &Path) -> Option<(f64, f64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads a NUL-terminated path and only writes the
    // struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as f64;
    Some((st.f_bavail as f64 * unit, st.f_blocks as f64 * unit))
}

#[derive(Debug)]
struct Folder(Arc<Mutex<Space>>);

impl Collector for Folder {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = self.0.lock().unwrap_or_else(|p| p.into_inner()).sample;
        let Some((free, size, at)) = sample else {
            return Ok(());
        };
        let gauges = [
            (
                "tally_storage_free_bytes",
                "Bytes the node may still write on the file system of its data folder",
                free,
            ),
            (
                "tally_storage_size_bytes",
                "Size in bytes of the file system of the data folder",
                size,
            ),
            (
                "tally_storage_space_age_seconds",
                "Age of the last reading of the free space: grows while the file system does not answer",
                at.elapsed().as_secs_f64(),
            ),
        ];
        for (name, help, value) in gauges {
            let m = ConstGauge::new(value);
            m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_text() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RouteStatus {
                method: "POST",
                route: "/counter/{name}",
                status: 200,
            })
            .inc();
        m.increments.inc_by(3);
        m.peer_up
            .get_or_create(&Peer {
                peer: "10.0.0.2:7777".into(),
            })
            .set(1);
        let text = m.encode();
        assert!(
            text.contains(
                r#"tally_http_requests_total{method="POST",route="/counter/{name}",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"tally_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for process in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(process), "{process} missing in\n{text}");
        }
        assert!(text.contains("tally_increments_applied_total 3"), "{text}");
        assert!(
            text.contains(r#"tally_peer_up{peer="10.0.0.2:7777"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    /// Encodes until `ok` holds of the text, for at most 30 s.
    fn encode_until(m: &Metrics, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = m.encode();
            if ok(&text) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The free space of the data folder's file system, once the folder is
    /// known, and not before.
    #[test]
    fn the_data_folders_free_space_is_reported() {
        let m = Metrics::new();
        assert_eq!(value(&m.encode(), "tally_storage_free_bytes"), None);
        m.watch_folder(&std::env::temp_dir());
        let text = encode_until(&m, |t| value(t, "tally_storage_free_bytes").is_some());
        let free = value(&text, "tally_storage_free_bytes").expect(&text);
        let size = value(&text, "tally_storage_size_bytes").expect(&text);
        assert!(size > 0.0 && free <= size, "free {free} of {size}");
        m.watch_folder(Path::new("/no/such/folder/anywhere"));
        assert_eq!(value(&m.encode(), "tally_storage_free_bytes"), None);
    }

    /// A folder that does not exist yet when it is named (a node creates
    /// its data folder after its metrics start) is reported soon after it
    /// appears, not a whole sampling period later.
    #[test]
    fn a_folder_made_after_it_is_watched_is_reported_soon() {
        let dir = std::env::temp_dir().join(format!("tally-space-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Metrics::new();
        m.watch_folder(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let started = Instant::now();
        let text = encode_until(&m, |t| value(t, "tally_storage_free_bytes").is_some());
        let took = started.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(value(&text, "tally_storage_free_bytes").is_some(), "{text}");
        assert!(took < SPACE_EVERY, "reported after {took:?}");
    }

    /// A file system that stops answering (a dead mount) blocks the
    /// sampler, never a scrape: the scrape reports the last reading, and
    /// its age grows.
    #[test]
    fn a_stuck_file_system_does_not_block_a_scrape() {
        let release = Arc::new(Mutex::new(()));
        let held = release.lock().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let stat: Arc<StatFn> = Arc::new({
            let (release, calls) = (release.clone(), calls.clone());
            move |_: &Path| {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                    // Every call after the first hangs until the test ends.
                    drop(release.lock());
                }
                Some((1.0, 2.0))
            }
        });
        let m = Metrics::new();
        m.watch_folder_with(Path::new("/"), stat, Duration::from_millis(10));
        let text = encode_until(&m, |t| {
            value(t, "tally_storage_space_age_seconds").is_some_and(|age| age >= 0.5)
        });
        assert_eq!(
            value(&text, "tally_storage_free_bytes"),
            Some(1.0),
            "{text}"
        );
        assert!(
            value(&text, "tally_storage_space_age_seconds").is_some_and(|age| age >= 0.5),
            "the age of a reading the file system cannot renew grows: {text}"
        );
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        drop(held);
    }
}
