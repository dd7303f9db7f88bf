//! "Did you mean ...?": the closest known name to a mistyped one, by edit distance. The
//! command-line parser suggests parameter keys with it, and the host tools module names.
//!
//! Hand-written rather than taken from `strsim`: that crate needs `std`, and this one must
//! build without it for PID 1.

use alloc::vec::Vec;

/// The Levenshtein distance between `a` and `b`, ignoring ASCII case: the number of
/// characters to insert, delete or replace to turn one into the other.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().map(|c| c.to_ascii_lowercase()).enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let at = |v: &Vec<usize>, k: usize| v.get(k).copied().unwrap_or(usize::MAX);
            let substitute = at(&prev, j).saturating_add(usize::from(ca != cb));
            let delete = at(&prev, j + 1).saturating_add(1);
            let insert = at(&cur, j).saturating_add(1);
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// How many edits a typo of `word` may have: a third of its length, 1 to 3. Further than
/// that, a suggestion is more likely a different name than the one meant.
pub fn max_typo_edits(word: &str) -> usize {
    (word.chars().count() / 3).clamp(1, 3)
}

/// The candidate closest to `word` ([`edit_distance`]) if it is close enough to be a typo
/// ([`max_typo_edits`]); the first one on a tie.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = max_typo_edits(word);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let d = edit_distance(word, candidate);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("appDebug", "APPDEBUG"), 0);
        assert_eq!(edit_distance("nœud", "noeud"), 2);
    }

    #[test]
    fn typo_limits() {
        assert_eq!(max_typo_edits(""), 1);
        assert_eq!(max_typo_edits("ab"), 1);
        assert_eq!(max_typo_edits("abcdef"), 2);
        assert_eq!(max_typo_edits("abcdefghijkl"), 3);
        assert_eq!(max_typo_edits("éééééé"), 2);
    }

    #[test]
    fn closest_within_the_limit_first_on_a_tie() {
        let names = ["virtio_net", "virtio_pci", "virtio"];
        assert_eq!(closest("virtio_nte", names), Some("virtio_net"));
        assert_eq!(closest("virtio_pc", names), Some("virtio_pci"));
        assert_eq!(closest("virtio_xyzzy", names), None);
        assert_eq!(closest("ab", ["ax", "ay"]), Some("ax"));
        assert_eq!(closest("anything", []), None);
    }
}
