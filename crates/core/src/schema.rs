//! Schema changes of a distributed table, carried to its shard tables.
//!
//! The catalog remembers the columns the shard tables have; after an
//! `ALTER FOREIGN TABLE`, [`plan_change`] compares them with the foreign
//! table's columns and answers with the SQLite statements that bring every
//! shard table to the new schema, or with why the change cannot be carried
//! out (then the ALTER fails and nothing changes anywhere). Values never
//! appear in the statements: a new column's default reaches existing rows as
//! an argument.
//!
//! SQLite alters a table in place only to add, drop and rename columns;
//! anything else (a column becoming NOT NULL, or losing it) rebuilds the
//! shard table: create the new table, copy the rows, drop the old one,
//! rename the new one, recreate its indexes, all inside the statement's
//! remote transaction.

use crate::remote_sql::{
    create_index_sql, create_table_sql, quote_ident, ShardIndexDef, REFRESH_SCHEMA_SQL,
};
use crate::types::ColumnType;
use conductor_hrana::{Stmt, Value};
use serde::{Deserialize, Serialize};

/// A column as the shard tables have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardColumn {
    pub attnum: i16,
    pub name: String,
    /// The Postgres type name (`ColumnType::pg_name`).
    pub ty: String,
    /// Postgres' type modifier (varchar length, numeric precision), -1 if none.
    pub typmod: i32,
    pub not_null: bool,
}

impl ShardColumn {
    pub fn column_type(&self) -> Option<ColumnType> {
        ColumnType::from_pg_name(&self.ty)
    }
}

/// A column the foreign table has now, with the value existing rows take
/// when it is new (its constant DEFAULT, as the node stores it; None: no
/// default or NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct NewColumn {
    pub column: ShardColumn,
    pub default: Option<Value>,
    /// The default is not a constant (volatile or stable): existing rows
    /// cannot be given one value.
    pub default_not_constant: bool,
}

/// What a change does, for the catalog and messages.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaChange {
    /// Renamed columns (old name, new name).
    pub renames: Vec<(String, String)>,
    /// Statements every shard table runs, in order; `{table}` stands for
    /// the shard table's name (quoted by [`SchemaChange::for_table`]).
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// SQL with `\u{0}T` where the quoted shard table name goes, and args.
    Sql(String, Vec<Value>),
    /// Rebuild: (new columns, primary key, indexes, copy list: for each new
    /// column, the old column it copies or the argument it takes).
    Rebuild {
        columns: Vec<(String, ColumnType, bool)>,
        primary_key: Vec<String>,
        indexes: Vec<ShardIndexDef>,
        sources: Vec<Source>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Column(String),
    Value(Value),
}

const TABLE: &str = "\u{0}T";

