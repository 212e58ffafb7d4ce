//! Compiling RabbitMQ's regexes (written for Erlang's PCRE) with the `regex` crate.
//!
//! The two dialects agree on everything permissions and policy patterns use in practice,
//! but PCRE reads some characters literally where `regex` refuses the pattern:
//! a `{` that does not start a counted repetition (`{username}` in a topic permission that
//! was not expanded), a stray `}`, and `[`, `&&`, `~~` inside a character class. Those are
//! escaped before compiling. Look-around and back-references have no equivalent: such a
//! pattern is refused with the compiler's message rather than silently matching differently.

use regex::{Regex, RegexBuilder};

/// Upper bound on one compiled pattern. Permission and policy regexes are a few dozen
/// bytes; this only stops a pathological pattern from taking memory from the broker.
const COMPILED_REGEX_LIMIT_BYTES: usize = 1 << 20;

/// Compile a RabbitMQ (PCRE) pattern, unanchored as `re:run` is.
pub(crate) fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&translate(pattern))
        .size_limit(COMPILED_REGEX_LIMIT_BYTES)
        .build()
        .map_err(|e| format!("regular expression '{pattern}' is invalid: {e}"))
}

/// Rewrite the PCRE-literal characters listed in the module note as escapes.
fn translate(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                out.push(c);
                if let Some(&next) = chars.get(i + 1) {
                    out.push(next);
                    i += 1;
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                // A `]` right after `[` or `[^` is a literal member in both dialects.
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i + 1) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
            }
            '[' if chars.get(i + 1) == Some(&':') => {
                // POSIX class such as [:alpha:], understood by both: copy through ":]".
                let rest: String = chars[i..].iter().collect();
                match rest.find(":]") {
                    Some(end) => {
                        out.push_str(&rest[..end + 2]);
                        i += rest[..end + 2].chars().count() - 1;
                    }
                    None => out.push_str("\\["),
                }
            }
            '[' | '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '{' if !in_class => match counted_repetition_len(&chars[i..]) {
                Some(len) => {
                    out.extend(&chars[i..i + len]);
                    i += len - 1;
                }
                None => out.push_str("\\{"),
            },
            '}' if !in_class => out.push_str("\\}"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// Length of `{n}`, `{n,}` or `{n,m}` at the start of `s`, if it is one.
fn counted_repetition_len(s: &[char]) -> Option<usize> {
    let mut i = 1;
    let digits_from = i;
    while s.get(i).is_some_and(char::is_ascii_digit) {
        i += 1;
    }
    if i == digits_from {
        return None;
    }
    if s.get(i) == Some(&',') {
        i += 1;
        while s.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
    }
    (s.get(i) == Some(&'}')).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcre_literal_braces_compile_and_match_literally() {
        let re = compile("^{username}\\.").unwrap();
        assert!(re.is_match("{username}.x"));
        assert!(!re.is_match("bob.x"));
        assert!(compile("a}b").unwrap().is_match("a}b"));
    }

    #[test]
    fn counted_repetitions_are_kept() {
        let re = compile("^a{2,3}$").unwrap();
        assert!(re.is_match("aa"));
        assert!(!re.is_match("a"));
        assert!(compile("^x{2}$").unwrap().is_match("xx"));
        assert!(compile("^x{1,}$").unwrap().is_match("xxx"));
    }

    #[test]
    fn classes_with_pcre_literals() {
        assert!(compile("[[]").unwrap().is_match("["));
        assert!(compile("[]a]").unwrap().is_match("]"));
        assert!(compile("[a&&b]").unwrap().is_match("&"));
        assert!(compile("^[[:alpha:]]+$").unwrap().is_match("abc"));
        assert!(compile("[\\]]").unwrap().is_match("]"));
    }

    #[test]
    fn unsupported_or_broken_patterns_are_refused_with_the_pattern_named() {
        let e = compile("(unclosed").unwrap_err();
        assert!(e.contains("'(unclosed'"), "{e}");
        assert!(compile("(?=look)ahead").is_err());
    }
}
