//! TOML syntax: the `toml-spanner` parser, seen through small views that put the file's index
//! into every span.
//!
//! Why `toml-spanner`: it passes the whole official TOML 1.1 suite (toml-test; our own parser
//! accepted 78 of its invalid documents and refused 9 valid ones), it is fuzzed and maintained,
//! it keeps the span of every key and value, it recovers after a syntax error (so every error of
//! a file is reported at once), and it is fast and small: a 100,000-machine fleet file (30 MB)
//! parses in well under a second into an arena of about 170 MB, where `toml` takes 4 s and 1 GB.
//! The conformance test (`tests/it/config.rs`, `the_official_toml_suite`) runs the suite through
//! [`crate::config::load`].
//!
//! The views ([`Item`], [`Value`], [`Array`], [`Table`]) are `Copy` handles onto the parsed tree
//! that give spans as [`Span`] (file, start, end) and values as the reader wants them.

use std::fmt;

/// Where something is: a file (an index into the loader's list of sources) and a byte range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: u32,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: u32, start: usize, end: usize) -> Self {
        Span {
            file,
            start: start as u32,
            end: end as u32,
        }
    }

    fn of(place: Place<'_>, span: toml_spanner::Span) -> Self {
        Span {
            file: place.file,
            start: span.start,
            end: span.end,
        }
    }
}

/// What every view carries: the file's index (for spans) and its text (for header spans).
#[derive(Clone, Copy)]
struct Place<'a> {
    file: u32,
    text: &'a str,
}

impl fmt::Debug for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file {}", self.file)
    }
}

/// A value and where it was written. For a table under a `[header]` or `[[header]]`, the span is
/// the header's (not the whole body's), so that messages point at the header line.
#[derive(Debug, Clone, Copy)]
pub struct Item<'t, 'a> {
    pub value: Value<'t, 'a>,
    pub span: Span,
}

impl<'t, 'a> Item<'t, 'a> {
    fn new(raw: &'t toml_spanner::Item<'a>, place: Place<'a>) -> Self {
        use toml_spanner::Value as Raw;
        let mut span = Span::of(place, raw.span());
        let value = match raw.value() {
            Raw::String(text) => Value::String(text),
            // The parser refuses integers beyond 64 bits, as TOML asks.
            Raw::Integer(number) => Value::Integer(number.as_i64().unwrap_or_default()),
            Raw::Float(number) => Value::Float(*number),
            Raw::Boolean(flag) => Value::Boolean(*flag),
            Raw::DateTime(datetime) => Value::Datetime(datetime),
            Raw::Array(array) => Value::Array(Array {
                raw: Some(array),
                place,
            }),
            Raw::Table(table) => {
                if matches!(table.style(), toml_spanner::TableStyle::Header) {
                    let header = raw.span().extract_header_span(place.text.as_bytes());
                    span = Span::of(place, header);
                }
                Value::Table(Table { raw: table, place })
            }
        };
        Item { value, span }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Value<'t, 'a> {
    String(&'t str),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(&'t toml_spanner::DateTime),
    Array(Array<'t, 'a>),
    Table(Table<'t, 'a>),
}

impl Value<'_, '_> {
    /// The TOML type name, for "expected a string, found an integer".
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// An array (of values, or of tables from `[[name]]` headers); the default is empty.
#[derive(Debug, Clone, Copy)]
pub struct Array<'t, 'a> {
    raw: Option<&'t toml_spanner::Array<'a>>,
    place: Place<'a>,
}

impl Default for Array<'_, '_> {
    fn default() -> Self {
        Array {
            raw: None,
            place: Place { file: 0, text: "" },
        }
    }
}

impl<'t, 'a> Array<'t, 'a> {
    pub fn iter(&self) -> impl Iterator<Item = Item<'t, 'a>> + 't {
        let place = self.place;
        self.raw
            .into_iter()
            .flat_map(|raw| raw.iter())
            .map(move |raw| Item::new(raw, place))
    }
}

/// A key of a table, where it was written, and its value.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'t, 'a> {
    pub key: &'a str,
    pub key_span: Span,
    pub item: Item<'t, 'a>,
}

#[derive(Debug, Clone, Copy)]
pub struct Table<'t, 'a> {
    raw: &'t toml_spanner::Table<'a>,
    place: Place<'a>,
}

impl<'t, 'a> Table<'t, 'a> {
    pub fn get(&self, key: &str) -> Option<Entry<'t, 'a>> {
        let (key, item) = self.raw.get_key_value(key)?;
        Some(self.entry(key, item))
    }

