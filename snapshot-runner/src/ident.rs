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

/// The keywords that PostgreSQL's `quote_ident()` quotes: every keyword that is not
/// unreserved (`SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'` on PostgreSQL
/// 15), plus those later majors added (16: `system_user`, the `json_*` constructors;
/// 17: `json`, `json_exists`, `json_query`, `json_table`, `json_value`, `merge_action`).
/// Sorted, for a binary search.
const NOT_UNRESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// An identifier as a user would type it, and as `quote_ident()` writes it: bare when
/// it is plain lower case and not a keyword that needs quoting, else quoted (so a
/// `GRANT … TO "user"` or `ON SCHEMA "Sales"` suggested to the operator runs as is).
pub fn display_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && NOT_UNRESERVED.binary_search(&name).is_err();
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
    fn displays_reserved_words_and_mixed_case_quoted() {
        assert!(
            NOT_UNRESERVED.windows(2).all(|w| w[0] < w[1]),
            "sorted, for binary_search"
        );
        for (name, shown) in [
            ("user", "\"user\""),
            ("order", "\"order\""),
            ("select", "\"select\""),
            ("current_user", "\"current_user\""),
            ("int", "\"int\""),
            ("Maint", "\"Maint\""),
            ("app maint", "\"app maint\""),
            ("1st", "\"1st\""),
            ("pgmaint", "pgmaint"),
            // Unreserved keywords need no quotes, as quote_ident() says.
            ("name", "name"),
            ("data", "data"),
        ] {
            assert_eq!(display_ident(name), shown, "{name}");
        }
        let q = QualifiedName {
            schema: "order".into(),
            name: "Items".into(),
        };
        assert_eq!(q.to_string(), "\"order\".\"Items\"");
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
