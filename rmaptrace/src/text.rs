//! Names chosen by traced processes (their comm, the files they map) as text.
//! They are bytes, not necessarily UTF-8, and may hold terminal control
//! sequences: rmaptrace keeps them losslessly and shows them escaped.
use std::borrow::Cow;

/// Bytes as text, losslessly: valid UTF-8 as it is, each byte that is not as
/// `\xNN`, and a backslash as `\\` (so that `\xNN` always means a raw byte).
pub fn from_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Text safe to print on a terminal: control characters (C0, DEL, C1) and the
/// characters that reorder text on screen (bidirectional overrides) escaped as
/// `\xNN` or `\u{NNNN}`; everything else as it is.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !hidden(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// [`visible`] in place: the string is replaced only when it needed escapes.
pub fn make_visible(s: &mut String) {
    if let Cow::Owned(v) = visible(s) {
        *s = v;
    }
}

/// Bytes as a terminal may show them: [`from_bytes`], then [`visible`].
pub fn shown(bytes: &[u8]) -> String {
    visible(&from_bytes(bytes)).into_owned()
}

fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_kept_losslessly() {
        assert_eq!(from_bytes(b"bash"), "bash");
        assert_eq!(from_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(from_bytes(b"a\xffb\xc3"), "a\\xffb\\xc3");
        assert_eq!(from_bytes(b"C:\\x"), "C:\\\\x", "a backslash is escaped");
        // Two different inputs never give one output.
        assert_ne!(from_bytes(b"\\xff"), from_bytes(b"\xff"));
    }

    #[test]
    fn control_sequences_are_shown_not_obeyed() {
        assert_eq!(visible("myapp"), "myapp");
        assert!(matches!(visible("myapp"), Cow::Borrowed(_)));
        assert_eq!(visible("\x1b[2J\x1b[41mEVIL"), "\\x1b[2J\\x1b[41mEVIL");
        assert_eq!(visible("a\tb\nc\x7f\u{9b}"), "a\\x09b\\x0ac\\x7f\\x9b");
        assert_eq!(visible("txt.\u{202e}exe"), "txt.\\u{202e}exe");
        assert!(!visible("\x1b]0;title\x07").chars().any(char::is_control));
    }
}
