//! The one logging backend behind the `log` facade, installed once by the `ember` binary.
//!
//! Every layer (devices, vmm, the pod process, the OCI face) logs with `log::warn!` and
//! friends; this backend writes each record as one line in runc's format, because the engines
//! read it:
//! - text (default): `time="2026-12-01T10:00:00Z" level=warning msg="..." thread=vcpu0
//!   module=devices::virtio::mmio`, logrus style;
//! - JSON (`--log-format json`): `{"level","msg","time","thread","module"}` per line, which
//!   containerd's shim and podman parse.
//!
//! Lines go to `--log FILE` when given (appended, one `write` per line, so processes sharing
//! the file do not interleave), else to stderr. With a file, runc also prints the bare message
//! of an error to stderr; so does this backend ([`Config::errors_to_stderr`]). A pod's VMM
//! process logs to its stderr, which is `<pod dir>/vmm.log`, and in addition to the engine's
//! log file when the OCI face started it.
//!
//! Each call site (source file and line) may write [`SITE_BURST`] lines at once and then one
//! per [`SITE_REFILL`]: what a guest can make a device say at every request (a malformed
//! descriptor, a refused connection) must not fill the host's disk through the pod's log.
//! The next line a site writes after some were dropped says how many, as the kernel's
//! printk rate limit does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may write at once ([`Sites`]).
pub const SITE_BURST: u32 = 20;
/// After its burst, a call site gets one more line per this much time.
pub const SITE_REFILL: Duration = Duration::from_secs(1);

/// One call site's budget of lines.
struct SiteBudget {
    lines: u32,
    since: Instant,
    dropped: u64,
}

/// Per call site line budgets (the module doc says why).
#[derive(Default)]
struct Sites(Mutex<HashMap<(&'static str, u32), SiteBudget>>);

impl Sites {
    /// Whether the site `(file, line)` may write a line at `now`: `Some(n)` with the lines it
    /// had dropped since its last one, `None` when this one is dropped too.
    fn admit(&self, site: (&'static str, u32), now: Instant) -> Option<u64> {
        let Ok(mut sites) = self.0.lock() else {
            return Some(0);
        };
        let b = sites.entry(site).or_insert(SiteBudget {
            lines: SITE_BURST,
            since: now,
            dropped: 0,
        });
        let earned = now.saturating_duration_since(b.since).as_nanos() / SITE_REFILL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            b.lines = b.lines.saturating_add(earned).min(SITE_BURST);
            b.since = if b.lines == SITE_BURST {
                now
            } else {
                b.since + SITE_REFILL * earned
            };
        }
        if b.lines == 0 {
            b.dropped += 1;
            return None;
        }
        b.lines -= 1;
        Some(std::mem::take(&mut b.dropped))
    }
}

/// Environment variable that overrides the level (`error`, `warn`, `info`, `debug`, `trace`).
pub const LEVEL_ENV: &str = "EMBER_LOG";

/// Line format of the log.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// logrus-style `key=value` text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// The flag's spelling (`text`, `json`), for handing it to a child process.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Bad {LEVEL_ENV} level {0:?} (error, warn, info, debug or trace)")]
    Level(String),
}

/// What to install.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `--log FILE`; `None`: stderr.
    pub file: Option<PathBuf>,
    /// A second file that gets every line too (the engine's log for a pod's VMM process).
    pub also: Option<PathBuf>,
    pub format: Format,
    /// `--debug`: debug lines too (the default level is info).
    pub debug: bool,
    /// With a log file, also print the bare message of each error to stderr (runc does).
    pub errors_to_stderr: bool,
}

struct Sink {
    file: Option<Mutex<File>>,
}

impl Sink {
    fn open(path: Option<&Path>) -> Result<Sink, Error> {
        let file = match path {
            None => None,
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| Error::Open {
                        path: p.to_path_buf(),
                        source,
                    })?,
            )),
        };
        Ok(Sink { file })
    }

    fn write(&self, line: &str) {
        let bytes = format!("{line}\n");
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(bytes.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().lock().write_all(bytes.as_bytes());
            }
        }
    }
}

