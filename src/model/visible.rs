//! Text from the network or the spool, made safe to print to a terminal or a log.
//!
//! Envelope addresses, EHLO names, AUTH user names and remote replies come from
//! strangers. Printed raw, an ESC starts a terminal escape sequence (retitle the
//! window, rewrite the screen, in some terminals even answer back as input) and a
//! CR or LF forges a log line. Every output edge (queue list and show, `check`,
//! the log writer) passes such text through [`visible`] or [`visible_lines`],
//! which show each control character as an escape instead of sending it.
//!
//! Controls are C0 (U+0000–U+001F), DEL and C1 (U+0080–U+009F; U+009B is a
//! one-character CSI for some terminals); the bidirectional overrides and
//! isolates (U+202A–U+202E, U+2066–U+2069) are shown too, as they reorder what a
//! reader sees. A backslash is left alone: the point is terminal safety, not a
//! reversible encoding, and addresses with `\` are rare.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` is shown as an escape rather than printed.
fn hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends the visible form of `c`: `\x1b` for ASCII controls, `\u{9b}` above.
fn push_escape(out: &mut String, c: char) {
    let code = u32::from(c);
    if code < 0x80 {
        let _ = write!(out, "\\x{code:02x}");
    } else {
        let _ = write!(out, "\\u{{{code:x}}}");
    }
}

/// `s` on one line with every control character (tab, CR and LF included) shown as an escape.
pub fn visible(s: &str) -> Cow<'_, str> {
    escape_where(s, |_| true)
}

/// Like [`visible`], but line feeds and tabs stay (multi-line text such as headers);
/// a CR before an LF is dropped, any other CR is shown.
pub fn visible_lines(s: &str) -> Cow<'_, str> {
    let s: Cow<'_, str> = if s.contains("\r\n") {
        Cow::Owned(s.replace("\r\n", "\n"))
    } else {
        Cow::Borrowed(s)
    };
    match escape_where(&s, |c| c != '\n' && c != '\t') {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => Cow::Owned(o),
    }
}

/// `s` as a logfmt value: bare when it is a single plain word, else in double
/// quotes with `"` and `\` backslash-escaped and hidden characters shown as in
/// [`visible`], so a key=value parser reads back exactly one value.
pub fn logfmt_value(s: &str) -> Cow<'_, str> {
    let plain = |c: char| !(c == ' ' || c == '"' || c == '=' || c == '\\' || hidden(c));
    if !s.is_empty() && s.chars().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if hidden(c) => push_escape(&mut out, c),
            c => out.push(c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// Escapes the hidden characters of `s` for which `escape` says yes.
fn escape_where(s: &str, escape: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| hidden(c) && escape(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) && escape(c) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_table() {
        let cases = [
            ("alice@example.com", "alice@example.com"),
            (
                "caf\u{e9}@b\u{fc}cher.example",
                "caf\u{e9}@b\u{fc}cher.example",
            ),
            ("", ""),
            ("a\u{1b}[2Jb", "a\\x1b[2Jb"),
            ("\u{1b}]0;pwned\u{7}", "\\x1b]0;pwned\\x07"),
            ("x\r\nforged: line", "x\\x0d\\x0aforged: line"),
            ("nul\0", "nul\\x00"),
            ("tab\there", "tab\\x09here"),
            ("del\u{7f}", "del\\x7f"),
            ("csi\u{9b}31m", "csi\\u{9b}31m"),
            ("nel\u{85}", "nel\\u{85}"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            ("iso\u{2066}x\u{2069}", "iso\\u{2066}x\\u{2069}"),
            ("back\\slash", "back\\slash"),
        ];
        for (input, want) in cases {
            assert_eq!(visible(input), want, "{input:?}");
        }
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn logfmt_values_table() {
        let cases = [
            ("alice@example.com", "alice@example.com"),
            ("", "\"\""),
            ("two words", "\"two words\""),
            ("k=v", "\"k=v\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("back\\slash", "\"back\\\\slash\""),
            ("x\r\nforged=1", "\"x\\x0d\\x0aforged=1\""),
            ("csi\u{9b}", "\"csi\\u{9b}\""),
            ("<a@b.example>", "<a@b.example>"),
            ("TLSv1.3", "TLSv1.3"),
        ];
        for (input, want) in cases {
            assert_eq!(logfmt_value(input), want, "{input:?}");
        }
    }

    #[test]
    fn multi_line_table() {
        let cases = [
            ("Subject: hi\r\n\tfolded\r\n", "Subject: hi\n\tfolded\n"),
            ("a\nb", "a\nb"),
            ("bare\rcr", "bare\\x0dcr"),
            ("Subject: \u{1b}[31mred\r\n", "Subject: \\x1b[31mred\n"),
            ("c1\u{9b}", "c1\\u{9b}"),
        ];
        for (input, want) in cases {
            assert_eq!(visible_lines(input), want, "{input:?}");
        }
        assert!(matches!(visible_lines("a\nb\tc"), Cow::Borrowed(_)));
    }

    #[test]
    fn output_never_holds_a_hidden_character() {
        let all: String = (0u32..0x300)
            .chain(0x2000..0x2100)
            .filter_map(char::from_u32)
            .collect();
        assert!(!visible(&all).chars().any(hidden));
        assert!(!visible_lines(&all)
            .chars()
            .any(|c| hidden(c) && c != '\n' && c != '\t'));
    }
}
