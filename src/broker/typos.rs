//! The name a sender probably meant: mail to a name nobody ever registered waits for it for
//! days, so a typo would be silent. [`closest`] finds a registered name a small edit away
//! (`bbo` for `bob`), which the `send` reply offers as `did_you_mean`.

/// The most edits a suggestion may be away from the name typed.
const MAX_EDITS: usize = 2;

/// Of `known` names, the one closest to `typed`: at most [`MAX_EDITS`] edits away and fewer
/// than half its length (so `ab` suggests nothing for `xy`), letter case ignored. Ties go to
/// the name first in alphabetical order.
pub fn closest<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed_lower = typed.to_ascii_lowercase();
    let length = typed.chars().count();
    let mut best: Option<(usize, &str)> = None;
    for name in known {
        // A name more than MAX_EDITS longer or shorter cannot be close; skipping it keeps a
        // send to a never-seen name cheap on the writer thread however many instances exist.
        if name == typed || name.len().abs_diff(typed.len()) > MAX_EDITS {
            continue;
        }
        let edits = edit_distance(&typed_lower, &name.to_ascii_lowercase());
        let too_far = edits > MAX_EDITS || (edits > 0 && 2 * edits >= length);
        if too_far {
            continue;
        }
        let better = match best {
            None => true,
            Some((best_edits, best_name)) => {
                edits < best_edits || (edits == best_edits && name < best_name)
            }
        };
        if better {
            best = Some((edits, name));
        }
    }
    best.map(|(_, name)| name)
}

/// How many single-character insertions, deletions, substitutions or swaps of two
/// neighbours turn `a` into `b` (Levenshtein distance with adjacent transpositions, so the
/// commonest typo, `bbo` for `bob`, counts as one edit).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: the distance between the first i characters of a and the first j of b.
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_each_kind_of_edit_once() {
        assert_eq!(edit_distance("bob", "bob"), 0);
        assert_eq!(edit_distance("bbo", "bob"), 1, "swapped neighbours");
        assert_eq!(edit_distance("bo", "bob"), 1, "left out");
        assert_eq!(edit_distance("boob", "bob"), 1, "one too many");
        assert_eq!(edit_distance("bop", "bob"), 1, "mistyped");
        assert_eq!(edit_distance("reviewr", "reviewer"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
    }

    #[test]
    fn the_closest_name_is_suggested_and_ties_go_alphabetically() {
        let known = ["alice", "bob", "carol"];
        assert_eq!(closest("bbo", known), Some("bob"));
        assert_eq!(closest("alcie", known), Some("alice"));
        assert_eq!(closest("carl", known), Some("carol"));
        assert_eq!(closest("Bob", known), Some("bob"), "a case variant");
        assert_eq!(closest("dave", known), None, "nothing close");
        // `bob` and `rob` are both one edit from `cob`: alphabetical order decides.
        assert_eq!(closest("cob", ["rob", "bob"]), Some("bob"));
        // The nearer of two wins over alphabetical order.
        assert_eq!(closest("alicia", ["alice", "alicia2"]), Some("alicia2"));
    }

    #[test]
    fn short_names_and_far_names_get_no_suggestion() {
        // Two edits in three letters, or one in two, is another name, not a typo.
        assert_eq!(closest("bxx", ["bob"]), None);
        assert_eq!(closest("bo", ["bob"]), None);
        assert_eq!(closest("ab", ["ac"]), None);
        // Three edits is too many whatever the length.
        assert_eq!(closest("reviewerxyz", ["reviewer"]), None);
        assert_eq!(closest("reviewerxy", ["reviewer"]), Some("reviewer"));
        // The name itself is not a suggestion.
        assert_eq!(closest("bob", ["bob"]), None);
    }
}