struct Backend {
    level: log::LevelFilter,
    format: Format,
    sinks: Vec<Sink>,
    errors_to_stderr: bool,
    sites: Sites,
}

impl log::Log for Backend {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let dropped = match (record.file_static(), record.line()) {
            (Some(file), Some(line)) => match self.sites.admit((file, line), Instant::now()) {
                Some(n) => n,
                None => return,
            },
            // Records made at run time (none in ember) are not limited.
            _ => 0,
        };
        let mut msg = record.args().to_string();
        if dropped > 0 {
            msg.push_str(&format!(" ({dropped} more lines like this were dropped)"));
        }
        let thread = std::thread::current();
        let line = format_line(
            self.format,
            record.level(),
            &msg,
            thread.name().unwrap_or("unnamed"),
            record.module_path().unwrap_or(record.target()),
        );
        for s in &self.sinks {
            s.write(&line);
        }
        if self.errors_to_stderr && record.level() == log::Level::Error {
            let _ = writeln!(std::io::stderr(), "{msg}");
        }
    }

    fn flush(&self) {}
}

/// logrus's names for the levels.
fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// One log line (without its newline).
pub fn format_line(
    format: Format,
    level: log::Level,
    msg: &str,
    thread: &str,
    module: &str,
) -> String {
    let time = rfc3339_seconds(std::time::SystemTime::now());
    let level = level_name(level);
    match format {
        Format::Json => serde_json::json!({
            "level": level, "msg": msg, "time": time, "thread": thread, "module": module,
        })
        .to_string(),
        Format::Text => format!(
            "time=\"{time}\" level={level} msg={} thread={thread} module={module}",
            serde_json::Value::String(msg.to_string())
        ),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, seconds, as runc writes its log lines).
pub fn rfc3339_seconds(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut s = rfc3339(secs, 0);
    // Drop ".000000000Z", keep "Z".
    s.truncate(19);
    s.push('Z');
    s
}

/// Seconds and nanoseconds since the epoch in RFC 3339 (UTC, nanoseconds: runc's `created`).
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = devices::legacy::cmos::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn parse_level(s: &str) -> Result<log::LevelFilter, Error> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(log::LevelFilter::Error),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err(Error::Level(s.to_string())),
    }
}

/// Install the backend for this process (once; a second call changes nothing).
pub fn init(cfg: &Config) -> Result<(), Error> {
    let level = match std::env::var(LEVEL_ENV) {
        Ok(v) if !v.is_empty() => parse_level(&v)?,
        _ if cfg.debug => log::LevelFilter::Debug,
        _ => log::LevelFilter::Info,
    };
    let mut sinks = vec![Sink::open(cfg.file.as_deref())?];
    if let Some(also) = &cfg.also {
        if cfg.file.as_deref() != Some(also.as_path()) {
            sinks.push(Sink::open(Some(also))?);
        }
    }
    // A thread killed by its seccomp filter reports in the same format, to stderr and to the
    // last log file (the backend, and so the file, lives as long as the process).
    let file_fd = sinks
        .iter()
        .rev()
        .find_map(|s| s.file.as_ref())
        .and_then(|f| f.lock().ok().map(|f| f.as_raw_fd()));
    let backend = Backend {
        level,
        format: cfg.format,
        sinks,
        errors_to_stderr: cfg.errors_to_stderr && cfg.file.is_some(),
        sites: Sites::default(),
    };
    let fds: Vec<RawFd> = backend
        .sinks
        .iter()
        .filter_map(|s| s.file.as_ref()?.lock().ok().map(|f| f.as_raw_fd()))
        .collect();
    let json = cfg.format == Format::Json;
    if log::set_boxed_logger(Box::new(backend)).is_ok() {
        log::set_max_level(level);
        vmm::seccomp::report_to(json, file_fd);
        let _ = LOG_FDS.set(fds);
    }
    Ok(())
}

/// The log files' descriptors of [`init`]'s backend.
static LOG_FDS: std::sync::OnceLock<Vec<RawFd>> = std::sync::OnceLock::new();

