//! [`NgramProposer`]: prompt lookup (Saxena 2023; vLLM's `ngram` speculator), no draft model.

/// Proposes the tokens that followed the most recent earlier occurrence of the sequence's
/// last `n` tokens, trying `n` from `max_n` down to `min_n`. Free to run, and effective
/// wherever outputs copy from their context (code edits, extraction, summaries quoting the
/// source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramProposer {
    /// Shortest suffix to match (at least 1).
    pub min_n: usize,
    /// Longest suffix to match.
    pub max_n: usize,
    /// Tokens to propose at most.
    pub k: usize,
}

impl Default for NgramProposer {
    /// Match 1 to 4 tokens, propose up to 4.
    fn default() -> Self {
        NgramProposer {
            min_n: 1,
            max_n: 4,
            k: 4,
        }
    }
}

impl NgramProposer {
    /// Up to `k` proposed next tokens for `tokens` (prompt and output so far); empty when no
    /// suffix recurs. O(len × min(max_n, len)) per call, whatever `max_n` and `k` say.
    pub fn propose(&self, tokens: &[u32]) -> Vec<u32> {
        let len = tokens.len();
        // A suffix must leave room for an earlier occurrence: n < len. Capping here keeps a
        // huge `max_n` from looping over lengths that cannot match.
        let longest = self.max_n.min(len.saturating_sub(1));
        for n in (self.min_n.max(1)..=longest).rev() {
            let suffix = &tokens[len - n..];
            // The most recent earlier occurrence, not overlapping the suffix itself.
            if let Some(start) = (0..len - n).rev().find(|&s| &tokens[s..s + n] == suffix) {
                let from = start + n;
                return tokens[from..len.min(from.saturating_add(self.k))].to_vec();
            }
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_longest_recent_match() {
        let proposer = NgramProposer {
            min_n: 1,
            max_n: 3,
            k: 3,
        };
        // "7 8 9" recurs at the end: propose what followed it last time.
        assert_eq!(
            proposer.propose(&[1, 7, 8, 9, 4, 5, 6, 2, 7, 8, 9]),
            [4, 5, 6]
        );
        // The most recent occurrence wins.
        assert_eq!(proposer.propose(&[3, 1, 3, 2, 3]), [2, 3]);
        // A proposal stops at the end of the sequence.
        assert_eq!(proposer.propose(&[5, 6, 5]), [6, 5]);
        assert!(proposer.propose(&[1, 2, 3]).is_empty());
        assert!(proposer.propose(&[]).is_empty());
        let exact = NgramProposer {
            min_n: 2,
            max_n: 2,
            k: 2,
        };
        assert!(
            exact.propose(&[1, 2, 9, 2]).is_empty(),
            "a 1-token match is below min_n"
        );
    }

    /// Issue 21 (unchecked sizes): `max_n` and `k` of `usize::MAX` looped over 2^64 suffix
    /// lengths and overflowed the proposal's end; they now mean "as long as there is".
    #[test]
    fn huge_limits_mean_as_long_as_the_sequence_allows() {
        let unbounded = NgramProposer {
            min_n: 1,
            max_n: usize::MAX,
            k: usize::MAX,
        };
        assert_eq!(
            unbounded.propose(&[1, 7, 8, 9, 4, 5, 6, 2, 7, 8, 9]),
            [4, 5, 6, 2, 7, 8, 9]
        );
        assert!(unbounded.propose(&[]).is_empty());
        assert!(unbounded.propose(&[3]).is_empty());
    }
}
