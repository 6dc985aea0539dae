//! Where in a TOML file an error is: line, column, the TOML path of the key
//! (from the deserializer's path, or for a syntax error from the table
//! header and key of that line) and the line itself with a caret, so
//! `mtgate check` and `mtgate run` say exactly what to fix.

/// A position in the file's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// 1-based line and column (in characters).
    pub line: usize,
    pub col: usize,
    /// The line's text, without its end.
    pub text: String,
}

impl Location {
    /// The location of byte offset `at` in `text` (clamped to the text).
    pub fn of(text: &str, at: usize) -> Location {
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        Location {
            line: text[..at].matches('\n').count() + 1,
            col: text[start..at].chars().count() + 1,
            text: text[start..end].trim_end_matches('\r').to_string(),
        }
    }

    /// The line, and a caret under the column.
    pub fn snippet(&self) -> String {
        let n = self.line.to_string();
        let shown: String = self.text.chars().take(200).collect();
        format!(
            "{n} | {shown}\n{} | {}^",
            " ".repeat(n.len()),
            " ".repeat(self.col.saturating_sub(1).min(200))
        )
    }
}

/// The TOML path of the key written on line `line` (1-based): the last table
/// header above it, then the key before `=` on that line, if any.
pub fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.checked_sub(1)?)?.trim();
    if let Some(h) = this.strip_prefix('[') {
        // A table header (maybe broken): its own name.
        let name = h
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim();
        return (!name.is_empty()).then(|| name.to_string());
    }
    let key = this
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let header = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]"));
        let inner = inner.or_else(|| l.strip_prefix('[').and_then(|r| r.split(']').next()));
        inner.map(|h| h.trim().to_string())
    });
    match (header, key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(h), None) => Some(h),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn line_column_and_snippet() {
        let text = "[server]\nlisten = [\"a\"]\n[tls]\nfronting = maybe\n";
        let at = text.find("maybe").expect("there");
        let l = Location::of(text, at);
        assert_eq!((l.line, l.col), (4, 12));
        assert_eq!(l.text, "fronting = maybe");
        assert_eq!(l.snippet(), "4 | fronting = maybe\n  |            ^");
        assert_eq!(key_at(text, 4).as_deref(), Some("tls.fronting"));
        assert_eq!(key_at(text, 2).as_deref(), Some("server.listen"));
        assert_eq!(key_at("a = 1\n", 1).as_deref(), Some("a"));
        assert_eq!(
            key_at("[users.bob]\nsecret = 1", 2).as_deref(),
            Some("users.bob.secret")
        );
        assert_eq!(key_at("", 1), None);
        assert_eq!(key_at("x", 0), None);
        assert_eq!(key_at("[server\nlisten = []", 1).as_deref(), Some("server"));
        assert_eq!(key_at("[[a.b]]\n", 1).as_deref(), Some("a.b"));
    }

    proptest! {
        /// Any text and offset: no panic, a line within the text, a column
        /// within the line.
        #[test]
        fn any_offset_is_located(text in "(\\PC|\n){0,200}", at in 0usize..400) {
            let l = Location::of(&text, at);
            prop_assert!(l.line >= 1 && l.line <= text.matches('\n').count() + 1);
            prop_assert!(l.col >= 1 && l.col <= l.text.chars().count() + 1);
            let _ = l.snippet();
            let _ = key_at(&text, l.line);
        }
    }
}
