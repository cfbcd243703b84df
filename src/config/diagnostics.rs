//! Errors in fleet files: collected all at once, each with file, line, column and a caret.
//!
//! Validation code pushes [`Problem`]s (a byte span and a message) into a [`Problems`] list; the
//! loader turns them into public [`Diagnostic`]s with line and column once every file is read.

use super::syntax::Span;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// One source text, kept for line numbers and for rendering snippets.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// Byte offset of every line start, computed on first need (only files with errors need it).
    line_starts: OnceLock<Vec<usize>>,
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        SourceFile {
            path,
            text,
            line_starts: OnceLock::new(),
        }
    }

    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| {
            let newlines = self
                .text
                .bytes()
                .enumerate()
                .filter(|(_, byte)| *byte == b'\n');
            std::iter::once(0)
                .chain(newlines.map(|(at, _)| at + 1))
                .collect()
        })
    }

    /// 0-based line index of a byte offset.
    fn line_index(&self, offset: usize) -> usize {
        let starts = self.line_starts();
        starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1)
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_index(offset);
        let line_start = self.line_starts()[line];
        let column = self
            .text
            .get(line_start..offset)
            .map_or(0, |text| text.chars().count());
        (line + 1, column + 1)
    }

    /// `start..end` inside the text and widened to whole characters: a parser may point at the
    /// first byte of a character that takes several (found by the fuzz tests, `tests/it/fuzz.rs`).
    fn whole_characters(&self, start: usize, end: usize) -> std::ops::Range<usize> {
        let text = &self.text;
        let mut start = start.min(text.len());
        let mut end = end.clamp(start, text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        while !text.is_char_boundary(end) {
            end += 1;
        }
        start..end
    }

    /// Byte offset just past the end of a line (after its newline), or the end of the text.
    fn line_end(&self, line: usize) -> usize {
        self.line_starts()
            .get(line + 1)
            .copied()
            .unwrap_or(self.text.len())
    }
}

/// A problem as validation code reports it, before line numbers are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
    /// Another place that matters ("first used by machine `a`"): shown by its position.
    pub related: Option<(Span, String)>,
}

impl Problem {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Problem {
            span,
            message: message.into(),
            help: None,
            related: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn related(mut self, span: Span, note: impl Into<String>) -> Self {
        self.related = Some((span, note.into()));
        self
    }
}

/// The list every check appends to.
#[derive(Debug, Default)]
pub struct Problems {
    pub list: Vec<Problem>,
    /// Errors about a path on the command line, which has no source text to point into.
    pub unplaced: Vec<(PathBuf, String)>,
}

impl Problems {
    pub fn push(&mut self, problem: Problem) {
        self.list.push(problem);
    }

    pub fn error(&mut self, span: Span, message: impl Into<String>) {
        self.list.push(Problem::new(span, message));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.unplaced.is_empty()
    }
}

/// Another position a diagnostic refers to, e.g. the first definition of a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedLocation {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub note: String,
    span: std::ops::Range<usize>,
}

/// One error in the fleet files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about a path that could not be read at all.
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
    pub related: Option<RelatedLocation>,
    /// Byte range in the file, for the caret.
    pub span: std::ops::Range<usize>,
    /// Index into the sources kept by [`Diagnostics`]; `None` for errors outside any file.
    source: Option<usize>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every error found in a set of fleet files.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} in the fleet files", count_errors(.diagnostics.len()))]
pub struct Diagnostics {
    diagnostics: Vec<Diagnostic>,
    sources: Arc<Vec<SourceFile>>,
}

fn count_errors(count: usize) -> String {
    if count == 1 {
        "1 error".to_string()
    } else {
        format!("{count} errors")
    }
}

impl Diagnostics {
    /// Places every problem (sorted by file, then position) using the loaded sources.
    pub(crate) fn from_problems(problems: Problems, sources: Arc<Vec<SourceFile>>) -> Self {
        let mut diagnostics: Vec<Diagnostic> = problems
            .unplaced
            .into_iter()
            .map(unplaced_diagnostic)
            .collect();
        let mut list = problems.list;
        list.sort_by_key(|problem| (problem.span.file, problem.span.start, problem.span.end));
        list.dedup();
        diagnostics.extend(list.into_iter().map(|problem| place(problem, &sources)));
        Diagnostics {
            diagnostics,
            sources,
        }
    }

    pub fn len(&self) -> usize {
        self.diagnostics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter()
    }

