//! The `finetune` example's task, built offline: two-digit additions asked in a fixed chat
//! format, answered with the number alone, so that exact-match accuracy measures what a
//! fine-tune taught (the format, and the sums).

use mlinfra_data::chat::Message;
use mlinfra_train::SplitMix64;
use mlinfra_train::post_training::Preference;

/// The system prompt of every conversation.
pub const SYSTEM: &str = "Answer with the number only.";

/// One question: `a + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sum {
    /// The first addend.
    pub a: u32,
    /// The second addend.
    pub b: u32,
}

impl Sum {
    /// The user's question.
    pub fn question(&self) -> String {
        format!("What is {} + {}?", self.a, self.b)
    }

    /// The expected answer, exactly.
    pub fn answer(&self) -> String {
        (self.a + self.b).to_string()
    }

    /// A plausible wrong answer: off by 1 to 10, or by ten in the tens digit (the mistakes of
    /// a bad carry), never the right one and never negative.
    pub fn wrong_answer(&self, rng: &mut SplitMix64) -> String {
        let right = i64::from(self.a + self.b);
        loop {
            let size = match rng.next_u64() % 3 {
                0 => 10,
                1 => -10,
                _ => (rng.next_u64() % 10) as i64 + 1,
            };
            let sign = if rng.next_u64().is_multiple_of(2) {
                1
            } else {
                -1
            };
            let offset = size * sign;
            let wrong = right + offset;
            if wrong >= 0 && wrong != right {
                return wrong.to_string();
            }
        }
    }

    /// The conversation up to the question.
    pub fn prompt(&self) -> Vec<Message> {
        vec![
            Message::new("system", SYSTEM),
            Message::new("user", self.question()),
        ]
    }

    /// The conversation with the right answer.
    pub fn conversation(&self) -> Vec<Message> {
        let mut messages = self.prompt();
        messages.push(Message::new("assistant", self.answer()));
        messages
    }

    /// A preference: the right answer over a wrong one.
    pub fn preference(&self, rng: &mut SplitMix64) -> Preference {
        Preference {
            prompt: self.prompt(),
            chosen: self.answer(),
            rejected: self.wrong_answer(rng),
        }
    }

    /// Whether `reply` (a model's answer) is exactly right, surrounding whitespace aside.
    pub fn is_answered_by(&self, reply: &str) -> bool {
        reply.trim() == self.answer()
    }
}

/// `train` questions for training and `held_out` others (no pair `(a, b)` in both), all with
/// addends in 10..100, drawn from `seed`.
pub fn split(train: usize, held_out: usize, seed: u64) -> (Vec<Sum>, Vec<Sum>) {
    let mut rng = SplitMix64::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut draw = |count: usize| {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let sum = Sum {
                a: 10 + (rng.next_u64() % 90) as u32,
                b: 10 + (rng.next_u64() % 90) as u32,
            };
            if seen.insert(sum) {
                out.push(sum);
            }
        }
        out
    };
    let held = draw(held_out);
    let training = draw(train);
    (training, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_questions_are_never_trained_on() {
        let (train, held) = split(2000, 100, 3);
        assert_eq!((train.len(), held.len()), (2000, 100));
        assert!(held.iter().all(|h| !train.contains(h)));
        assert_eq!(split(2000, 100, 3), (train, held), "deterministic");
    }

    #[test]
    fn answers_are_exact_and_wrong_answers_wrong() {
        let sum = Sum { a: 47, b: 38 };
        assert!(sum.is_answered_by(" 85\n"));
        assert!(!sum.is_answered_by("The answer is 85."));
        let mut rng = SplitMix64::new(1);
        for _ in 0..200 {
            let wrong = sum.wrong_answer(&mut rng);
            assert!(
                !sum.is_answered_by(&wrong) && !wrong.starts_with('-'),
                "{wrong}"
            );
        }
    }
}
