//! Values carried as xtext (RFC 3461 §4): ENVID and ORCPT. The SMTP parser
//! decodes them; this says whether what they decode to may be kept.

/// Why a decoded ENVID or ORCPT value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XtextError {
    /// The value holds a control character (CR and LF among them), which would
    /// end a field of the DSN that repeats it.
    #[error("{param} may not contain control characters (U+{code:04X} found; RFC 3461 section 4)")]
    Control {
        /// The parameter: `ENVID` or `ORCPT`.
        param: &'static str,
        /// The first control character found.
        code: u32,
    },
}

/// Checks a decoded xtext value of `param`: no control characters (C0, DEL, C1).
pub fn check_decoded(param: &'static str, value: &str) -> Result<(), XtextError> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(XtextError::Control {
            param,
            code: u32::from(c),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused() {
        // (decoded value, first control character)
        let cases = [
            ("QQ314159", None),
            ("hi there", None),
            ("Bob@Example.COM", None),
            ("caf\u{e9}", None),
            ("ENV\r\nX-Injected: yes", Some(0x0d)),
            ("a\nb", Some(0x0a)),
            ("a\0b", Some(0)),
            ("a\tb", Some(9)),
            ("a\u{7f}", Some(0x7f)),
            ("a\u{1b}[2J", Some(0x1b)),
            ("a\u{85}", Some(0x85)),
        ];
        for (value, control) in cases {
            let got = check_decoded("ENVID", value).err();
            let want = control.map(|code| XtextError::Control {
                param: "ENVID",
                code,
            });
            assert_eq!(got, want, "{value:?}");
        }
        assert_eq!(
            check_decoded("ORCPT", "a\r\n").unwrap_err().to_string(),
            "ORCPT may not contain control characters (U+000D found; RFC 3461 section 4)"
        );
    }
}
