//! ember's fuzz driver: a small mutation fuzzer that runs as an ordinary `cargo test` on the
//! stable toolchain (no libFuzzer, no sanitizers, no nightly).
//!
//! Each target (one module of `tests/fuzz/`) hands [`run`] a closure that takes a byte
//! string, decodes it with [`Input`] into whatever the parser under test wants (FUSE requests
//! and descriptor layouts, register writes, frames, files) and asserts "no panic, and errors
//! are errors" plus cheap invariants. [`run`]:
//!
//! 1. replays every file of `fuzz/corpus/<target>/` (the seeds and every crash ever found:
//!    the regressions), failing on the first that panics;
//! 2. mutates those inputs (bit flips, interesting integers, arithmetic, inserts, deletes,
//!    copies, splices, dictionary tokens) for `EMBER_FUZZ_SECS` seconds (default 3), starting
//!    from `EMBER_FUZZ_SEED` (default: random, printed) so a run can be repeated;
//! 3. on a panic, shrinks the input, saves it to `fuzz/artifacts/<target>/` and fails with
//!    the file name and the input in hex. Moving that file into `fuzz/corpus/<target>/`
//!    makes it a regression test.
//!
//! A watchdog aborts the process when one input runs longer than `EMBER_FUZZ_HANG_SECS`
//! (default 20), after saving it as `hang-*` beside the crashes.

use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default seconds of mutation per target.
pub const DEFAULT_SECS: f64 = 3.0;
/// Default seconds one input may run before the watchdog calls it a hang.
pub const DEFAULT_HANG_SECS: u64 = 20;

/// Reads structure out of fuzz bytes, front to back. Past the end every read returns zeros,
/// so any byte string decodes to something.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        if n <= 256 {
            usize::from(self.u8()) % n
        } else {
            self.u32() as usize % n
        }
    }
    /// True for one byte value in `n` (`n` between 1 and 256).
    pub fn one_in(&mut self, n: u8) -> bool {
        self.u8().is_multiple_of(n)
    }
    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// splitmix64: small, fast, good enough to drive mutations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// How one target is fuzzed.
pub struct Target {
    /// Directory name under `fuzz/corpus/` and `fuzz/artifacts/`.
    pub name: &'static str,
    /// Largest input the mutator makes.
    pub max_len: usize,
    /// Byte strings worth inserting (opcodes, JSON keys, magic values).
    pub dict: &'static [&'static [u8]],
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub corpus: usize,
    pub execs: u64,
    pub secs: f64,
}

/// The crate's directory (corpus and artifacts live below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fuzz/corpus/<target>/`.
pub fn corpus_dir(target: &str) -> PathBuf {
    root().join("corpus").join(target)
}

/// Where crashes are saved: `EMBER_FUZZ_ARTIFACTS/<target>/` or `fuzz/artifacts/<target>/`.
pub fn artifact_dir(target: &str) -> PathBuf {
    match std::env::var_os("EMBER_FUZZ_ARTIFACTS") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join(target),
        _ => root().join("artifacts").join(target),
    }
}

/// The files of a corpus directory, sorted by name, with their contents.
pub fn load_corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter_map(|p| std::fs::read(&p).ok().map(|d| (p, d)))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn env_secs() -> f64 {
    std::env::var("EMBER_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(DEFAULT_SECS)
}

fn env_seed() -> u64 {
    match std::env::var("EMBER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(s) => s,
        None => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

/// FNV-1a, to name saved inputs.
pub fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent while this thread shrinks a crash.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                prev(info);
            }
        }));
    });
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}

/// Runs `f` on `data`; the panic message when it panicked.
fn exec(f: &mut dyn FnMut(&[u8]), data: &[u8]) -> Option<String> {
    panic::catch_unwind(AssertUnwindSafe(|| f(data)))
        .err()
        .map(|e| panic_message(e.as_ref()))
}

