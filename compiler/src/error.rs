//! Compile errors that point at the offending text.
//!
//! Every error carries the byte span of the expression it is about; [`CompileError`]'s
//! `Display` prints the message, then the expression, then a caret line under the span:
//!
//! ```text
//! port number 65536 is out of range (0..=65535)
//!   tcp port 65536
//!            ^^^^^
//! ```

use std::fmt;

/// A half-open byte range `start..end` of the expression text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The span `start..end`.
    pub const fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// What went wrong, without the text it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The expression does not follow the grammar.
    #[error("{0}")]
    Syntax(String),
    /// The expression is well formed but means nothing libpcap would compile (a qualifier
    /// that does not apply, a value out of range, a name where a number is needed).
    #[error("{0}")]
    Semantic(String),
    /// The expression is valid pcap-filter but netmux does not implement it.
    #[error("{0}")]
    Unsupported(String),
    /// The program would not fit the VM (instructions, registers or scratch slots).
    #[error("{0}")]
    TooComplex(String),
    /// A bug in netmux: the compiler produced a program the verifier refused.
    #[error("internal compiler error: {0}")]
    Internal(String),
    /// With the optimizer on, the filter provably rejects every frame (libpcap refuses such
    /// filters the same way).
    #[error("expression rejects all packets")]
    RejectsAllPackets,
}

/// A compile error: what went wrong, where, and the expression it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Where in the expression (byte offsets).
    pub span: Span,
    /// The expression.
    pub expr: String,
}

impl CompileError {
    /// An error of `kind` at `span` of `expr`.
    pub fn new(kind: ErrorKind, span: Span, expr: &str) -> CompileError {
        CompileError {
            kind,
            span,
            expr: expr.to_owned(),
        }
    }

    /// The message alone, without the expression and caret.
    pub fn message(&self) -> String {
        self.kind.to_string()
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.kind)?;
        // Show the expression on one line; tabs and newlines would misplace the caret.
        let shown: String = self
            .expr
            .chars()
            .map(|c| if c.is_whitespace() { ' ' } else { c })
            .collect();
        writeln!(f, "  {shown}")?;
        let start = self.span.start.min(self.expr.len());
        let end = self.span.end.clamp(start, self.expr.len());
        // Columns are counted in characters, not bytes.
        let col = self.expr.get(..start).map_or(start, |s| s.chars().count());
        let width = self
            .expr
            .get(start..end)
            .map_or(1, |s| s.chars().count())
            .max(1);
        write!(f, "  {}{}", " ".repeat(col), "^".repeat(width))
    }
}

impl std::error::Error for CompileError {}

/// An error before it is attached to the expression text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Where.
    pub span: Span,
}

/// Results of the passes before the expression text is attached.
pub type Result<T> = std::result::Result<T, Located>;

pub(crate) fn syntax<T>(span: Span, msg: impl Into<String>) -> Result<T> {
    Err(Located {
        kind: ErrorKind::Syntax(msg.into()),
        span,
    })
}

pub(crate) fn semantic<T>(span: Span, msg: impl Into<String>) -> Result<T> {
    Err(Located {
        kind: ErrorKind::Semantic(msg.into()),
        span,
    })
}

pub(crate) fn unsupported<T>(span: Span, msg: impl Into<String>) -> Result<T> {
    Err(Located {
        kind: ErrorKind::Unsupported(msg.into()),
        span,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_sits_under_the_span() {
        let e = CompileError::new(
            ErrorKind::Syntax("expected a port number after `port`".into()),
            Span::new(9, 14),
            "tcp port 65536",
        );
        assert_eq!(
            e.to_string(),
            "expected a port number after `port`\n  tcp port 65536\n           ^^^^^"
        );
    }

    #[test]
    fn an_empty_span_at_the_end_still_shows_one_caret() {
        let e = CompileError::new(ErrorKind::Syntax("x".into()), Span::new(3, 3), "tcp");
        assert!(e.to_string().ends_with("\n     ^"));
    }
}
