//! When a request stops, and which of its text may be streamed: [`StopCriteria`].

use crate::sampling::SamplingParams;
use crate::sched::FinishReason;

/// One request's stopping rules (stop tokens, `max_tokens`, stop strings) over its generated
/// tokens and their text, fed one token at a time.
///
/// Stop strings match across token boundaries. The criteria keep back only text that could
/// still become a stop string (a suffix that is a prefix of one), so streamed text never has
/// to be taken back, and a matched stop string never reaches the client (OpenAI's semantics).
/// A stop token's own text is not released either (the token itself stays in the output ids).
///
/// # Costs
///
/// Per token, O((new text + longest stop string) × stop strings): the search only looks at
/// the held-back text and the new piece, never the whole output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCriteria {
    stop_token_ids: Vec<u32>,
    max_tokens: usize,
    stops: Vec<String>,
    generated: usize,
    /// Decoded text not yet released: a suffix that could begin a stop string.
    held: String,
}

/// What one token did: the text that may be streamed now, and whether the request is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCheck {
    /// Text to stream now (possibly empty).
    pub text: String,
    /// Why the request ends with this token, if it does: [`FinishReason::Stop`] for a stop
    /// token or string, [`FinishReason::Length`] at `max_tokens`.
    pub finish: Option<FinishReason>,
}

impl StopCriteria {
    /// The criteria of a request with `params`.
    pub fn new(params: &SamplingParams) -> Self {
        StopCriteria {
            stop_token_ids: params.stop_token_ids.clone(),
            max_tokens: params.max_tokens,
            stops: params.stop.clone(),
            generated: 0,
            held: String::new(),
        }
    }

    /// Tokens accounted for so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Accounts for generated token `token`, whose text is `piece`: what an incremental
    /// decoder returned for it (`None` while a character is still incomplete).
    ///
    /// After a check with `finish` set, the request is over; later calls are not meaningful.
    pub fn push(&mut self, token: u32, piece: Option<&str>) -> StopCheck {
        self.generated += 1;
        if self.stop_token_ids.contains(&token) {
            return self.finish(FinishReason::Stop);
        }
        self.held.push_str(piece.unwrap_or(""));
        if let Some(at) = find_stop(&self.held, &self.stops) {
            self.held.truncate(at);
            return self.finish(FinishReason::Stop);
        }
        if self.generated >= self.max_tokens {
            return self.finish(FinishReason::Length);
        }
        let keep = stop_holdback(&self.held, &self.stops);
        let text = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        StopCheck { text, finish: None }
    }

    fn finish(&mut self, reason: FinishReason) -> StopCheck {
        StopCheck {
            text: std::mem::take(&mut self.held),
            finish: Some(reason),
        }
    }
}

/// Where the earliest stop string starts in `text`, if one occurs.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|stop| text.find(stop.as_str()))
        .min()
}

/// Bytes at the end of `text` that could be the start of a stop string: held back until the
/// next token shows whether they are. Always a char boundary.
fn stop_holdback(text: &str, stops: &[String]) -> usize {
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

    fn criteria(stops: &[&str], stop_token_ids: &[u32], max_tokens: usize) -> StopCriteria {
        StopCriteria::new(&SamplingParams {
            stop: stops.iter().map(|s| s.to_string()).collect(),
            stop_token_ids: stop_token_ids.to_vec(),
            ..SamplingParams::greedy(max_tokens)
        })
    }

    /// Feeds `pieces` (token ids 100, 101, ...) and returns the streamed text and the finish.
    fn run(
        criteria: &mut StopCriteria,
        pieces: &[Option<&str>],
    ) -> (Vec<String>, Option<FinishReason>) {
        let mut streamed = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let check = criteria.push(100 + i as u32, *piece);
            streamed.push(check.text);
            if check.finish.is_some() {
                return (streamed, check.finish);
            }
        }
        (streamed, None)
    }

    #[test]
    fn a_stop_string_across_tokens_is_matched_and_never_streamed() {
        let mut c = criteria(&["\n\n", "END"], &[], 100);
        let (streamed, finish) = run(&mut c, &[Some("Hi"), Some(" E"), Some("N"), Some("D more")]);
        // "E" and "EN" could begin "END": held back, then dropped with the match.
        assert_eq!(streamed, ["Hi", " ", "", ""]);
        assert_eq!(finish, Some(FinishReason::Stop));
        let mut c = criteria(&["\n\n"], &[], 100);
        let (streamed, finish) = run(&mut c, &[Some("a\n"), Some("\nb")]);
        assert_eq!(streamed, ["a", ""]);
        assert_eq!(finish, Some(FinishReason::Stop));
    }

    #[test]
    fn held_text_is_released_once_it_cannot_be_a_stop_string() {
        let mut c = criteria(&["</s>"], &[], 100);
        let (streamed, finish) = run(&mut c, &[Some("x <"), Some("/"), Some("p>"), Some(" y")]);
        assert_eq!(streamed, ["x ", "", "</p>", " y"]);
        assert_eq!(finish, None);
    }

    #[test]
    fn incomplete_characters_and_multibyte_stops() {
        let mut c = criteria(&["wö"], &[], 100);
        // None: the decoder is still inside a character.
        let (streamed, finish) = run(&mut c, &[Some("héllo w"), None, Some("örld")]);
        assert_eq!(streamed, ["héllo ", "", ""]);
        assert_eq!(finish, Some(FinishReason::Stop));
    }

    #[test]
    fn stop_tokens_and_max_tokens_end_the_request_and_flush_held_text() {
        // Token 102 is a stop token: the held "E" is released, the stop token's text is not.
        let mut c = criteria(&["END"], &[102], 100);
        let (streamed, finish) = run(&mut c, &[Some("a"), Some(" E"), Some("<eos>")]);
        assert_eq!(streamed, ["a", " ", "E"]);
        assert_eq!(finish, Some(FinishReason::Stop));
        let mut c = criteria(&["END"], &[], 2);
        let (streamed, finish) = run(&mut c, &[Some("a"), Some(" E"), Some("never")]);
        assert_eq!(streamed, ["a", " E"]);
        assert_eq!(finish, Some(FinishReason::Length));
        assert_eq!(c.generated(), 2);
        // Without stop strings nothing is held.
        let mut c = criteria(&[], &[], 10);
        assert_eq!(run(&mut c, &[Some("a<"), Some("b")]).0, ["a<", "b"]);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let mut c = criteria(&["cd", "bcdz", "b"], &[], 100);
        let (streamed, finish) = run(&mut c, &[Some("abcd")]);
        assert_eq!(streamed, ["a"]);
        assert_eq!(finish, Some(FinishReason::Stop));
    }

    #[test]
    fn holds_back_a_possible_stop_prefix() {
        let list: Vec<String> = ["</s>", "STOP"].map(String::from).to_vec();
        assert_eq!(stop_holdback("hello </", &list), 2);
        assert_eq!(stop_holdback("hello ST", &list), 2);
        assert_eq!(stop_holdback("hello", &list), 0);
        assert_eq!(stop_holdback("é", &["éa".to_string()]), 2);
        assert_eq!(stop_holdback("</s", &list), 3);
    }
}