/// Watches the input in flight; aborts the process on a hang after saving the input.
struct Watchdog {
    current: Arc<Mutex<Vec<u8>>>,
    started_ms: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn now_ms(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64 + 1
}

impl Watchdog {
    fn start(target: &'static str, base: Instant) -> Watchdog {
        let hang = std::env::var("EMBER_FUZZ_HANG_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(DEFAULT_HANG_SECS);
        let current = Arc::new(Mutex::new(Vec::new()));
        let started_ms = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (c, s, d) = (current.clone(), started_ms.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name(format!("fuzz-watchdog-{target}"))
            .spawn(move || {
                while !d.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let t = s.load(Ordering::Relaxed);
                    if t != 0 && now_ms(base).saturating_sub(t) > hang * 1000 {
                        let data = c.lock().map(|v| v.clone()).unwrap_or_default();
                        let path = save(target, "hang", &data);
                        eprintln!(
                            "fuzz {target}: one input ran over {hang} s; saved to {}; input: {}",
                            path.display(),
                            hex(&data)
                        );
                        std::process::abort();
                    }
                }
            })
            .ok();
        Watchdog {
            current,
            started_ms,
            done,
            thread,
        }
    }

    fn begin(&self, data: &[u8], base: Instant) {
        if let Ok(mut c) = self.current.lock() {
            c.clear();
            c.extend_from_slice(data);
        }
        self.started_ms.store(now_ms(base), Ordering::Relaxed);
    }

    fn end(&self) {
        self.started_ms.store(0, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Saves `data` as `<kind>-<hash>` in the target's artifact directory.
fn save(target: &str, kind: &str, data: &[u8]) -> PathBuf {
    let dir = artifact_dir(target);
    let path = dir.join(format!("{kind}-{:016x}", hash(data)));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, data)) {
        eprintln!("fuzz {target}: cannot save {}: {e}", path.display());
    }
    path
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    17,
    31,
    32,
    40,
    44,
    63,
    64,
    100,
    127,
    128,
    255,
    256,
    511,
    512,
    1000,
    1024,
    4095,
    4096,
    32767,
    32768,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// One random mutation of `v` (kept within `max_len`).
fn mutate_once(v: &mut Vec<u8>, rng: &mut Rng, corpus: &[Vec<u8>], dict: &[&[u8]], max_len: usize) {
    if v.is_empty() {
        let n = 1 + rng.below(16);
        v.extend((0..n).map(|_| rng.next_u64() as u8));
        return;
    }
    let len = v.len();
    match rng.below(12) {
        0 => {
            let i = rng.below(len);
            v[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(len);
            v[i] = rng.next_u64() as u8;
        }
        2 | 3 => {
            // An interesting integer of 1, 2, 4 or 8 bytes, either endianness.
            let width = 1 << rng.below(4);
            let mut x = INTERESTING[rng.below(INTERESTING.len())];
            if rng.chance(4) {
                x = x.wrapping_neg();
            }
            let b = if rng.chance(4) {
                x.to_be_bytes()[8 - width..].to_vec()
            } else {
                x.to_le_bytes()[..width].to_vec()
            };
            let i = rng.below(len);
            for (k, byte) in b.into_iter().enumerate() {
                if let Some(d) = v.get_mut(i + k) {
                    *d = byte;
                }
            }
        }
        4 => {
            // Small arithmetic on a little-endian u8/u16/u32.
            let width = 1 << rng.below(3);
            let i = rng.below(len);
            let delta = 1 + rng.below(16) as u64;
            let mut x = 0u64;
            for k in 0..width {
                x |= u64::from(*v.get(i + k).unwrap_or(&0)) << (8 * k);
            }
            x = if rng.chance(2) {
                x.wrapping_add(delta)
            } else {
                x.wrapping_sub(delta)
            };
            for k in 0..width {
                if let Some(d) = v.get_mut(i + k) {
                    *d = (x >> (8 * k)) as u8;
                }
            }
        }
        5 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(i..i, bytes);
        }
        6 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            v.drain(i..i + n);
        }
        7 => {
            // Copy a range over or into another place.
            let src = rng.below(len);
            let n = 1 + rng.below((len - src).min(64));
            let chunk = v[src..src + n].to_vec();
            let dst = rng.below(len + 1);
            if rng.chance(2) {
                v.splice(dst..dst, chunk);
            } else {
                for (k, b) in chunk.into_iter().enumerate() {
                    if let Some(d) = v.get_mut(dst + k) {
                        *d = b;
                    }
                }
            }
        }
        8 => {
            // Splice with another corpus entry.
            if let Some(other) = corpus.get(rng.below(corpus.len())) {
                if !other.is_empty() {
                    let cut = rng.below(len + 1);
                    let from = rng.below(other.len());
                    v.truncate(cut);
                    v.extend_from_slice(&other[from..]);
                }
            }
        }
        9 | 10 => {
            if !dict.is_empty() {
                let tok = dict[rng.below(dict.len())];
                let i = rng.below(len + 1);
                if rng.chance(2) {
                    v.splice(i..i, tok.iter().copied());
                } else {
                    for (k, &b) in tok.iter().enumerate() {
                        if let Some(d) = v.get_mut(i + k) {
                            *d = b;
                        }
                    }
                }
            }
        }
        _ => {
            let n = rng.below(len);
            v.truncate(n.max(1));
        }
    }
    v.truncate(max_len);
}

/// Shrinks a crashing input: removes chunks (then lowers bytes) while it still panics,
/// for at most `budget`.
fn shrink(f: &mut dyn FnMut(&[u8]), data: &[u8], budget: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut best = data.to_vec();
    QUIET.with(|q| q.set(true));
    let mut chunk = best.len().div_ceil(2).max(1);
    while chunk >= 1 && start.elapsed() < budget {
        let mut i = 0;
        while i < best.len() && start.elapsed() < budget {
            let mut cand = best.clone();
            let end = (i + chunk).min(cand.len());
            cand.drain(i..end);
            if exec(f, &cand).is_some() {
                best = cand;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    for i in 0..best.len() {
        if start.elapsed() >= budget {
            break;
        }
        if best[i] != 0 {
            let mut cand = best.clone();
            cand[i] = 0;
            if exec(f, &cand).is_some() {
                best = cand;
            }
        }
    }
    QUIET.with(|q| q.set(false));
    best
}

/// Fuzzes `f` as target `t` (see the crate docs); panics with a report when an input
/// makes `f` panic.
pub fn run(t: &Target, mut f: impl FnMut(&[u8])) -> Stats {
    install_hook();
    let f: &mut dyn FnMut(&[u8]) = &mut f;
    let files = load_corpus(&corpus_dir(t.name));
    for (path, data) in &files {
        if let Some(msg) = exec(f, data) {
            panic!(
                "fuzz {}: corpus file {} panics: {msg}",
                t.name,
                path.display()
            );
        }
    }
    let mut corpus: Vec<Vec<u8>> = files.into_iter().map(|(_, d)| d).collect();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let secs = env_secs();
    let seed = env_seed();
    let mut rng = Rng::new(seed);
    let base = Instant::now();
    let deadline = base + Duration::from_secs_f64(secs);
    let dog = Watchdog::start(t.name, base);
    let mut execs = 0u64;
    let mut buf = Vec::with_capacity(t.max_len);
    while Instant::now() < deadline {
        buf.clear();
        if rng.chance(50) {
            let n = rng.below(t.max_len.min(4096) + 1);
            buf.extend((0..n).map(|_| rng.next_u64() as u8));
        } else {
            buf.extend_from_slice(&corpus[rng.below(corpus.len())]);
            let n = 1 << rng.below(4);
            for _ in 0..n {
                mutate_once(&mut buf, &mut rng, &corpus, t.dict, t.max_len);
            }
        }
        dog.begin(&buf, base);
        let result = exec(f, &buf);
        dog.end();
        execs += 1;
        if let Some(msg) = result {
            let small = shrink(f, &buf, Duration::from_secs(10));
            let msg = exec(f, &small).unwrap_or(msg);
            let path = save(t.name, "crash", &small);
            panic!(
                "fuzz {}: an input panics: {msg}\n  saved to {}\n  input ({} bytes): {}\n  \
                 seed {seed}; make it a regression: move the file into fuzz/corpus/{}/",
                t.name,
                path.display(),
                small.len(),
                hex(&small),
                t.name
            );
        }
    }
    drop(dog);
    let elapsed = base.elapsed().as_secs_f64();
    let stats = Stats {
        corpus: corpus.len(),
        execs,
        secs: elapsed,
    };
    eprintln!(
        "fuzz {}: {} corpus files replayed, {} inputs in {:.1} s ({:.0}/s), seed {seed}",
        t.name,
        stats.corpus,
        execs,
        elapsed,
        execs as f64 / elapsed.max(1e-9)
    );
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_zeros_past_the_end() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u32(), 3);
        assert!(i.is_empty());
        assert_eq!(i.u64(), 0);
        assert_eq!(i.below(10), 0);
    }

    #[test]
    fn mutations_stay_within_max_len() {
        let mut rng = Rng::new(7);
        let corpus = vec![vec![1u8; 100]];
        let mut v = vec![0u8; 10];
        for _ in 0..10_000 {
            mutate_once(&mut v, &mut rng, &corpus, &[b"token"], 64);
            assert!(v.len() <= 64);
        }
    }

    #[test]
    fn shrink_finds_the_needle() {
        let mut f = |d: &[u8]| assert!(!d.windows(2).any(|w| w == b"!!"), "needle");
        install_hook();
        let data = b"aaaaaaaaaa!!bbbbbbbbbbbbb".to_vec();
        assert_eq!(shrink(&mut f, &data, Duration::from_secs(5)), b"!!");
    }
}