impl SchemaChange {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The statements for one shard table (after a read that refreshes the
    /// connection's view of the schema).
    pub fn for_table(&self, table: &str) -> Vec<Stmt> {
        let quoted = quote_ident(table);
        let mut out = vec![Stmt::new(REFRESH_SCHEMA_SQL, vec![])];
        for step in &self.steps {
            match step {
                Step::Sql(sql, args) => {
                    out.push(Stmt::new(sql.replace(TABLE, &quoted), args.clone()))
                }
                Step::Rebuild {
                    columns,
                    primary_key,
                    indexes,
                    sources,
                } => {
                    let temp = format!("{table}__conductor_rebuild");
                    let cols: Vec<(&str, ColumnType, bool)> = columns
                        .iter()
                        .map(|(n, t, nn)| (n.as_str(), *t, *nn))
                        .collect();
                    let pk: Vec<&str> = primary_key.iter().map(String::as_str).collect();
                    out.push(Stmt::new(create_table_sql(&temp, &cols, &pk), vec![]));
                    let mut select = Vec::new();
                    let mut args = Vec::new();
                    for s in sources {
                        match s {
                            Source::Column(c) => {
                                select.push(format!("{quoted}.{}", quote_ident(c)))
                            }
                            Source::Value(v) => {
                                select.push("?".to_string());
                                args.push(v.clone());
                            }
                        }
                    }
                    let names: Vec<String> =
                        columns.iter().map(|(n, _, _)| quote_ident(n)).collect();
                    out.push(Stmt::new(
                        format!(
                            "INSERT INTO {} ({}) SELECT {} FROM {quoted}",
                            quote_ident(&temp),
                            names.join(", "),
                            select.join(", ")
                        ),
                        args,
                    ));
                    out.push(Stmt::new(format!("DROP TABLE {quoted}"), vec![]));
                    out.push(Stmt::new(
                        format!("ALTER TABLE {} RENAME TO {quoted}", quote_ident(&temp)),
                        vec![],
                    ));
                    for index in indexes {
                        out.push(Stmt::new(create_index_sql(table, index), vec![]));
                    }
                }
            }
        }
        out
    }
}

/// Why a change cannot be carried to the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a column of type `from` (modifier `from_mod`) may become `to`
/// without any stored value changing or becoming invalid.
fn retype_allowed(from: ColumnType, from_mod: i32, to: ColumnType, to_mod: i32) -> bool {
    use ColumnType::*;
    let widens = |a: i32, b: i32| b == -1 || (a != -1 && b >= a);
    match (from, to) {
        (a, b) if a == b => {
            from_mod == to_mod
                || (matches!(a, Varchar) && widens(from_mod, to_mod))
                || (matches!(a, Numeric) && to_mod == -1)
        }
        (Int2, Int4 | Int8) | (Int4, Int8) | (Float4, Float8) => true,
        (Varchar, Text) => true,
        (Text, Varchar) => to_mod == -1,
        _ => false,
    }
}

/// The statements that take every shard table from `old` to `new`.
/// `key` and `primary_key` are attribute numbers; `indexes` are the shard
/// indexes (with the column names as they are before the change).
pub fn plan_change(
    old: &[ShardColumn],
    new: &[NewColumn],
    key: i16,
    primary_key: &[i16],
    indexes: &[ShardIndexDef],
) -> Result<SchemaChange, Refusal> {
    let find_old = |attnum: i16| old.iter().find(|c| c.attnum == attnum);
    let find_new = |attnum: i16| new.iter().find(|c| c.column.attnum == attnum);
    let mut drops = Vec::new();
    let mut renames = Vec::new();
    let mut adds = Vec::new();
    let mut rebuild = false;

    for o in old {
        if find_new(o.attnum).is_some() {
            continue;
        }
        if o.attnum == key {
            return Err(Refusal(format!(
                "cannot drop the shard key column \"{}\"",
                o.name
            )));
        }
        if primary_key.contains(&o.attnum) {
            return Err(Refusal(format!(
                "cannot drop column \"{}\": it is part of the table's primary_key option",
                o.name
            )));
        }
        if let Some(ix) = indexes.iter().find(|ix| ix.columns.contains(&o.name)) {
            return Err(Refusal(format!(
                "cannot drop column \"{}\": shard index \"{}\" uses it (drop it with conductor.drop_shard_index first)",
                o.name, ix.name
            )));
        }
        drops.push(o.name.clone());
    }
    for n in new {
        let c = &n.column;
        let ty = c.column_type().ok_or_else(|| {
            Refusal(format!(
                "column \"{}\" has type {}, which conductor cannot store",
                c.name, c.ty
            ))
        })?;
        match find_old(c.attnum) {
            None => {
                if n.default_not_constant {
                    return Err(Refusal(format!(
                        "column \"{}\" is added with a default that is not a constant; existing rows on the shards cannot be given it",
                        c.name
                    )));
                }
                if c.not_null && n.default.is_none() {
                    return Err(Refusal(format!(
                        "column \"{}\" is added NOT NULL without a default; the existing rows on the shards would violate it",
                        c.name
                    )));
                }
                rebuild |= c.not_null;
                adds.push((c.clone(), ty, n.default.clone()));
            }
            Some(o) => {
                if o.name != c.name {
                    renames.push((o.name.clone(), c.name.clone()));
                }
                let old_ty = o
                    .column_type()
                    .ok_or_else(|| Refusal(format!("unknown type {}", o.ty)))?;
                if !retype_allowed(old_ty, o.typmod, ty, c.typmod) {
                    if c.attnum == key {
                        return Err(Refusal(format!(
                            "cannot change the type of the shard key column \"{}\"",
                            c.name
                        )));
                    }
                    return Err(Refusal(format!(
                        "cannot change column \"{}\" from {} to {}: the values stored on the shards would change or no longer fit (conductor carries out only widening changes such as integer to bigint or varchar(n) to text)",
                        c.name, o.ty, c.ty
                    )));
                }
                if old_ty.sqlite_decltype() != ty.sqlite_decltype() {
                    rebuild = true;
                }
                if o.not_null != c.not_null {
                    rebuild = true;
                }
            }
        }
    }

    let mut steps = Vec::new();
    if rebuild {
        let renamed = |name: &str| -> String {
            renames
                .iter()
                .find(|(from, _)| from == name)
                .map(|(_, to)| to.clone())
                .unwrap_or_else(|| name.to_string())
        };
        let mut columns = Vec::new();
        let mut sources = Vec::new();
        for n in new {
            let c = &n.column;
            let ty = c.column_type().expect("checked above");
            columns.push((c.name.clone(), ty, c.not_null));
            sources.push(match find_old(c.attnum) {
                Some(o) => Source::Column(o.name.clone()),
                None => Source::Value(n.default.clone().unwrap_or(Value::Null)),
            });
        }
        let primary_key = primary_key
            .iter()
            .filter_map(|&a| find_new(a).map(|n| n.column.name.clone()))
            .collect();
        let indexes = indexes
            .iter()
            .map(|ix| ShardIndexDef {
                name: ix.name.clone(),
                columns: ix.columns.iter().map(|c| renamed(c)).collect(),
                unique: ix.unique,
            })
            .collect();
        steps.push(Step::Rebuild {
            columns,
            primary_key,
            indexes,
            sources,
        });
    } else {
        for d in &drops {
            steps.push(Step::Sql(
                format!("ALTER TABLE {TABLE} DROP COLUMN {}", quote_ident(d)),
                vec![],
            ));
        }
        // Through temporary names, so that swapping two names works.
        for (from, _) in &renames {
            steps.push(Step::Sql(
                format!(
                    "ALTER TABLE {TABLE} RENAME COLUMN {} TO {}",
                    quote_ident(from),
                    quote_ident(&format!("{from}__conductor_renaming"))
                ),
                vec![],
            ));
        }
        for (from, to) in &renames {
            steps.push(Step::Sql(
                format!(
                    "ALTER TABLE {TABLE} RENAME COLUMN {} TO {}",
                    quote_ident(&format!("{from}__conductor_renaming")),
                    quote_ident(to)
                ),
                vec![],
            ));
        }
        for (c, ty, default) in &adds {
            let decl = ty.sqlite_decltype();
            steps.push(Step::Sql(
                format!(
                    "ALTER TABLE {TABLE} ADD COLUMN {}{}{decl}",
                    quote_ident(&c.name),
                    if decl.is_empty() { "" } else { " " }
                ),
                vec![],
            ));
            if let Some(v) = default.as_ref().filter(|v| **v != Value::Null) {
                steps.push(Step::Sql(
                    format!("UPDATE {TABLE} SET {} = ?", quote_ident(&c.name)),
                    vec![v.clone()],
                ));
            }
        }
    }
    Ok(SchemaChange { renames, steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i16, name: &str, ty: &str, not_null: bool) -> ShardColumn {
        ShardColumn {
            attnum,
            name: name.into(),
            ty: ty.into(),
            typmod: -1,
            not_null,
        }
    }

    fn new(c: ShardColumn) -> NewColumn {
        NewColumn {
            column: c,
            default: None,
            default_not_constant: false,
        }
    }

    /// The statements after the schema refresh that always comes first.
    fn sql(change: &SchemaChange) -> Vec<String> {
        let stmts = change.for_table("t_0001");
        assert_eq!(stmts[0].sql.as_deref(), Some(REFRESH_SCHEMA_SQL));
        stmts.into_iter().skip(1).map(|s| s.sql.unwrap()).collect()
    }

    fn base() -> Vec<ShardColumn> {
        vec![col(1, "id", "int8", true), col(2, "v", "text", false)]
    }

    #[test]
    fn nothing_changed_is_empty() {
        let n: Vec<NewColumn> = base().into_iter().map(new).collect();
        assert!(plan_change(&base(), &n, 1, &[1], &[]).unwrap().is_empty());
    }

    #[test]
    fn add_drop_rename_in_place() {
        let mut n: Vec<NewColumn> = vec![new(col(1, "id", "int8", true))];
        n.push(NewColumn {
            column: col(3, "note", "text", false),
            default: Some(Value::Text("x".into())),
            default_not_constant: false,
        });
        let c = plan_change(&base(), &n, 1, &[1], &[]).unwrap();
        assert_eq!(
            sql(&c),
            vec![
                r#"ALTER TABLE "t_0001" DROP COLUMN "v""#,
                r#"ALTER TABLE "t_0001" ADD COLUMN "note" TEXT"#,
                r#"UPDATE "t_0001" SET "note" = ?"#,
            ]
        );
        assert_eq!(c.for_table("t_0001")[3].args, vec![Value::Text("x".into())]);
        let renamed = vec![
            new(col(1, "id", "int8", true)),
            new(col(2, "w", "text", false)),
        ];
        let c = plan_change(&base(), &renamed, 1, &[1], &[]).unwrap();
        assert_eq!(c.renames, vec![("v".to_string(), "w".to_string())]);
        assert_eq!(sql(&c).len(), 2);
    }

    #[test]
    fn not_null_changes_rebuild_with_indexes() {
        let n = vec![
            new(col(1, "id", "int8", true)),
            new(col(2, "v", "text", true)),
        ];
        let ix = ShardIndexDef {
            name: "by_v".into(),
            columns: vec!["v".into()],
            unique: false,
        };
        let c = plan_change(&base(), &n, 1, &[1], &[ix]).unwrap();
        let s = sql(&c);
        assert_eq!(
            s[0],
            r#"CREATE TABLE "t_0001__conductor_rebuild" ("id" INTEGER NOT NULL, "v" TEXT NOT NULL, PRIMARY KEY ("id"))"#
        );
        assert_eq!(
            s[1],
            r#"INSERT INTO "t_0001__conductor_rebuild" ("id", "v") SELECT "t_0001"."id", "t_0001"."v" FROM "t_0001""#
        );
        assert_eq!(s[2], r#"DROP TABLE "t_0001""#);
        assert_eq!(
            s[3],
            r#"ALTER TABLE "t_0001__conductor_rebuild" RENAME TO "t_0001""#
        );
        assert_eq!(s[4], r#"CREATE INDEX "t_0001_by_v" ON "t_0001" ("v")"#);
    }

    #[test]
    fn refusals() {
        // The shard key cannot go or change type.
        let no_key = vec![new(col(2, "v", "text", false))];
        assert!(plan_change(&base(), &no_key, 1, &[1], &[]).is_err());
        let retyped = vec![
            new(col(1, "id", "text", true)),
            new(col(2, "v", "text", false)),
        ];
        assert!(plan_change(&base(), &retyped, 1, &[1], &[])
            .unwrap_err()
            .0
            .contains("shard key"));
        // NOT NULL without a default, a volatile default, a narrowing type.
        let mut add = base().into_iter().map(new).collect::<Vec<_>>();
        add.push(new(col(3, "c", "int4", true)));
        assert!(plan_change(&base(), &add, 1, &[1], &[]).is_err());
        add.pop();
        add.push(NewColumn {
            column: col(3, "c", "timestamptz", false),
            default: None,
            default_not_constant: true,
        });
        assert!(plan_change(&base(), &add, 1, &[1], &[]).is_err());
        let narrowed = vec![
            new(col(1, "id", "int8", true)),
            new(col(2, "v", "int4", false)),
        ];
        assert!(plan_change(&base(), &narrowed, 1, &[1], &[]).is_err());
    }

    #[test]
    fn widening_types_are_carried_out() {
        assert!(retype_allowed(ColumnType::Int4, -1, ColumnType::Int8, -1));
        assert!(!retype_allowed(ColumnType::Int8, -1, ColumnType::Int4, -1));
        assert!(retype_allowed(
            ColumnType::Varchar,
            14,
            ColumnType::Varchar,
            24
        ));
        assert!(!retype_allowed(
            ColumnType::Varchar,
            24,
            ColumnType::Varchar,
            14
        ));
        assert!(retype_allowed(
            ColumnType::Varchar,
            14,
            ColumnType::Text,
            -1
        ));
        assert!(!retype_allowed(
            ColumnType::Text,
            -1,
            ColumnType::Varchar,
            14
        ));
        assert!(retype_allowed(
            ColumnType::Float4,
            -1,
            ColumnType::Float8,
            -1
        ));
        assert!(!retype_allowed(
            ColumnType::Timestamp,
            -1,
            ColumnType::Timestamptz,
            -1
        ));
    }
}
