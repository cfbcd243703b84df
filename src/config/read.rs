//! Typed access to a parsed TOML tree that reports every mismatch as a [`Problem`] and goes on.
//!
//! Each getter returns `None` after reporting, so section readers can read every key of a table
//! and collect every error rather than stop at the first (as serde would).

use super::diagnostics::{Problem, Problems};
use super::syntax::{Array, Item, Span, Table, Value};
use std::str::FromStr;

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

/// A table being read, with what to call it in messages ("machine `n1`") and where it starts.
#[derive(Clone, Copy)]
pub struct TableReader<'t, 'a> {
    pub table: Table<'t, 'a>,
    pub span: Span,
    context: &'t str,
    /// Appended to the context as "context `name`", only when a message needs it (formatting
    /// it for each of 100,000 machines up front would cost more than reading them).
    name: Option<&'t str>,
}

impl<'t, 'a> TableReader<'t, 'a> {
    pub fn new(table: Table<'t, 'a>, span: Span, context: &'t str) -> Self {
        TableReader {
            table,
            span,
            context,
            name: None,
        }
    }

    pub fn named(self, kind: &'t str, name: &'t str) -> Self {
        TableReader {
            context: kind,
            name: Some(name),
            ..self
        }
    }

    /// What to call this table in a message: "[policy]", "machine `n1`".
    pub fn context(&self) -> String {
        match self.name {
            Some(name) => format!("{} `{name}`", self.context),
            None => self.context.to_string(),
        }
    }

    pub fn from_item(
        item: &Item<'t, 'a>,
        context: &'t str,
        problems: &mut Problems,
    ) -> Option<Self> {
        match &item.value {
            Value::Table(table) => Some(TableReader::new(*table, item.span, context)),
            other => {
                problems.error(
                    item.span,
                    format!(
                        "expected a table for {context}, found {}",
                        other.type_name()
                    ),
                );
                None
            }
        }
    }

    pub fn item(&self, key: &str) -> Option<Item<'t, 'a>> {
        self.table.get(key).map(|entry| entry.item)
    }

    pub fn key_span(&self, key: &str) -> Option<Span> {
        self.table.get(key).map(|entry| entry.key_span)
    }

    /// Reports every key not in `known`, with a did-you-mean when one is close.
    pub fn check_keys(&self, known: &[&str], problems: &mut Problems) {
        for entry in self.table.entries() {
            if !known.contains(&entry.key) {
                problems.push(unknown_key(
                    entry.key,
                    entry.key_span,
                    &self.context(),
                    known,
                ));
            }
        }
    }

    pub fn required(&self, key: &str, problems: &mut Problems) -> Option<Item<'t, 'a>> {
        let item = self.item(key);
        if item.is_none() {
            problems.error(self.span, format!("{} has no `{key}`", self.context()));
        }
        item
    }

