//! Text a task wrote (logs, output names, its error message) or a remote peer claimed, made
//! safe for a terminal: control characters, ANSI escapes included, are shown as `\u{..}`
//! escapes, and every log line is indented under its header, so nothing a task prints can
//! move the cursor, recolour the screen or pass for the CLI's own `status:` line.

use std::fmt::Write;

/// One line of untrusted text: every control character escaped, newlines included.
pub(super) fn line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push(&mut out, c);
    }
    out
}

/// Untrusted multi-line text, each line escaped and indented by `indent`.
pub(super) fn block(text: &str, indent: &str) -> String {
    let mut out = String::with_capacity(text.len() + indent.len());
    for (i, l) in text.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(indent);
        for c in l.chars() {
            push(&mut out, c);
        }
    }
    out
}

fn push(out: &mut String, c: char) {
    // Bidi overrides and other format characters can reorder what a terminal shows.
    let format =
        matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if (c.is_control() && c != '\t') || format {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_cannot_reach_the_terminal() {
        assert_eq!(
            line("\x1b[2J\x1b[Hhi\r\n"),
            "\\u{1b}[2J\\u{1b}[Hhi\\u{d}\\u{a}"
        );
        assert_eq!(line("a\u{202e}b\tc"), "a\\u{202e}b\tc");
        assert_eq!(line("plain text, ünïcode"), "plain text, ünïcode");
    }

    #[test]
    fn a_forged_status_line_stays_indented() {
        let shown = block("working\nstatus: ok\r\x1b[1A", "  | ");
        assert_eq!(shown, "  | working\n  | status: ok\\u{d}\\u{1b}[1A");
        assert!(shown.lines().all(|l| l.starts_with("  | ")));
    }
}
