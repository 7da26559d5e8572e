//! Stop strings over incrementally decoded text.

/// Where the earliest stop string starts in `text`, looking only at matches that end after
/// byte `checked` (the text already searched by earlier calls): O(new text × stops) per call,
/// not O(whole text). `None` when no stop string appears.
///
/// The engine cuts the output there (the stop string is not returned, as in OpenAI's API).
pub fn find_stop(text: &str, checked: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|stop| {
            // A match ending after `checked` starts after `checked - len(stop)`.
            let mut from = checked.saturating_sub(stop.len() - 1).min(text.len());
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            text[from..].find(stop.as_str()).map(|at| from + at)
        })
        .min()
}

/// Bytes at the end of `text` that could be the start of a stop string: a streaming engine
/// holds them back until the next token shows whether they are. Always a char boundary.
pub fn stop_holdback(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for stop in stops {
        for len in (hold + 1..stop.len().min(text.len() + 1)).rev() {
            // A suffix equal to a whole-character prefix of `stop` starts on a boundary.
            if stop.is_char_boundary(len) && text.ends_with(&stop[..len]) {
                hold = len;
                break;
            }
        }
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_the_earliest_stop_including_across_chunk_boundaries() {
        let list = stops(&["\n\n", "END"]);
        assert_eq!(find_stop("a\nb", 0, &list), None);
        // "\n" was searched already; the second "\n" completes the match across calls.
        assert_eq!(find_stop("a\n\nb", 2, &list), Some(1));
        assert_eq!(find_stop("xxENDyy\n\n", 0, &list), Some(2));
        // Matches wholly inside the checked text were reported before; not found again.
        assert_eq!(find_stop("ENDxxxxx", 8, &list), None);
        assert_eq!(find_stop("héllo wörld", 3, &stops(&["wö"])), Some(7));
    }

    #[test]
    fn holds_back_a_possible_stop_prefix() {
        let list = stops(&["</s>", "STOP"]);
        assert_eq!(stop_holdback("hello </", &list), 2);
        assert_eq!(stop_holdback("hello ST", &list), 2);
        assert_eq!(stop_holdback("hello", &list), 0);
        assert_eq!(stop_holdback("é", &stops(&["éa"])), 2);
        assert_eq!(stop_holdback("</s", &list), 3);
    }
}