    /// Every diagnostic drawn by miette (file:line:column, the source line, a caret under the
    /// spot, the help), then a final "N errors" line. Without colour, ASCII art (`^` carets) so
    /// that logs and CI output stay plain.
    pub fn render(&self, color: bool) -> String {
        let theme = if color {
            miette::GraphicalTheme::unicode()
        } else {
            miette::GraphicalTheme {
                characters: miette::ThemeCharacters::ascii(),
                styles: miette::ThemeStyles::none(),
            }
        };
        let handler = miette::GraphicalReportHandler::new_themed(theme)
            .with_width(100)
            .with_wrap_lines(false)
            .with_context_lines(1);
        let mut output = String::new();
        for diagnostic in &self.diagnostics {
            let source = diagnostic.source.and_then(|index| self.sources.get(index));
            let report = Rendered {
                diagnostic,
                source: source.map(|file| Window {
                    file,
                    name: display_path(&file.path),
                }),
            };
            if handler.render_report(&mut output, &report).is_err() {
                output.push_str(&format!("{diagnostic}\n"));
            }
            output.push('\n');
        }
        output.push_str(&count_errors(self.diagnostics.len()));
        output.push('\n');
        output
    }
}

fn display_path(path: &Path) -> String {
    path.display().to_string()
}

fn unplaced_diagnostic((file, message): (PathBuf, String)) -> Diagnostic {
    Diagnostic {
        file,
        line: 0,
        column: 0,
        message,
        help: None,
        related: None,
        span: 0..0,
        source: None,
    }
}

fn place(problem: Problem, sources: &[SourceFile]) -> Diagnostic {
    let index = problem.span.file as usize;
    let file = &sources[index];
    let span = file.whole_characters(problem.span.start as usize, problem.span.end as usize);
    let (line, column) = file.line_column(span.start);
    let related = problem.related.map(|(span, note)| {
        let other = &sources[span.file as usize];
        let span = other.whole_characters(span.start as usize, span.end as usize);
        let (line, column) = other.line_column(span.start);
        RelatedLocation {
            file: other.path.clone(),
            line,
            column,
            note,
            span,
        }
    });
    Diagnostic {
        file: file.path.clone(),
        line,
        column,
        message: problem.message,
        help: problem.help,
        related,
        span,
        source: Some(index),
    }
}

/// The adapter between a [`Diagnostic`] and miette's renderer.
struct Rendered<'d> {
    diagnostic: &'d Diagnostic,
    source: Option<Window<'d>>,
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diagnostic, f)
    }
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.is_none() {
            write!(f, "{}: ", self.diagnostic.file.display())?;
        }
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let related = self.diagnostic.related.as_ref().map(|related| {
            format!(
                "{} at {}:{}:{}",
                related.note,
                related.file.display(),
                related.line,
                related.column
            )
        });
        let text = match (&self.diagnostic.help, related) {
            (None, None) => return None,
            (Some(help), None) => help.clone(),
            (None, Some(related)) => related,
            (Some(help), Some(related)) => format!("{related}\n{help}"),
        };
        Some(Box::new(text))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source
            .as_ref()
            .map(|window| window as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.source.as_ref()?;
        let span = &self.diagnostic.span;
        let mut labels = vec![miette::LabeledSpan::new_primary_with_span(
            None,
            (span.start, span.len()),
        )];
        // A related place a few lines away gets a secondary label in the same snippet; farther
        // away, miette would draw it first, so the help line gives its position instead.
        if let Some(related) = &self.diagnostic.related {
            if related.file == self.diagnostic.file
                && related.line.abs_diff(self.diagnostic.line) <= 2
            {
                let label = Some(related.note.clone());
                labels.push(miette::LabeledSpan::new_with_span(
                    label,
                    (related.span.start, related.span.len()),
                ));
            }
        }
        Some(Box::new(labels.into_iter()))
    }
}

/// Serves miette only the lines around a span, found through the line index: miette's own
/// `SourceCode` for strings scans from the start of the text on every read, which is quadratic
/// for many errors in a 100,000-machine file.
struct Window<'f> {
    file: &'f SourceFile,
    name: String,
}

impl miette::SourceCode for Window<'_> {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let text = &self.file.text;
        let start = span.offset();
        let end = start + span.len();
        if end > text.len() {
            return Err(miette::MietteError::OutOfBounds);
        }
        let first_line = self
            .file
            .line_index(start)
            .saturating_sub(context_lines_before);
        let last_line_of_span = self.file.line_index(end.saturating_sub(1).max(start));
        let last_line =
            (last_line_of_span + context_lines_after).min(self.file.line_starts().len() - 1);
        // Like miette's own reader: without context before, the contents start at the span itself,
        // and their column is the span's (that is what the `[file:line:column]` header shows).
        let (window_start, column) = if context_lines_before == 0 {
            (start, self.file.line_column(start).1 - 1)
        } else {
            (self.file.line_starts()[first_line], 0)
        };
        let window_end = self.file.line_end(last_line).max(window_start);
        let data = &text.as_bytes()[window_start..window_end];
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            data,
            (window_start, window_end - window_start).into(),
            first_line,
            column,
            last_line - first_line + 1,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let file = SourceFile::new("a.toml".into(), "a = 1\nnamé = \"x\"\n".to_string());
        assert_eq!(file.line_column(0), (1, 1));
        assert_eq!(file.line_column(6), (2, 1));
        let quote = file.text.find('"').unwrap();
        assert_eq!(file.line_column(quote), (2, 8));
    }
}
