//! The search workload: store a million messages between 100 instances, through the wire in
//! pipelined batches (so every row goes through the broker's own insert, triggers and index),
//! then time `search` queries made by one of those instances: one-word queries for a common, a
//! medium and a rare word, a phrase and a prefix.
//!
//! The text is made of pseudo-words drawn from a Zipf distribution (exponent 1, like words in
//! natural language): the most common word is in most messages, the rarest in a handful. Each
//! message goes from a random instance to another, so the querying instance sent or received
//! about 2% of them (some 20,000 of a million), and can see only those.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::latency::Samples;
use crate::wire::{expect_ok, Connection, WireError};
use crate::workloads::{frame, register_many, Instance, Kind, Link, Target};

const INSTANCES: usize = 100;
/// Distinct words in the text.
const VOCABULARY: usize = 20_000;
/// Words per message: uniform in this range.
const WORDS_PER_MESSAGE: (u64, u64) = (8, 40);
/// One message in this many carries a subject (of [`SUBJECT_WORDS`] words).
const SUBJECT_EVERY: u64 = 3;
const SUBJECT_WORDS: usize = 4;
const FILLERS: usize = 4;
/// Sends each filling connection writes before reading their replies.
const PIPELINE: u64 = 64;
/// Timed runs of each query.
const SAMPLES_PER_QUERY: usize = 200;
/// The instance whose queries are timed.
const SEARCHER: usize = 7;
/// Zipf ranks (from 0) of the medium and rare words.
const MEDIUM_RANK: usize = 300;
const RARE_RANK: usize = 12_000;

/// One query of the workload and what it measured.
#[derive(Debug, Clone)]
pub struct QueryFigures {
    /// What kind of query: "one word, common" and so on.
    pub kind: &'static str,
    pub query: String,
    /// Results on the first page (up to 20), and whether more were found.
    pub results: usize,
    pub more: bool,
    pub latency: Samples,
}

/// What the search workload measured.
#[derive(Debug, Clone)]
pub struct SearchFigures {
    pub stored: u64,
    pub fill_elapsed: Duration,
    /// The database's size after the fill (main file and write-ahead log), when readable.
    pub database_bytes: Option<u64>,
    pub queries: Vec<QueryFigures>,
}

impl SearchFigures {
    /// The slowest p99 of the one-word queries: the figure the target is about.
    pub fn one_word_p99(&self) -> Duration {
        self.queries
            .iter()
            .filter(|q| q.kind.starts_with("one word"))
            .map(|q| q.latency.summary().p99)
            .max()
            .unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        let size = self
            .database_bytes
            .map(|b| format!(", database {:.0} MB", b as f64 / 1e6))
            .unwrap_or_default();
        format!(
            "stored {} messages between {INSTANCES} instances in {:.1} s ({:.0}/s){size}; \
             queries by one instance, which sees about 2% of them",
            self.stored,
            self.fill_elapsed.as_secs_f64(),
            self.stored as f64 / self.fill_elapsed.as_secs_f64().max(1e-9),
        )
    }
}

/// Fills the broker with `messages` messages, then times each query kind.
pub fn search(
    target: &Target,
    messages: u64,
    data_dir: Option<&std::path::Path>,
) -> Result<SearchFigures, WireError> {
    let instances = register_many(target, "search", INSTANCES)?;
    let vocabulary = Vocabulary::new();
    let started = Instant::now();
    fill(target, &instances, &vocabulary, messages)?;
    let fill_elapsed = started.elapsed();
    let database_bytes = data_dir.map(database_size);
    let searcher = &instances[SEARCHER];
    let mut link = Link::open(target)?;
    let queries = query_plan(&vocabulary)
        .into_iter()
        .map(|(kind, query)| time_query(&mut link, searcher, kind, query))
        .collect::<Result<_, _>>()?;
    Ok(SearchFigures {
        stored: messages,
        fill_elapsed,
        database_bytes,
        queries,
    })
}

/// The queries timed, by kind.
fn query_plan(vocabulary: &Vocabulary) -> Vec<(&'static str, String)> {
    let medium = vocabulary.word(MEDIUM_RANK);
    vec![
        ("one word, common", vocabulary.word(0).to_owned()),
        ("one word, medium", medium.to_owned()),
        ("one word, rare", vocabulary.word(RARE_RANK).to_owned()),
        (
            "phrase of two common words",
            format!("\"{} {}\"", vocabulary.word(0), vocabulary.word(1)),
        ),
        ("prefix", format!("{}*", &medium[..3])),
    ]
}

fn time_query(
    link: &mut Link,
    who: &Instance,
    kind: &'static str,
    query: String,
) -> Result<QueryFigures, WireError> {
    let request = json!({"action": "search", "session_token": who.token, "query": query});
    let mut latency = Samples::default();
    let mut last = Value::Null;
    for _ in 0..SAMPLES_PER_QUERY {
        let begun = Instant::now();
        last = expect_ok(link.exchange(&request)?)?;
        latency.record(begun.elapsed());
    }
    let results = last["results"].as_array().map_or(0, Vec::len);
    eprint!("\r  {kind}: {results} results ...   ");
    Ok(QueryFigures {
        kind,
        query,
        results,
        more: last["more"] == true,
        latency,
    })
}