    pub fn string(&self, key: &str, problems: &mut Problems) -> Option<Spanned<&'t str>> {
        self.item(key)
            .and_then(|item| expect_string(&item, key, problems))
    }

    pub fn required_string(&self, key: &str, problems: &mut Problems) -> Option<Spanned<&'t str>> {
        self.required(key, problems)
            .and_then(|item| expect_string(&item, key, problems))
    }

    pub fn owned_string(&self, key: &str, problems: &mut Problems) -> Option<String> {
        self.string(key, problems)
            .map(|text| text.value.to_string())
    }

    pub fn boolean(&self, key: &str, problems: &mut Problems) -> Option<Spanned<bool>> {
        let item = self.item(key)?;
        match item.value {
            Value::Boolean(value) => Some(Spanned::new(value, item.span)),
            ref other => {
                problems.error(
                    item.span,
                    format!("`{key}` must be true or false, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A whole number within `minimum..=maximum`.
    pub fn integer(
        &self,
        key: &str,
        minimum: i64,
        maximum: i64,
        problems: &mut Problems,
    ) -> Option<Spanned<i64>> {
        let item = self.item(key)?;
        match item.value {
            Value::Integer(value) if (minimum..=maximum).contains(&value) => {
                Some(Spanned::new(value, item.span))
            }
            Value::Integer(value) => {
                problems.error(
                    item.span,
                    format!("`{key}` must be between {minimum} and {maximum}, found {value}"),
                );
                None
            }
            ref other => {
                problems.error(
                    item.span,
                    format!(
                        "`{key}` must be a whole number, found {}",
                        other.type_name()
                    ),
                );
                None
            }
        }
    }

    /// A string parsed with `FromStr`; the parse error becomes the message.
    pub fn parsed<T>(&self, key: &str, problems: &mut Problems) -> Option<Spanned<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let text = self.string(key, problems)?;
        parse_spanned(text, problems)
    }

    /// A string that must be one of `choices`.
    pub fn choice(
        &self,
        key: &str,
        choices: &[&str],
        problems: &mut Problems,
    ) -> Option<Spanned<&'t str>> {
        let text = self.string(key, problems)?;
        check_choice(key, &text, choices, problems).then_some(text)
    }

    pub fn array(&self, key: &str, problems: &mut Problems) -> Option<Array<'t, 'a>> {
        let item = self.item(key)?;
        match &item.value {
            Value::Array(array) => Some(*array),
            other => {
                problems.error(
                    item.span,
                    format!("`{key}` must be an array, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// An array of strings; a single string is accepted as a list of one.
    pub fn string_list(&self, key: &str, problems: &mut Problems) -> Vec<Spanned<&'t str>> {
        let Some(item) = self.item(key) else {
            return Vec::new();
        };
        match &item.value {
            Value::String(text) => vec![Spanned::new(*text, item.span)],
            Value::Array(array) => array
                .iter()
                .filter_map(|element| list_string(&element, key, problems))
                .collect(),
            other => {
                problems.error(
                    item.span,
                    format!(
                        "`{key}` must be a list of strings, found {}",
                        other.type_name()
                    ),
                );
                Vec::new()
            }
        }
    }

    /// A sub-table, as a reader named `context`.
    pub fn table(
        &self,
        key: &str,
        context: &'t str,
        problems: &mut Problems,
    ) -> Option<TableReader<'t, 'a>> {
        self.item(key)
            .and_then(|item| TableReader::from_item(&item, context, problems))
    }
}

pub fn expect_string<'t>(
    item: &Item<'t, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<Spanned<&'t str>> {
    match item.value {
        Value::String(text) => Some(Spanned::new(text, item.span)),
        other => {
            problems.error(
                item.span,
                format!("`{key}` must be a string, found {}", other.type_name()),
            );
            None
        }
    }
}

fn list_string<'t>(
    item: &Item<'t, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<Spanned<&'t str>> {
    match item.value {
        Value::String(text) => Some(Spanned::new(text, item.span)),
        other => {
            problems.error(
                item.span,
                format!("`{key}` must hold strings, found {}", other.type_name()),
            );
            None
        }
    }
}

/// An IP address, with a message that names the value (std's error does not).
pub fn ip_address(
    text: Spanned<&str>,
    problems: &mut Problems,
) -> Option<Spanned<std::net::IpAddr>> {
    match text.value.parse() {
        Ok(address) => Some(Spanned::new(address, text.span)),
        Err(_) => {
            problems.error(text.span, format!("`{}` is not an IP address", text.value));
            None
        }
    }
}

pub fn parse_spanned<T>(text: Spanned<&str>, problems: &mut Problems) -> Option<Spanned<T>>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match text.value.parse::<T>() {
        Ok(value) => Some(Spanned::new(value, text.span)),
        Err(error) => {
            problems.error(text.span, error.to_string());
            None
        }
    }
}

pub fn check_choice(
    key: &str,
    text: &Spanned<&str>,
    choices: &[&str],
    problems: &mut Problems,
) -> bool {
    if choices.contains(&text.value) {
        return true;
    }
    let message = format!("`{}` is not a valid {key}", text.value);
    problems.push(with_suggestion(
        Problem::new(text.span, message),
        text.value,
        choices,
    ));
    false
}

fn unknown_key(key: &str, span: Span, context: &str, known: &[&str]) -> Problem {
    with_suggestion(
        Problem::new(span, format!("unknown key `{key}` in {context}")),
        key,
        known,
    )
}

/// Adds "did you mean `x`?" when a candidate is close, else the list of valid choices.
pub fn with_suggestion(problem: Problem, written: &str, candidates: &[&str]) -> Problem {
    match closest(written, candidates.iter().copied()) {
        Some(best) => problem.help(format!("did you mean `{best}`?")),
        None if candidates.len() <= 12 => {
            problem.help(format!("expected one of: {}", candidates.join(", ")))
        }
        None => problem,
    }
}

/// The candidate most similar to `written`, if any is similar enough to be a likely typo.
pub fn closest<'c>(written: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .map(|candidate| (strsim::jaro_winkler(written, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|left, right| left.0.total_cmp(&right.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        assert_eq!(
            closest("profle", ["profile", "power"].into_iter()),
            Some("profile")
        );
        assert_eq!(closest("zzz", ["profile", "power"].into_iter()), None);
    }
}