    /// The entries in the order they were written.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'t, 'a>> + 't {
        let this = *self;
        self.raw
            .iter()
            .map(move |(key, item)| this.entry(key, item))
    }

    fn entry(
        &self,
        key: &toml_spanner::Key<'a>,
        item: &'t toml_spanner::Item<'a>,
    ) -> Entry<'t, 'a> {
        Entry {
            key: key.name,
            key_span: Span::of(self.place, key.span),
            item: Item::new(item, self.place),
        }
    }
}

/// A table as toml-test's tagged JSON: every scalar becomes `{"type": T, "value": "text"}`.
pub fn tagged_json(table: Table<'_, '_>) -> serde_json::Value {
    table
        .entries()
        .map(|entry| (entry.key.to_string(), tagged_value(entry.item.value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn tagged_value(value: Value<'_, '_>) -> serde_json::Value {
    let tagged = |kind: &str, text: String| serde_json::json!({ "type": kind, "value": text });
    match value {
        Value::String(text) => tagged("string", text.to_string()),
        Value::Integer(number) => tagged("integer", number.to_string()),
        Value::Float(number) if number.is_nan() => tagged("float", "nan".into()),
        Value::Float(number) if number.is_infinite() => {
            tagged("float", if number > 0.0 { "inf" } else { "-inf" }.into())
        }
        Value::Float(number) => tagged("float", format!("{number:?}")),
        Value::Boolean(flag) => tagged("bool", flag.to_string()),
        Value::Datetime(datetime) => {
            let kind = match (datetime.date(), datetime.time(), datetime.offset()) {
                (Some(_), Some(_), Some(_)) => "datetime",
                (Some(_), Some(_), None) => "datetime-local",
                (Some(_), None, _) => "date-local",
                _ => "time-local",
            };
            let mut buffer = std::mem::MaybeUninit::uninit();
            tagged(kind, datetime.format(&mut buffer).to_string())
        }
        Value::Array(array) => array.iter().map(|item| tagged_value(item.value)).collect(),
        Value::Table(table) => tagged_json(table),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
    /// The first definition, for a key or table defined twice.
    pub related: Option<(Span, String)>,
}

/// Parses one document and hands its root table to `read`; or returns every syntax error found
/// (the parser resumes at the next statement after each, up to 25).
pub fn parse<R>(
    text: &str,
    file: u32,
    read: impl for<'t, 'a> FnOnce(Table<'t, 'a>) -> R,
) -> Result<R, Vec<SyntaxError>> {
    let arena = toml_spanner::Arena::new();
    let document = toml_spanner::parse_recoverable(text, &arena);
    let place = Place { file, text };
    let errors = document.errors();
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|error| syntax_error(error, text, place))
            .collect());
    }
    Ok(read(Table {
        raw: document.table(),
        place,
    }))
}

/// The parser's error in the words of fleet's other messages where we have them.
fn syntax_error(error: &toml_spanner::Error, text: &str, place: Place<'_>) -> SyntaxError {
    use toml_spanner::ErrorKind;
    let mut span = error.span();
    let found = describe(text, span.start as usize);
    let message = match error.kind() {
        ErrorKind::UnterminatedString(delimiter) => {
            // Pointed at the end of the line; the opening quote is the more helpful place.
            if let Some(open) = opening_quote(text, span.start as usize, delimiter) {
                span = toml_spanner::Span::new(open as u32, open as u32 + 1);
            }
            "this string is never closed".to_string()
        }
        ErrorKind::UnexpectedEof => "unexpected end of the file".to_string(),
        ErrorKind::Wanted { expected, .. } if *expected == "an equals" => {
            format!("expected `=` after the key, found {found}")
        }
        ErrorKind::Wanted { expected, .. } => format!("expected {expected}, found {found}"),
        ErrorKind::Unexpected('\r') => "a carriage return must be followed by a newline".into(),
        // Raised only where a value must start.
        ErrorKind::Unexpected(_) => format!("expected a value, found {found}"),
        _ => error.message(text),
    };
    SyntaxError {
        span: Span::of(place, span),
        message,
        related: error
            .secondary_label()
            .map(|(first, label)| (Span::of(place, first), label)),
    }
}

/// The opening quote of a one-line string left open at `end` (the end of its line).
fn opening_quote(text: &str, end: usize, delimiter: char) -> Option<usize> {
    // At the end of the file the string may be a multi-line one: leave the parser's place.
    if !matches!(text.as_bytes().get(end), Some(b'\n' | b'\r')) {
        return None;
    }
    let line = &text.as_bytes()[text[..end].rfind('\n').map_or(0, |at| at + 1)..end];
    let line_start = end - line.len();
    let mut at = line.len();
    while at > 0 {
        at -= 1;
        let escaped = delimiter == '"'
            && line[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1;
        if line[at] == delimiter as u8 && !escaped {
            return Some(line_start + at);
        }
    }
    None
}

/// "`,`", "the end of the line", "the end of the file": what stands at `offset`.
fn describe(text: &str, offset: usize) -> String {
    match text.get(offset..).and_then(|rest| rest.chars().next()) {
        None => "the end of the file".to_string(),
        Some('\n') | Some('\r') => "the end of the line".to_string(),
        Some(c) if c.is_control() => format!("the control character {c:?}"),
        Some(c) => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_error(text: &str) -> SyntaxError {
        parse(text, 0, |_| ()).expect_err(text).remove(0)
    }

    #[test]
    fn values_of_every_kind_and_their_spans() {
        let text = "a = 'x'\nb = \"y\\n\"\nc = 1_000\nd = 0x10\ne = 1.5e3\nf = true\ng = [1, 2,]\nh = { i = 1 }\nj = 1979-05-27 07:32:00Z\n[[machine]]\nname = \"n1\"\n";
        parse(text, 3, |root| {
            let value = |key: &str| root.get(key).unwrap().item.value;
            assert!(matches!(value("a"), Value::String("x")));
            assert!(matches!(value("b"), Value::String("y\n")));
            assert!(matches!(value("c"), Value::Integer(1000)));
            assert!(matches!(value("d"), Value::Integer(16)));
            assert!(matches!(value("e"), Value::Float(f) if f == 1500.0));
            assert!(matches!(value("f"), Value::Boolean(true)));
            assert!(matches!(value("g"), Value::Array(a) if a.iter().count() == 2));
            assert!(matches!(value("h"), Value::Table(_)));
            assert!(matches!(value("j"), Value::Datetime(_)));
            let Value::Array(machines) = value("machine") else {
                panic!()
            };
            let element = machines.iter().next().unwrap();
            let slice = |span: Span| &text[span.start as usize..span.end as usize];
            assert_eq!(slice(element.span), "[[machine]]", "a header's span");
            assert_eq!(element.span.file, 3);
            let Value::Table(machine) = element.value else {
                panic!()
            };
            let name = machine.get("name").unwrap();
            assert_eq!(slice(name.key_span), "name");
            assert_eq!(slice(name.item.span), "\"n1\"");
        })
        .unwrap();
    }

    #[test]
    fn redefinitions_are_errors_that_point_at_the_first() {
        let error = first_error("a = 1\na = 2\n");
        assert!(error.message.contains("`a`"), "{error:?}");
        assert_eq!(error.span.start, 6);
        assert_eq!(error.related.unwrap().0.start, 0);
        first_error("[a]\n[a]\n");
        first_error("a = { b = 1 }\n[a.c]\n");
        first_error("a.b = 1\n[a]\n");
    }

    #[test]
    fn every_syntax_error_is_reported_with_its_position() {
        let errors = parse("a = \nb = 'ok'\nc = \"open\nd 1\n", 0, |_| ()).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].span.start, 4);
    }

    /// A sub-table may come anywhere after its `[[machine]]`, as TOML allows.
    #[test]
    fn sub_tables_of_an_array_element_may_come_late() {
        let text = "[[machine]]\nname = 'a'\n[policy]\n[machine.power]\ntype = 'manual'\n";
        parse(text, 0, |root| {
            let Some(Entry {
                item:
                    Item {
                        value: Value::Array(machines),
                        ..
                    },
                ..
            }) = root.get("machine")
            else {
                panic!()
            };
            let Value::Table(machine) = machines.iter().next().unwrap().value else {
                panic!()
            };
            assert!(machine.get("power").is_some());
        })
        .unwrap();
    }
}