/// Sends `total` messages between `instances` over a few pipelined connections; shows
/// progress. The dashboard workload fills its database the same way.
pub fn fill(
    target: &Target,
    instances: &[Instance],
    vocabulary: &Vocabulary,
    total: u64,
) -> Result<(), WireError> {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let fillers: Vec<_> = (0..FILLERS)
            .map(|_| {
                scope.spawn(|| fill_from(target, instances, vocabulary, (&next, &done), total))
            })
            .collect();
        while fillers.iter().any(|f| !f.is_finished()) {
            std::thread::sleep(Duration::from_millis(500));
            let stored = done.load(Ordering::Relaxed);
            eprint!("\r  stored {stored} of {total} ...   ");
        }
        eprint!("\r");
        for filler in fillers {
            filler.join().expect("a filler panicked")?;
        }
        Ok(())
    })
}

fn fill_from(
    target: &Target,
    instances: &[Instance],
    vocabulary: &Vocabulary,
    (next, done): (&AtomicU64, &AtomicU64),
    total: u64,
) -> Result<(), WireError> {
    let mut connection = Connection::open(target.addr)?;
    loop {
        let first = next.fetch_add(PIPELINE, Ordering::Relaxed);
        if first >= total {
            return Ok(());
        }
        let last = (first + PIPELINE).min(total);
        let batch: Vec<u8> = (first..last)
            .flat_map(|seq| frame(&message(instances, vocabulary, seq), Kind::Persistent))
            .collect();
        connection.write(&batch)?;
        for _ in first..last {
            expect_ok(connection.read_reply()?)?;
        }
        done.fetch_add(last - first, Ordering::Relaxed);
    }
}

/// The `seq`th message: the same for the same `seq` in every run.
fn message(instances: &[Instance], vocabulary: &Vocabulary, seq: u64) -> Value {
    let mut random = SplitMix(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    let count = instances.len() as u64;
    let from = random.below(count) as usize;
    // Any other instance: a draw among the others, shifted past the sender.
    let mut to = random.below(count - 1) as usize;
    if to >= from {
        to += 1;
    }
    let (low, high) = WORDS_PER_MESSAGE;
    let words = low + random.below(high - low + 1);
    let content = vocabulary.text(&mut random, words as usize);
    let mut request = json!({"action": "send", "session_token": instances[from].token,
        "to_id": instances[to].name, "message": {"content": content}});
    if seq.is_multiple_of(SUBJECT_EVERY) {
        request["subject"] = json!(vocabulary.text(&mut random, SUBJECT_WORDS));
    }
    request
}

/// Pseudo-words by Zipf rank, and a sampler over them.
pub struct Vocabulary {
    words: Vec<String>,
    /// cumulative[i]: the probability of drawing a word of rank <= i.
    cumulative: Vec<f64>,
}

/// Syllables pseudo-words are spelled with: consonant then vowel, so every word is
/// pronounceable, lower-case ASCII and a single token to the index.
const SYLLABLES: [&str; 30] = [
    "ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze", "ba", "de", "fi", "go", "hu", "ja",
    "ke", "li", "mo", "na", "po", "ri", "su", "ta", "ve", "zo", "bi", "du", "fe", "ga",
];

impl Vocabulary {
    pub fn new() -> Vocabulary {
        let words = (0..VOCABULARY).map(pseudo_word).collect();
        let weights: Vec<f64> = (1..=VOCABULARY).map(|rank| 1.0 / rank as f64).collect();
        let sum: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                running += w / sum;
                running
            })
            .collect();
        Vocabulary { words, cumulative }
    }

    pub fn word(&self, rank: usize) -> &str {
        &self.words[rank]
    }

    fn draw(&self, random: &mut SplitMix) -> &str {
        let u = random.unit();
        let rank = self.cumulative.partition_point(|&c| c < u);
        &self.words[rank.min(VOCABULARY - 1)]
    }

    fn text(&self, random: &mut SplitMix, words: usize) -> String {
        let drawn: Vec<&str> = (0..words).map(|_| self.draw(random)).collect();
        drawn.join(" ")
    }
}

/// The word of `rank`: its number in base 30, one syllable per digit, at least two syllables
/// (so every word, and the prefix of three letters the workload searches, is distinct enough).
fn pseudo_word(rank: usize) -> String {
    let mut digits = Vec::new();
    let mut n = rank;
    loop {
        digits.push(n % SYLLABLES.len());
        n /= SYLLABLES.len();
        if n == 0 && digits.len() >= 2 {
            break;
        }
    }
    digits.iter().rev().map(|&d| SYLLABLES[d]).collect()
}

/// A small deterministic generator (SplitMix64): the same messages in every run, without a
/// random-number crate.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The size of the broker's database files in `data_dir`.
fn database_size(data_dir: &std::path::Path) -> u64 {
    ["ipc.db", "ipc.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(data_dir.join(name)).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_words_are_distinct_and_follow_zipf() {
        let vocabulary = Vocabulary::new();
        let distinct: std::collections::HashSet<&String> = vocabulary.words.iter().collect();
        assert_eq!(distinct.len(), VOCABULARY);
        let mut random = SplitMix(1);
        let draws = 100_000;
        let common = (0..draws)
            .filter(|_| vocabulary.draw(&mut random) == vocabulary.word(0))
            .count();
        // Rank 1 of 20,000 under Zipf(1) is drawn about 1/H(20000) = 9.3% of the time.
        assert!((8_000..10_500).contains(&common), "{common}");
    }
}
