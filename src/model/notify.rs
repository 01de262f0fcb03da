//! The DSN NOTIFY conditions of one recipient (RFC 3461 §4.1).

use std::fmt;
use std::ops::BitOr;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of NOTIFY conditions; empty when the client gave no NOTIFY parameter.
///
/// On disk it is a list of lower-case words in the order success, failure,
/// delay, never: the form envelopes have always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Notify(u8);

impl Notify {
    /// `NOTIFY=NEVER`: no DSN at all.
    pub const NEVER: Notify = Notify(1);
    /// `NOTIFY=SUCCESS`.
    pub const SUCCESS: Notify = Notify(2);
    /// `NOTIFY=FAILURE`.
    pub const FAILURE: Notify = Notify(4);
    /// `NOTIFY=DELAY`.
    pub const DELAY: Notify = Notify(8);

    /// Each condition with its word, in the order they are written.
    const WORDS: [(Notify, &'static str); 4] = [
        (Notify::SUCCESS, "success"),
        (Notify::FAILURE, "failure"),
        (Notify::DELAY, "delay"),
        (Notify::NEVER, "never"),
    ];

    /// Whether every condition of `other` is in `self`.
    pub fn contains(self, other: Notify) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no condition was given.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The condition named by a lower-case word (`success`, `failure`, `delay`, `never`).
    pub fn from_word(word: &str) -> Option<Notify> {
        Notify::WORDS
            .iter()
            .find(|(_, w)| *w == word)
            .map(|(n, _)| *n)
    }

    /// The lower-case words of the conditions in the set.
    pub fn words(self) -> impl Iterator<Item = &'static str> {
        Notify::WORDS
            .into_iter()
            .filter(move |(n, _)| self.contains(*n))
            .map(|(_, w)| w)
    }
}

impl BitOr for Notify {
    type Output = Notify;
    fn bitor(self, rhs: Notify) -> Notify {
        Notify(self.0 | rhs.0)
    }
}

/// The words joined by commas, e.g. `success,delay` (empty for an empty set).
impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words().collect::<Vec<_>>().join(","))
    }
}

impl Serialize for Notify {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.words().count()))?;
        for w in self.words() {
            seq.serialize_element(w)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Notify {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Notify, D::Error> {
        d.deserialize_seq(WordsVisitor)
    }
}

/// Reads the list of words an envelope stores.
struct WordsVisitor;

impl<'de> Visitor<'de> for WordsVisitor {
    type Value = Notify;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of NOTIFY words (success, failure, delay, never)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Notify, A::Error> {
        let mut set = Notify::default();
        while let Some(word) = seq.next_element::<String>()? {
            let n = Notify::from_word(&word)
                .ok_or_else(|| de::Error::custom(format!("`{word}` is not a NOTIFY condition")))?;
            set = set | n;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_is_the_list_of_words() {
        let cases = [
            (Notify::default(), "[]", ""),
            (Notify::NEVER, r#"["never"]"#, "never"),
            (
                Notify::SUCCESS | Notify::DELAY,
                r#"["success","delay"]"#,
                "success,delay",
            ),
            (
                Notify::DELAY | Notify::FAILURE | Notify::SUCCESS,
                r#"["success","failure","delay"]"#,
                "success,failure,delay",
            ),
        ];
        for (set, json, text) in cases {
            assert_eq!(serde_json::to_string(&set).unwrap(), json);
            assert_eq!(serde_json::from_str::<Notify>(json).unwrap(), set, "{json}");
            assert_eq!(set.to_string(), text);
        }
    }

    #[test]
    fn reading_accepts_any_order_and_refuses_unknown_words() {
        let cases = [
            (
                r#"["delay","success"]"#,
                Some(Notify::SUCCESS | Notify::DELAY),
            ),
            (r#"["failure","failure"]"#, Some(Notify::FAILURE)),
            (r#"["sometimes"]"#, None),
            (r#""failure""#, None),
        ];
        for (json, want) in cases {
            assert_eq!(serde_json::from_str::<Notify>(json).ok(), want, "{json}");
        }
    }

    #[test]
    fn contains_and_empty() {
        let set = Notify::SUCCESS | Notify::FAILURE;
        assert!(set.contains(Notify::FAILURE));
        assert!(!set.contains(Notify::DELAY));
        assert!(!set.is_empty());
        assert!(Notify::default().is_empty());
        assert_eq!(Notify::from_word("delay"), Some(Notify::DELAY));
        assert_eq!(Notify::from_word("DELAY"), None);
    }
}