/// The descriptors the logger writes to (its files; none for stderr): code that closes what a
/// process inherited (the OCI shims) keeps these, or the log's next lines would go to
/// whatever is opened next under the same number.
pub fn file_descriptors() -> &'static [RawFd] {
    LOG_FDS.get().map_or(&[], Vec::as_slice)
}

/// Start a named thread (every thread of ember has a name, which each log line carries).
pub fn spawn<F, T>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name.to_string()).spawn(f)
}

/// [`std::thread::spawn`] with a name: like it, panics only when the OS cannot make a thread.
pub fn thread<F, T>(name: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match spawn(name, f) {
        Ok(h) => h,
        Err(e) => panic!("cannot start thread {name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_writes_its_burst_then_one_line_per_refill_and_says_what_it_dropped() {
        let sites = Sites::default();
        let t0 = Instant::now();
        let site = ("devices/src/virtio/block/device.rs", 42);
        for _ in 0..SITE_BURST {
            assert_eq!(sites.admit(site, t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(sites.admit(site, t0), None);
        }
        // Another site has its own budget.
        assert_eq!(sites.admit(("other.rs", 1), t0), Some(0));
        // Half a refill: still nothing; a whole one: one line, which reports the drops.
        assert_eq!(sites.admit(site, t0 + SITE_REFILL / 2), None);
        assert_eq!(sites.admit(site, t0 + SITE_REFILL), Some(1001));
        assert_eq!(sites.admit(site, t0 + SITE_REFILL), None);
        // Quiet for long: the whole burst again, nothing more.
        let later = t0 + SITE_REFILL * 1000;
        for _ in 0..SITE_BURST {
            assert!(sites.admit(site, later).is_some());
        }
        assert_eq!(sites.admit(site, later), None);
    }

    #[test]
    fn a_flooding_call_site_reaches_the_log_file_only_its_burst() {
        let dir = std::env::temp_dir().join(format!("ember-log-flood-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmm.log");
        let backend = Backend {
            level: log::LevelFilter::Info,
            format: Format::Text,
            sinks: vec![Sink::open(Some(&path)).unwrap()],
            errors_to_stderr: false,
            sites: Sites::default(),
        };
        for i in 0..10_000 {
            log::Log::log(
                &backend,
                &log::Record::builder()
                    .args(format_args!("virtio-blk: malformed chain {i}"))
                    .level(log::Level::Warn)
                    .file_static(Some("devices/src/virtio/common.rs"))
                    .line(Some(80))
                    .module_path_static(Some("devices::virtio::common"))
                    .build(),
            );
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), SITE_BURST as usize, "{text}");
        assert!(text.contains("malformed chain 0\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_lines_carry_level_msg_time_thread_and_module() {
        let line = format_line(
            Format::Json,
            log::Level::Warn,
            "virtio-rng: device-readable descriptor",
            "event-loop",
            "devices::virtio::rng",
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warning");
        assert_eq!(v["msg"], "virtio-rng: device-readable descriptor");
        assert_eq!(v["thread"], "event-loop");
        assert_eq!(v["module"], "devices::virtio::rng");
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), 20, "{time}");
        assert!(time.ends_with('Z'));
    }

    #[test]
    fn text_lines_quote_the_message_like_logrus() {
        let line = format_line(Format::Text, log::Level::Error, "say \"hi\"", "main", "m");
        assert!(line.starts_with("time=\""), "{line}");
        assert!(
            line.contains(r#" level=error msg="say \"hi\"" thread=main"#),
            "{line}"
        );
    }

    #[test]
    fn dates_are_civil() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339_seconds(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_083_200 + 3661);
        assert_eq!(rfc3339_seconds(t), "2026-12-01T01:01:01Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_seconds(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn levels_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_level("WARN").unwrap(), log::LevelFilter::Warn);
        assert_eq!(parse_level("debug").unwrap(), log::LevelFilter::Debug);
        assert!(matches!(parse_level("loud"), Err(Error::Level(_))));
    }
}
