//! The wildcard values of descriptor rules: `*` stands for zero or more characters, anywhere in
//! the value and as often as needed (`foo*`, `bar*b`, `foo*bar*baz`, `*`).
//!
//! Written here rather than taken from a glob crate because those give `?`, `[..]` and `\`
//! escapes a meaning, and a config value such as `a?b` must stay a literal for configs written
//! for envoyproxy/ratelimit to keep matching what they matched there. Matching never allocates:
//! it runs on every request descriptor entry that misses the exact lookup.

/// A value pattern with at least one `*`, split once at config load into its literal parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    /// Literal text before the first `*`: the value must start with it.
    prefix: Box<str>,
    /// Literal text between consecutive `*`s, in order; empty parts (from `**`) are dropped.
    middle: Box<[Box<str>]>,
    /// Literal text after the last `*`: the value must end with it.
    suffix: Box<str>,
}

impl Glob {
    /// The pattern for `value`, or `None` when it has no `*` and so is an exact value.
    pub(crate) fn new(value: &str) -> Option<Glob> {
        let mut parts = value.split('*');
        let prefix = parts.next()?;
        let mut rest: Vec<&str> = parts.collect();
        // `split` yields one more part than there are stars: no star, no pattern.
        let suffix = rest.pop()?;
        Some(Glob {
            prefix: prefix.into(),
            middle: rest
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(Box::from)
                .collect(),
            suffix: suffix.into(),
        })
    }

    /// Whether `text` matches. Leftmost-first placement of each middle part is enough: with only
    /// `*` wildcards, a part placed as early as possible leaves the most room for the next one.
    pub(crate) fn matches(&self, text: &str) -> bool {
        if text.len() < self.prefix.len() + self.suffix.len()
            || !text.starts_with(&*self.prefix)
            || !text.ends_with(&*self.suffix)
        {
            return false;
        }
        // Both ends matched literal text, so these offsets are char boundaries.
        let mut rest = &text[self.prefix.len()..text.len() - self.suffix.len()];
        for part in self.middle.iter() {
            match rest.find(&**part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn matches(pattern: &str, text: &str) -> bool {
        Glob::new(pattern)
            .expect("pattern has a star")
            .matches(text)
    }

    #[test]
    fn value_without_star_is_not_a_pattern() {
        assert_eq!(Glob::new("plain"), None);
        assert_eq!(Glob::new(""), None);
    }

    #[test]
    fn trailing_star_is_a_prefix_match() {
        assert!(matches("foo*", "foo"));
        assert!(matches("foo*", "foobar"));
        assert!(!matches("foo*", "fo"));
        assert!(!matches("foo*", "xfoo"));
    }

    #[test]
    fn leading_star_is_a_suffix_match() {
        assert!(matches("*.pdf", "a.pdf"));
        assert!(matches("*.pdf", ".pdf"));
        assert!(!matches("*.pdf", "a.pdfx"));
    }

    #[test]
    fn star_in_the_middle_matches_zero_or_more_chars() {
        assert!(matches("bar*b", "barb"));
        assert!(matches("bar*b", "bar-xyz-b"));
        assert!(!matches("bar*b", "bar-xyz-c"));
    }

    #[test]
    fn prefix_and_suffix_may_not_overlap() {
        assert!(!matches("ab*ba", "aba"));
        assert!(matches("ab*ba", "abba"));
    }

    #[test]
    fn several_stars_match_parts_in_order() {
        assert!(matches("foo*bar*baz", "foobarbaz"));
        assert!(matches("foo*bar*baz", "foo1bar2baz"));
        assert!(matches("foo*bar*baz", "foobarbarbaz"));
        assert!(!matches("foo*bar*baz", "foobazbar"));
        assert!(!matches("foo*bar*baz", "foo1baz"));
    }

    #[test]
    fn lone_star_matches_anything_including_empty() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
        assert!(matches("**", "x"));
    }

    #[test]
    fn question_mark_and_brackets_are_literals() {
        assert!(matches("a?b*", "a?bc"));
        assert!(!matches("a?b*", "axbc"));
        assert!(matches("[x]*", "[x]y"));
        assert!(!matches("[x]*", "xy"));
    }

    #[test]
    fn multibyte_text_is_matched_by_characters() {
        assert!(matches("é*ü", "éaü"));
        assert!(matches("*ü", "ü"));
        assert!(!matches("é*ü", "éa"));
    }
}
