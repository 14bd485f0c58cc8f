//! bm25 over the caller's own mail, computed here rather than by FTS5's `bm25()`.
//!
//! FTS5's `bm25()` weighs each term by how many messages in the *whole* index hold it, and to
//! know that it reads the term's entire posting list on every query: for a common word in a
//! million messages that alone took most of the 50 ms budget, and its figures would tell a
//! caller how common a word is in everyone's mail. Here the same formula (k1 = 1.2, b = 0.75,
//! a subject match weighted four times a content match) runs over the candidates the index
//! found among the caller's own mail, with document frequencies counted among them and the
//! caller's mail as the collection. The index marks each match (`highlight()`), so what counts
//! as a match is exactly what FTS5 matched: phrases, prefixes, folded case and accents.

use std::collections::HashMap;

/// The marks `highlight()` is asked to put around each match: private-use characters, which
/// real text practically never holds.
pub const OPEN_MARK: char = '\u{E000}';
pub const CLOSE_MARK: char = '\u{E001}';

const K1: f64 = 1.2;
const B: f64 = 0.75;
const SUBJECT_WEIGHT: f64 = 4.0;
const CONTENT_WEIGHT: f64 = 1.0;
/// FTS5's floor for a term held by more than half the collection, kept so such a term still
/// orders by how often it occurs.
const MIN_IDF: f64 = 1e-6;

/// One matching message: its id and its subject and content with the matches marked.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: i64,
    pub subject: Option<String>,
    pub content: String,
}

/// What the ranking needs of one candidate: weighted counts per matched term, and its length.
struct Counted {
    id: i64,
    frequencies: HashMap<String, f64>,
    length: usize,
}

/// The candidates' ids, best first (newer first among equals), each with its score.
/// `collection` is how many messages the caller can see (at least the candidates).
pub fn rank(candidates: &[Candidate], collection: usize) -> Vec<(i64, f64)> {
    let counted: Vec<Counted> = candidates.iter().map(count).collect();
    if counted.is_empty() {
        return Vec::new();
    }
    let mut holders: HashMap<&str, usize> = HashMap::new();
    for candidate in &counted {
        for term in candidate.frequencies.keys() {
            *holders.entry(term.as_str()).or_default() += 1;
        }
    }
    let total = collection.max(counted.len()) as f64;
    let average = counted.iter().map(|c| c.length).sum::<usize>() as f64 / counted.len() as f64;
    let idf = |term: &str| {
        let holding = holders[term] as f64;
        ((total - holding + 0.5) / (holding + 0.5))
            .ln()
            .max(MIN_IDF)
    };
    let mut scored: Vec<(i64, f64)> = counted
        .iter()
        .map(|candidate| {
            let norm = K1 * (1.0 - B + B * candidate.length as f64 / average.max(1.0));
            let score = candidate
                .frequencies
                .iter()
                .map(|(term, tf)| idf(term) * tf * (K1 + 1.0) / (tf + norm))
                .sum();
            (candidate.id, score)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    scored
}

fn count(candidate: &Candidate) -> Counted {
    let mut frequencies = HashMap::new();
    let mut length = 0;
    let columns = [
        (
            candidate.subject.as_deref().unwrap_or_default(),
            SUBJECT_WEIGHT,
        ),
        (candidate.content.as_str(), CONTENT_WEIGHT),
    ];
    for (text, weight) in columns {
        length += words(text);
        for span in marked_spans(text) {
            *frequencies.entry(span).or_insert(0.0) += weight;
        }
    }
    Counted {
        id: candidate.id,
        frequencies,
        length,
    }
}

/// The marked matches of `text`, lower-cased: each is one term (a word, a phrase, or the word a
/// prefix matched).
fn marked_spans(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(OPEN_MARK) {
        let after = &rest[open + OPEN_MARK.len_utf8()..];
        let Some(close) = after.find(CLOSE_MARK) else {
            break;
        };
        spans.push(after[..close].to_lowercase());
        rest = &after[close + CLOSE_MARK.len_utf8()..];
    }
    spans
}

/// How many words `text` holds as the index splits it: runs of letters and digits.
fn words(text: &str) -> usize {
    let mut count = 0;
    let mut in_word = false;
    for c in text.chars() {
        let letter = c.is_alphanumeric();
        if letter && !in_word {
            count += 1;
        }
        in_word = letter;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(text: &str) -> String {
        text.replace('<', &OPEN_MARK.to_string())
            .replace('>', &CLOSE_MARK.to_string())
    }

    fn candidate(id: i64, subject: Option<&str>, content: &str) -> Candidate {
        Candidate {
            id,
            subject: subject.map(marked),
            content: marked(content),
        }
    }

    #[test]
    fn spans_and_words_are_read_from_the_marked_text() {
        assert_eq!(
            marked_spans(&marked("the <Rate Limit> and <rate limit>")),
            ["rate limit", "rate limit"]
        );
        assert_eq!(words(&marked("the <rate-limit>, again")), 4);
        assert_eq!(words(""), 0);
    }

    #[test]
    fn a_subject_match_outranks_a_content_match_and_more_matches_outrank_fewer() {
        let ranked = rank(
            &[
                candidate(1, None, "we should look at the <schema> today"),
                candidate(2, Some("<schema> change"), "the <schema> needs a column"),
                candidate(3, Some("weekly notes"), "about the <schema> for today"),
                candidate(4, None, "<schema> <schema> <schema> and more"),
            ],
            100,
        );
        let order: Vec<i64> = ranked.iter().map(|r| r.0).collect();
        assert_eq!(order[0], 2, "{ranked:?}");
        // One content match each, the same length: the newer first.
        assert_eq!(order[2..], [3, 1], "{ranked:?}");
    }

    #[test]
    fn a_rarer_term_weighs_more_and_ties_go_to_the_newer() {
        // "api" is in every candidate, "billing" in one: the one with billing wins.
        let ranked = rank(
            &[
                candidate(1, None, "<api> and <billing>"),
                candidate(2, None, "<api> and more"),
                candidate(3, None, "<api> and more"),
            ],
            3,
        );
        assert_eq!(ranked[0].0, 1, "{ranked:?}");
        assert_eq!(ranked[1].0, 3, "the newer of two equals first");
        assert!(rank(&[], 10).is_empty());
    }

    #[test]
    fn shorter_messages_rank_above_longer_ones_with_the_same_matches() {
        let long = format!("<deploy> {}", "word ".repeat(200));
        let ranked = rank(
            &[
                candidate(1, None, &long),
                candidate(2, None, "<deploy> now"),
            ],
            50,
        );
        assert_eq!(ranked[0].0, 2, "{ranked:?}");
    }
}
