//! The embedded, numbered schema migrations for both backends.
//!
//! Each version has a PostgreSQL and a SQLite script under `migrations/`.
//! Applied versions are recorded in `majordomo_schema_migrations`; a
//! migration runs once, inside a transaction. `schema.sql` at the repository
//! root is the PostgreSQL scripts concatenated (a test keeps them equal).

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        postgres: include_str!("../../migrations/postgres/0001_initial.sql"),
        sqlite: include_str!("../../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "reference_columns",
        postgres: include_str!("../../migrations/postgres/0002_reference_columns.sql"),
        sqlite: include_str!("../../migrations/sqlite/0002_reference_columns.sql"),
    },
    Migration {
        version: 3,
        name: "reference_costs",
        postgres: include_str!("../../migrations/postgres/0003_reference_costs.sql"),
        sqlite: include_str!("../../migrations/sqlite/0003_reference_costs.sql"),
    },
    Migration {
        version: 4,
        name: "billed_responses",
        postgres: include_str!("../../migrations/postgres/0004_billed_responses.sql"),
        sqlite: include_str!("../../migrations/sqlite/0004_billed_responses.sql"),
    },
];

pub const LEDGER_TABLE: &str = "majordomo_schema_migrations";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_sql_is_the_postgres_migrations_concatenated() {
        let all: String = MIGRATIONS
            .iter()
            .map(|m| m.postgres)
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(include_str!("../../schema.sql"), all);
    }

    #[test]
    fn versions_increase_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
        }
    }
}
