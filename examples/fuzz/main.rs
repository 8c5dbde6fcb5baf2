//! A mutation fuzzer for the parsers of outside input, on stable Rust.
//!
//! ```text
//! cargo run --release --example fuzz -- [TARGET...] [--runs N] [--seed S] [--max-alloc MIB]
//! ```
//!
//! For each target (all of them by default) it replays the seed corpus in
//! `fixtures/fuzz/<target>/`, then runs N mutated inputs (bit flips, byte
//! edits, inserted and deleted ranges, splices of two seeds and a
//! dictionary of hostile tokens). An input that panics, or that makes the
//! parser allocate more than the limit at once, is a finding: it is written
//! to `target/fuzz/findings/<target>/` and the run exits 1. The same seed
//! gives the same inputs, so a finding replays.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

mod targets;

use targets::{TARGETS, Target, Verdict};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
// A counting allocator needs the GlobalAlloc contract, which is unsafe.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = IN_USE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Tokens that hostile input is made of.
const DICTIONARY: &[&str] = &[
    "NaN",
    "inf",
    "-inf",
    "1e400",
    "-1",
    "0",
    "-0",
    "1.5",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "null",
    "true",
    "\"\"",
    "{}",
    "[]",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":",
    "\\u0000",
    "\\ud800",
    "%2e%2e",
    "../",
    "\r\n",
    "\n\n",
    "data: ",
    "event: ",
    "data: [DONE]\n\n",
    "x-codex-primary-used-percent: ",
    "x-codex-secondary-reset-at: ",
    "\"used_percent\":",
    "\"resets_at\":",
    "\"type\":\"usage_limit_reached\"",
    "\"exp\":",
    "\"iat\":",
    "eyJ",
    ".",
    "=",
    "[",
    "]",
    "'''",
    "min_ttl=",
];

/// xorshift64*: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One to eight edits of `input`, some taken from `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = [0, 0xff, b'"', b'\\', b'{', b'}', b'\n', b'9'][rng.below(8)];
            }
            2 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                out.drain(at.min(end)..end);
            }
            4 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(64)).min(out.len());
                let copy = out[start..end].to_vec();
                out.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(256)).min(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[start..end]);
            }
            _ => {
                let word = DICTIONARY[rng.below(DICTIONARY.len())];
                out.splice(at..at, word.bytes());
            }
        }
    }
    out.truncate(1 << 20);
    out
}

/// Values a JSON leaf is replaced with: wrong types and edge numbers.
fn hostile_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(14) {
        0 => json!(null),
        1 => json!(true),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(i64::MAX),
        5 => json!(i64::MIN),
        6 => json!(u64::MAX),
        7 => json!(1.5),
        8 => json!(1e308),
        9 => json!(""),
        10 => json!("x".repeat(rng.below(5000))),
        11 => json!([]),
        12 => json!({}),
        _ => json!(-1e308),
    }
}

/// Walks to a random node below `node` and replaces it, removes one of
/// its keys, or grows it: a valid document of surprising shape.
fn mutate_json(rng: &mut Rng, node: &mut serde_json::Value) {
    use serde_json::Value;
    if rng.below(4) != 0 {
        let child = match node {
            Value::Object(map) if !map.is_empty() => {
                let i = rng.below(map.len());
                map.values_mut().nth(i)
            }
            Value::Array(items) if !items.is_empty() => {
                let i = rng.below(items.len());
                items.get_mut(i)
            }
            _ => None,
        };
        if let Some(child) = child {
            return mutate_json(rng, child);
        }
    }
    match (rng.below(3), node) {
        (0, Value::Object(map)) if !map.is_empty() => {
            let i = rng.below(map.len());
            if let Some(key) = map.keys().nth(i).cloned() {
                map.remove(&key);
            }
        }
        (1, Value::Array(items)) => {
            let copy = items.first().cloned().unwrap_or(Value::Null);
            items.push(copy);
        }
        (_, node) => *node = hostile_value(rng),
    }
}

/// What went wrong with one input.
enum Finding {
    Panic(String),
    Allocation(usize),
}

