//! Conversions between the store's Rust types and the TEXT / BIGINT columns that `Any` carries.
//!
//! Decoding never panics: a value the model does not accept (an unknown status, bad JSON, a
//! malformed MAC) is reported as [`StoreError::Corrupt`] naming the column.

use super::StoreError;
use crate::model::{MacAddr, MachineName, PowerState, Status};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::str::FromStr;

/// Reads a column, naming it when it is missing or of the wrong type.
pub(crate) fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column)
        .map_err(|error| StoreError::Corrupt(format!("column `{column}`: {error}")))
}

/// Reads a 0/1 BIGINT column as a bool.
pub(crate) fn get_bool(row: &AnyRow, column: &str) -> Result<bool, StoreError> {
    Ok(get::<i64>(row, column)? != 0)
}

pub(crate) fn get_opt_bool(row: &AnyRow, column: &str) -> Result<Option<bool>, StoreError> {
    Ok(get::<Option<i64>>(row, column)?.map(|value| value != 0))
}

/// Reads a TEXT column through the type's `FromStr`.
pub(crate) fn get_parsed<T>(row: &AnyRow, column: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = get(row, column)?;
    parse(column, &text)
}

pub(crate) fn get_opt_parsed<T>(row: &AnyRow, column: &str) -> Result<Option<T>, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: Option<String> = get(row, column)?;
    text.map(|text| parse(column, &text)).transpose()
}

pub(crate) fn parse<T>(column: &str, text: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error| StoreError::Corrupt(format!("column `{column}` holds `{text}`: {error}")))
}

/// Reads a JSON TEXT column.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &str,
) -> Result<T, StoreError> {
    let text: String = get(row, column)?;
    serde_json::from_str(&text).map_err(|error| {
        StoreError::Corrupt(format!(
            "column `{column}` is not the JSON expected: {error}"
        ))
    })
}

/// Writes a value as JSON TEXT. Serialising our own types cannot fail; `null` is a safe fallback.
pub(crate) fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

pub(crate) fn bool_int(value: bool) -> i64 {
    i64::from(value)
}

pub(crate) fn status_text(status: Option<Status>) -> Option<&'static str> {
    status.map(Status::as_str)
}

pub(crate) fn get_status(row: &AnyRow, column: &str) -> Result<Status, StoreError> {
    get_parsed(row, column)
}

pub(crate) fn get_power(row: &AnyRow, column: &str) -> Result<PowerState, StoreError> {
    get_parsed(row, column)
}

pub(crate) fn get_name(row: &AnyRow, column: &str) -> Result<MachineName, StoreError> {
    get_parsed(row, column)
}

pub(crate) fn get_mac(row: &AnyRow, column: &str) -> Result<MacAddr, StoreError> {
    get_parsed(row, column)
}
