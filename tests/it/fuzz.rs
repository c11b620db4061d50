//! A mutation fuzzer on stable Rust over every target of `bindgate::fuzzing`, for a bounded
//! time per target (`BINDGATE_FUZZ_SECONDS`, default 2): inputs are the seed corpus of
//! `fuzz/corpus/<target>/` mutated by bit flips, byte changes, insertions, deletions,
//! duplications, splices and tokens of the formats. A panic fails the test and writes the input
//! to `target/fuzz-crashes/`. The coverage-guided runs (libFuzzer, `scripts/fuzz.sh`) are the
//! long ones; this one runs in CI.

use bindgate::fuzzing::TARGETS;
use std::time::{Duration, Instant};

/// xorshift64*: deterministic for a seed, so a failure can be replayed.
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

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"null",
    b"true",
    b"-1",
    b"1e309",
    b"0.5",
    b"\"sub\"",
    b"\"cnf\"",
    b"\"x5t#S256\"",
    b"\"aud\"",
    b"\"exp\"",
    b"\"scp\"",
    b"\"kty\"",
    b"\"EC\"",
    b"\"RSA\"",
    b"\"crv\"",
    b"\"keys\"",
    b"\"alg\"",
    b"\"none\"",
    b"\"redirect_uris\"",
    b"\"client_id\"",
    b"%2e",
    b"%2F",
    b"%3B",
    b"%00",
    b"%",
    b"/..",
    b"/.",
    b"//",
    b";",
    b"?",
    b"#",
    b"Bearer ",
    b"eyJ",
    b".",
    b"\n",
    b"access_token=",
    b"http://",
    b"listen:",
    b"  address: ",
    b"- ",
    b"&a",
    b"*a",
    b"!!binary",
    b"\xff",
    b"\xc3\xa9",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 | 6 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            7 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            _ if len > 1 => input.truncate(rng.below(len)),
            _ => {}
        }
    }
    input.truncate(64 * 1024);
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.push(Vec::new());
    out
}

#[test]
fn every_target_survives_mutated_inputs() {
    let seconds: u64 = std::env::var("BINDGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("BINDGATE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b1d6_a7e0_0001);
    // Panics are caught and reported with their input; the default hook would print each.
    std::panic::set_hook(Box::new(|_| {}));
    for (name, target) in TARGETS {
        let corpus = corpus(name);
        assert!(corpus.len() > 1, "no seed corpus for {name}");
        let mut rng = Rng(seed ^ name.len() as u64);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut executions = 0u64;
        // Bounded in time and in count.
        while Instant::now() < deadline && executions < 50_000_000 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input, &corpus);
            let outcome = std::panic::catch_unwind(|| target(&input));
            executions += 1;
            if outcome.is_err() {
                let _ = std::panic::take_hook();
                let dir =
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{executions}"));
                let _ = std::fs::write(&file, &input);
                panic!(
                    "{name} panicked on input {} (written to {}); replay: re-run the target on that file",
                    hex::encode(&input),
                    file.display()
                );
            }
        }
        println!("{name}: {executions} executions in {seconds}s, no crash");
    }
    let _ = std::panic::take_hook();
}
