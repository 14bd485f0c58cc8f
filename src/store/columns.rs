//! How the shared values of [`crate::domain`] sit in a column: a name, a kind and a token hash
//! as their text, a message id as its integer, a time as its fixed-width text. These are the
//! texts the schema has always held, so typing them changed nothing in the database.
//!
//! A stored value that does not read back as its type (a hand-edited row) is an error of the
//! row, never silently another value.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::domain::{InstanceName, MessageId, MessageKind, Timestamp, TokenHash};

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_text()))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Timestamp::parse(text).ok_or_else(|| unreadable("a time", text))
    }
}

impl ToSql for InstanceName {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for InstanceName {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        InstanceName::parse(text).ok_or_else(|| unreadable("an instance name", text))
    }
}

impl ToSql for MessageKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for MessageKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        MessageKind::parse(text).ok_or_else(|| unreadable("a message kind", text))
    }
}

impl ToSql for MessageId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl FromSql for MessageId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(MessageId)
    }
}

impl ToSql for TokenHash {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for TokenHash {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        String::column_result(value).map(TokenHash::from_stored)
    }
}

fn unreadable(what: &str, text: &str) -> FromSqlError {
    FromSqlError::Other(format!("the stored `{text}` is not {what}").into())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    #[test]
    fn every_value_is_stored_as_the_text_or_integer_the_schema_always_held() {
        let conn = Connection::open_in_memory().unwrap();
        let at = Timestamp::parse("2026-12-01T10:00:00.5+02:00").unwrap();
        let stored: (String, String, String, i64) = conn
            .query_row(
                "SELECT ?1, ?2, ?3, ?4",
                rusqlite::params![
                    at,
                    InstanceName::parse("alice").unwrap(),
                    MessageKind::Broadcast,
                    MessageId(7)
                ],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .unwrap();
        let expected = (
            "2026-12-01T08:00:00.500Z".to_owned(),
            "alice".to_owned(),
            "broadcast".to_owned(),
            7,
        );
        assert_eq!(stored, expected);
        let back: Timestamp = conn
            .query_row("SELECT ?1", [&stored.0], |row| row.get(0))
            .unwrap();
        assert_eq!(back, at);
    }

    #[test]
    fn a_stored_value_that_is_not_its_type_is_an_error() {
        let conn = Connection::open_in_memory().unwrap();
        let read = |sql: &str| conn.query_row(sql, [], |row| row.get::<_, Timestamp>(0));
        assert!(read("SELECT 'yesterday'").is_err());
        let name = conn.query_row("SELECT 'bad name'", [], |row| row.get::<_, InstanceName>(0));
        assert!(name.is_err());
    }
}
