//! SQL identifiers from config: parsed with PostgreSQL's rules, always quoted when used.
//!
//! Config names tables and columns in SQL syntax: `public.blobs`, or
//! `"Sales"."Order Items"` for mixed case and special characters. Unquoted parts fold to
//! lower case, as PostgreSQL folds them. Whatever the user wrote, the SQL we send uses
//! [`quote_ident`] on the catalog's own spelling, so no config value is ever spliced
//! into SQL unquoted.

/// Quote an identifier the way `quote_ident()` does, but always: `a"b` → `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A schema-qualified relation name, as the catalog spells it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QualifiedName {
    /// Schema (namespace) name.
    pub schema: String,
    /// Relation name.
    pub name: String,
}

impl QualifiedName {
    /// `"schema"."name"`, ready for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Parse `schema.name` or `name` in SQL syntax. Without a schema, `public` is assumed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts = split_name(text)?;
        match parts.as_slice() {
            [name] => Ok(QualifiedName {
                schema: "public".into(),
                name: name.clone(),
            }),
            [schema, name] => Ok(QualifiedName {
                schema: schema.clone(),
                name: name.clone(),
            }),
            _ => Err(format!(
                "{text:?} is not a table name (expected schema.table)"
            )),
        }
    }
}

/// Displays the name as a user would type it: parts are quoted only when they must be.
impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// An identifier as a user would type it: bare when it is plain lower case, else quoted.
pub fn display_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// Parse one identifier (a column name) in SQL syntax.
pub fn parse_ident(text: &str) -> Result<String, String> {
    let parts = split_name(text)?;
    match parts.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "{text:?} is not a single identifier (quote it if it contains a dot)"
        )),
    }
}

/// Split a dotted SQL name into its parts, unquoting `"..."` parts (with `""` as an
/// escaped quote) and folding unquoted parts to lower case.
fn split_name(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("{text:?}: unterminated quoted identifier")),
                }
            }
            if part.is_empty() {
                return Err(format!("{text:?}: empty quoted identifier"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return Err(format!(
                        "{text:?}: unexpected {c:?} in an unquoted identifier (use double quotes)"
                    ));
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err(format!("{text:?}: empty identifier"));
            }
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(format!("{text:?}: unexpected {c:?} after identifier")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_every_identifier() {
        assert_eq!(quote_ident("blobs"), "\"blobs\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("Order Items"), "\"Order Items\"");
    }

    #[test]
    fn parses_sql_names() {
        let q = QualifiedName::parse("\"Sales\".\"Order Items\"").unwrap();
        assert_eq!(
            (q.schema.as_str(), q.name.as_str()),
            ("Sales", "Order Items")
        );
        assert_eq!(q.quoted(), "\"Sales\".\"Order Items\"");
        assert_eq!(q.to_string(), "\"Sales\".\"Order Items\"");
        assert_eq!(
            QualifiedName::parse("public.blobs").unwrap().to_string(),
            "public.blobs"
        );
        let q = QualifiedName::parse("Public.Blobs").unwrap();
        assert_eq!((q.schema.as_str(), q.name.as_str()), ("public", "blobs"));
        let q = QualifiedName::parse("blobs").unwrap();
        assert_eq!(q.schema, "public");
        let q = QualifiedName::parse("s.\"a.b\"\"c\"").unwrap();
        assert_eq!(q.name, "a.b\"c");
        assert_eq!(parse_ident("\"Payload MD5\"").unwrap(), "Payload MD5");
    }

    #[test]
    fn rejects_injection_and_garbage() {
        assert!(QualifiedName::parse("blobs; drop table x").is_err());
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse("\"open").is_err());
        assert!(QualifiedName::parse("").is_err());
        assert!(parse_ident("a.b").is_err());
        assert!(parse_ident("x)--").is_err());
    }
}