fn run_one(target: &Target, input: &[u8], max_alloc: usize) -> Result<Verdict, Finding> {
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    match outcome {
        Err(panic) => Err(Finding::Panic(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        )),
        Ok(_) if grew > max_alloc => Err(Finding::Allocation(grew)),
        Ok(verdict) => Ok(verdict),
    }
}

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

struct Options {
    targets: Vec<&'static Target>,
    runs: u64,
    seed: u64,
    max_alloc: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        targets: Vec::new(),
        runs: 100_000,
        seed: 1,
        max_alloc: 256 << 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let text = args.next().ok_or(format!("{name} needs a value"))?;
            text.parse()
                .map_err(|_| format!("{name} `{text}` is not a number"))
        };
        match arg.as_str() {
            "--runs" => options.runs = value("--runs")?,
            "--seed" => options.seed = value("--seed")?.max(1),
            "--max-alloc" => options.max_alloc = (value("--max-alloc")? as usize) << 20,
            name => options.targets.push(targets::target(name).ok_or(format!(
                    "no target `{name}`; the targets are {}",
                    TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                ))?),
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.iter().collect();
    }
    Ok(options)
}

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("fuzz: {e}");
            std::process::exit(2);
        }
    };
    std::panic::set_hook(Box::new(|_| {}));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut findings = 0usize;
    for target in &options.targets {
        let corpus = seeds(&root.join("fixtures/fuzz").join(target.name));
        if corpus.is_empty() {
            eprintln!("fuzz: no seeds in fixtures/fuzz/{}", target.name);
            std::process::exit(2);
        }
        let mut rng = Rng(options.seed ^ (target.name.len() as u64).wrapping_mul(0x9e37_79b9));
        let started = Instant::now();
        let mut found = Vec::new();
        let (mut accepted, mut seeds_accepted) = (0u64, 0usize);
        let inputs = corpus
            .iter()
            .cloned()
            .map(Some)
            .chain((0..options.runs).map(|_| None));
        for (n, given) in inputs.enumerate() {
            let input = given.unwrap_or_else(|| {
                let a = &corpus[rng.below(corpus.len())];
                let b = &corpus[rng.below(corpus.len())];
                match serde_json::from_slice::<serde_json::Value>(a) {
                    Ok(mut value) if rng.below(2) == 0 => {
                        for _ in 0..1 + rng.below(4) {
                            mutate_json(&mut rng, &mut value);
                        }
                        serde_json::to_vec(&value).expect("a value serializes")
                    }
                    _ => mutate(&mut rng, a, b),
                }
            });
            let finding = match run_one(target, &input, options.max_alloc) {
                Ok(Verdict::Accepted) => {
                    accepted += 1;
                    seeds_accepted += usize::from(n < corpus.len());
                    None
                }
                Ok(Verdict::Rejected) => None,
                Err(finding) => Some(finding),
            };
            if let Some(finding) = finding {
                let what = match finding {
                    Finding::Panic(message) => format!("panic: {message}"),
                    Finding::Allocation(bytes) => format!("allocated {} MiB at once", bytes >> 20),
                };
                let dir = root.join("target/fuzz/findings").join(target.name);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{n}.bin"));
                let _ = std::fs::write(&file, &input);
                eprintln!("fuzz: {}: {what} ({})", target.name, file.display());
                found.push(file);
            }
        }
        let executions = corpus.len() as u64 + options.runs;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{:<18} {:>9} executions ({} seeds, {} accepted) in {:>6.2} s, {:>8.0}/s, {:>5.1}% \
             accepted, {} findings",
            target.name,
            executions,
            corpus.len(),
            seeds_accepted,
            seconds,
            executions as f64 / seconds.max(1e-9),
            100.0 * accepted as f64 / executions as f64,
            found.len()
        );
        // A parser that refuses every valid seed would pass every other
        // check.
        if seeds_accepted == 0 {
            eprintln!(
                "fuzz: {}: no seed in fixtures/fuzz/{} is accepted",
                target.name, target.name
            );
            findings += 1;
        }
        findings += found.len();
    }
    if findings > 0 {
        std::process::exit(1);
    }
}
