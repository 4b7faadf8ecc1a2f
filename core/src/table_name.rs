//! Table names as users write them in SQL: `--table` and `source.tables`.
//!
//! PostgreSQL: a quoted part (`"Invoice Items"`, with `""` for a quote) is taken exactly, dots
//! included; an unquoted part is folded to lower case. MySQL/MariaDB: backticks quote the same
//! way (`` `a.b` ``, with ``` `` ``` for a backtick); case is left to the server's own rules
//! (`lower_case_table_names`), so nothing is folded here. Errors quote the name as written.

use crate::change::TableId;
use crate::error::{Error, Result};

/// Which SQL's quoting rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

impl Dialect {
    fn quote(self) -> char {
        match self {
            Dialect::Postgres => '"',
            Dialect::Mysql => '`',
        }
    }

    /// Quotes one identifier so that this dialect reads it back exactly.
    pub fn quote_ident(self, s: &str) -> String {
        let q = self.quote();
        format!("{q}{}{q}", s.replace(q, &format!("{q}{q}")))
    }

    /// `schema.table` with both parts quoted.
    pub fn quote_table(self, t: &TableId) -> String {
        format!(
            "{}.{}",
            self.quote_ident(&t.schema),
            self.quote_ident(&t.name)
        )
    }
}

/// One part of a written name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePart {
    /// The identifier: exact when quoted, folded (PostgreSQL) when not.
    pub ident: String,
    pub quoted: bool,
}

/// A table name as the user wrote it, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The text as written, for error messages.
    pub written: String,
    /// `None`: the default schema (PostgreSQL `public`) or database (MySQL: the URL's).
    pub schema: Option<NamePart>,
    pub name: NamePart,
}

impl TableName {
    /// Parses `name`, `schema.name`, with quoted parts. Refuses empty parts, unbalanced quotes,
    /// and more than two parts.
    pub fn parse(written: &str, dialect: Dialect) -> Result<TableName> {
        let q = dialect.quote();
        let bad = |why: &str| {
            Error::config(format!(
                "table name {written:?} is not valid: {why} (write schema.table; quote a part with {q}...{q} to keep its case, spaces or dots)"
            ))
        };
        let mut parts: Vec<NamePart> = Vec::new();
        let mut chars = written.trim().chars().peekable();
        loop {
            let mut ident = String::new();
            let quoted = chars.peek() == Some(&q);
            if quoted {
                chars.next();
                loop {
                    match chars.next() {
                        Some(c) if c == q => {
                            if chars.peek() == Some(&q) {
                                chars.next();
                                ident.push(q);
                            } else {
                                break;
                            }
                        }
                        Some(c) => ident.push(c),
                        None => return Err(bad("a quote is not closed")),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == q {
                        return Err(bad("a quote starts inside an unquoted part"));
                    }
                    ident.push(c);
                    chars.next();
                }
                let trimmed = ident.trim();
                if trimmed.is_empty() {
                    return Err(bad("a part is empty"));
                }
                ident = match dialect {
                    // PostgreSQL folds unquoted identifiers to lower case (ASCII, as the
                    // server does for UTF-8 databases).
                    Dialect::Postgres => trimmed.to_ascii_lowercase(),
                    Dialect::Mysql => trimmed.to_string(),
                };
            }
            if quoted && ident.is_empty() {
                return Err(bad("a quoted part is empty"));
            }
            parts.push(NamePart { ident, quoted });
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(bad("text follows a quoted part")),
            }
        }
        let written = written.trim().to_string();
        match parts.len() {
            1 => Ok(TableName {
                written,
                schema: None,
                name: parts.remove(0),
            }),
            2 => {
                let name = parts.remove(1);
                Ok(TableName {
                    written,
                    schema: Some(parts.remove(0)),
                    name,
                })
            }
            _ => Err(bad("it has more than two parts")),
        }
    }

    /// The table this name means, with `default_schema` for a bare name.
    pub fn id(&self, default_schema: &str) -> TableId {
        TableId::new(
            self.schema
                .as_ref()
                .map_or(default_schema, |s| s.ident.as_str()),
            &self.name.ident,
        )
    }

    /// Whether any part was unquoted (so PostgreSQL folded it).
    pub fn has_unquoted(&self) -> bool {
        !self.name.quoted || self.schema.as_ref().is_some_and(|s| !s.quoted)
    }
}

/// Parses every name of a table list.
pub fn parse_all(written: &[String], dialect: Dialect) -> Result<Vec<TableName>> {
    written
        .iter()
        .map(|w| TableName::parse(w, dialect))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> TableId {
        TableName::parse(s, Dialect::Postgres).unwrap().id("public")
    }

    #[test]
    fn postgres_quoted_parts_are_exact_and_unquoted_parts_fold() {
        assert_eq!(
            pg("\"Billing\".\"Invoice Items\""),
            TableId::new("Billing", "Invoice Items")
        );
        assert_eq!(pg("\"a.b\".\"c\"\"d\""), TableId::new("a.b", "c\"d"));
        assert_eq!(pg("Sales.Orders"), TableId::new("sales", "orders"));
        assert_eq!(pg("Orders"), TableId::new("public", "orders"));
        assert_eq!(pg("\"Orders\""), TableId::new("public", "Orders"));
        assert_eq!(pg("sales.\"Orders\""), TableId::new("sales", "Orders"));
        assert_eq!(pg(" public.t "), TableId::new("public", "t"));
        let n = TableName::parse("Billing.\"X\"", Dialect::Postgres).unwrap();
        assert!(n.has_unquoted());
        assert!(
            !TableName::parse("\"B\".\"X\"", Dialect::Postgres)
                .unwrap()
                .has_unquoted()
        );
    }

    #[test]
    fn mysql_backticks_quote_and_case_is_left_to_the_server() {
        let my = |s: &str| TableName::parse(s, Dialect::Mysql).unwrap().id("app");
        assert_eq!(my("Shop.Orders"), TableId::new("Shop", "Orders"));
        assert_eq!(my("`a.b`.`c``d`"), TableId::new("a.b", "c`d"));
        assert_eq!(my("orders"), TableId::new("app", "orders"));
        // A double quote is an ordinary character in a MySQL identifier here.
        assert_eq!(my("`x\"y`"), TableId::new("app", "x\"y"));
    }

    #[test]
    fn malformed_names_are_clear_errors_quoting_the_input() {
        for bad in ["", "a.", ".a", "\"a", "\"\".t", "a.b.c", "\"a\"x", "a\"b\""] {
            let e = TableName::parse(bad, Dialect::Postgres).unwrap_err();
            assert!(e.to_string().contains("is not valid"), "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn quoting_round_trips() {
        let t = TableId::new("a.b", "c\"d");
        let q = Dialect::Postgres.quote_table(&t);
        assert_eq!(q, "\"a.b\".\"c\"\"d\"");
        assert_eq!(pg(&q), t);
        let t = TableId::new("Sh`op", "O.rders");
        let q = Dialect::Mysql.quote_table(&t);
        assert_eq!(TableName::parse(&q, Dialect::Mysql).unwrap().id("x"), t);
    }
}
