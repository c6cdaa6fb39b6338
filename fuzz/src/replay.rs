//! The plain build's `main`: runs a target on saved inputs, without AFL++. Used by
//! `fuzz/run.sh replay|smoke` and CI (no cargo-afl there).
//!
//! `TARGET [--mutate N] [PATH...]`: every file named, and every file under each directory named
//! (recursively; AFL's `README.txt` and `.state` files skipped), or stdin when no path is given.
//! With `--mutate N`, each input is also run in N deterministic small mutations (bit flips,
//! interesting bytes, cut, duplicated and deleted ranges): not coverage-guided, only a cheap
//! widening of the seeds for the smoke. A panic or an input that takes longer than
//! `FUZZ_HANG_MS` (default 5000) is reported with its path (and mutation number) and makes the
//! exit status 1; the last line counts the runs that passed and failed.
#![cfg(not(fuzzing))]

use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Collects the input files under `p`.
fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(p) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => panic!("cannot read {}: {e}", p.display()),
        };
        entries.sort();
        for e in entries {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "README.txt" || name.starts_with('.') {
                continue;
            }
            collect(&e, out);
        }
    } else if p.is_file() {
        out.push(p.to_path_buf());
    }
}

/// A small xorshift, seeded per input: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = b"\x00\xff\x80\xc3\"\\{}[],:0-9e.\r\n ";

fn mutate(data: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..=rng.below(3) {
        let len = d.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                d.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                d.drain(a.min(b)..a.max(b));
            }
            4 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let piece = d[a.min(b)..a.max(b)].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, piece);
            }
            _ => d.truncate(rng.below(len + 1)),
        }
    }
    d
}

/// Runs one input; `Err` with why when it panicked or took too long.
fn one(run: fn(&[u8]), data: &[u8], hang: Duration) -> Result<(), String> {
    let start = Instant::now();
    let r = panic::catch_unwind(AssertUnwindSafe(|| run(data)));
    let took = start.elapsed();
    match r {
        Err(_) => Err("panicked (message above)".to_string()),
        Ok(()) if took > hang => Err(format!("took {took:?}, over FUZZ_HANG_MS ({hang:?})")),
        Ok(()) => Ok(()),
    }
}

pub fn main(run: fn(&[u8])) {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut mutations = 0usize;
    if let Some(i) = args.iter().position(|a| a == "--mutate") {
        let n = args.get(i + 1).and_then(|n| n.parse().ok());
        let Some(n) = n else {
            eprintln!("usage: TARGET [--mutate N] [PATH...]");
            std::process::exit(2);
        };
        mutations = n;
        args.drain(i..i + 2);
    }
    let hang = Duration::from_millis(std::env::var("FUZZ_HANG_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000));
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    if args.is_empty() {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data).unwrap();
        inputs.push(("<stdin>".to_string(), data));
    } else {
        let mut files = Vec::new();
        for a in &args {
            collect(Path::new(a), &mut files);
        }
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
            inputs.push((f.display().to_string(), data));
        }
    }
    let (mut runs, mut failed) = (0usize, 0usize);
    for (name, data) in &inputs {
        runs += 1;
        if let Err(why) = one(run, data, hang) {
            failed += 1;
            eprintln!("FAIL {name}: {why}");
        }
        let seed = data.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)) | 1;
        let mut rng = Rng(seed);
        for m in 0..mutations {
            let d = mutate(data, &mut rng);
            runs += 1;
            if let Err(why) = one(run, &d, hang) {
                failed += 1;
                eprintln!("FAIL {name} mutation {m} ({} bytes, hex {}): {why}", d.len(), hex(&d));
            }
        }
    }
    let target = std::env::args().next().unwrap_or_default();
    let target = Path::new(&target).file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
    println!("{target}: {} inputs, {mutations} mutations of each", inputs.len());
    println!("{target}: {} passed, {failed} failed", runs - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

/// A short hex dump (the first 256 bytes) so a failing mutation can be saved and replayed.
fn hex(d: &[u8]) -> String {
    d.iter().take(256).map(|b| format!("{b:02x}")).collect()
}
