//! Mutations, as AFL's havoc stage makes them: an entry of the corpus, then a stack of 1 to 16
//! random edits — bit flips, interesting bytes, insertions and deletions, repeated ranges,
//! grammar tokens from the target's dictionary, splices with another entry, truncation.

use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use super::Target;

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b' ', b'\t', b':', b';', b'0', b'9', b'a', b'f', b'"',
    b'{', b'}', b',', b'=',
];

/// Replaces `input` with a mutated copy of a corpus entry.
pub fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], target: &Target, rng: &mut SmallRng) {
    input.clear();
    if let Some(base) = corpus.choose(rng) {
        input.extend_from_slice(base);
    }
    let edits = 1 << rng.random_range(0..5);
    for _ in 0..edits {
        edit(input, corpus, target, rng);
    }
    input.truncate(target.max_len);
}

fn position(input: &[u8], rng: &mut SmallRng) -> usize {
    rng.random_range(0..=input.len())
}

fn edit(input: &mut Vec<u8>, corpus: &[Vec<u8>], target: &Target, rng: &mut SmallRng) {
    match rng.random_range(0..11) {
        0 if !input.is_empty() => {
            let at = rng.random_range(0..input.len());
            input[at] ^= 1 << rng.random_range(0..8);
        }
        1 if !input.is_empty() => {
            let at = rng.random_range(0..input.len());
            input[at] = *INTERESTING.choose(rng).unwrap_or(&0);
        }
        2 if !input.is_empty() => {
            let at = rng.random_range(0..input.len());
            input[at] = rng.random();
        }
        3 => {
            let at = position(input, rng);
            let byte = *INTERESTING.choose(rng).unwrap_or(&0);
            input.insert(at, byte);
        }
        4 if !input.is_empty() => {
            let start = rng.random_range(0..input.len());
            let len = rng.random_range(1..=(input.len() - start).min(32));
            input.drain(start..start + len);
        }
        5 if !input.is_empty() => {
            // Repeat a range (long headers, many chunks, deep nesting).
            let start = rng.random_range(0..input.len());
            let len = rng.random_range(1..=(input.len() - start).min(64));
            let piece = input[start..start + len].to_vec();
            let times = 1 << rng.random_range(0..6);
            let at = position(input, rng);
            for _ in 0..times {
                input.splice(at..at, piece.iter().copied());
            }
        }
        6 | 7 if !target.dictionary.is_empty() => {
            let token = target.dictionary.choose(rng).copied().unwrap_or_default();
            let at = position(input, rng);
            if rng.random_bool(0.5) || input.len() < token.len() {
                input.splice(at..at, token.iter().copied());
            } else {
                let at = at.min(input.len() - token.len());
                input[at..at + token.len()].copy_from_slice(token);
            }
        }
        8 => {
            // Splice: this input's head with another entry's tail.
            if let Some(other) = corpus.choose(rng) {
                let keep = position(input, rng);
                let from = rng.random_range(0..=other.len());
                input.truncate(keep);
                input.extend_from_slice(&other[from..]);
            }
        }
        9 if !input.is_empty() => {
            let keep = rng.random_range(0..input.len());
            input.truncate(keep);
        }
        _ => {
            // A decimal or hex number where lengths and sizes go.
            let at = position(input, rng);
            let number = match rng.random_range(0..4) {
                0 => format!("{}", rng.random_range(0..100u32)),
                1 => format!("{:x}", rng.random::<u32>()),
                2 => format!("{}", u64::MAX),
                _ => format!("{}", rng.random::<i64>()),
            };
            input.splice(at..at, number.bytes());
        }
    }
}
